package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/sluicemesh/sluice/adapters/all"
	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/connlimit"
	"github.com/sluicemesh/sluice/mixer/gcfloor"
	"github.com/sluicemesh/sluice/mixer/sysmon"
)

// maxHeapFloorMiB bounds --gc-heap-floor-mib: beyond it the floor in bytes, times
// GOGC's 100, would overflow.
const maxHeapFloorMiB = 1 << 20

func newServe() *cobra.Command {
	var (
		opts                mixer.Options
		logLevel, logFormat string
		demo                bool
		demoRate            float64
		heapFloorMiB        uint64
		rf                  routingFlags
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Sluice server",
		Long: `Run the Sluice server: the gRPC access-log service on --grpc-addr and the admin
endpoints (/metrics, /healthz, /readyz, /api/config, /api/xds/clients, /debug/pprof/) on
--admin-addr, and the xDS routing core (ADS for Envoy and proxyless gRPC) on --xds-addr.
Without --config it serves the embedded default config (the Istio standard metrics);
with it, the directory's objects are layered over the defaults and reloaded on change.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if heapFloorMiB > maxHeapFloorMiB {
				return fmt.Errorf("--gc-heap-floor-mib %d: at most %d (1 TiB)", heapFloorMiB, maxHeapFloorMiB)
			}
			if err := checkServeFlags(&opts); err != nil {
				return err
			}
			log, err := newLogger(cmd.ErrOrStderr(), logLevel, logFormat)
			if err != nil {
				return err
			}
			opts.Logger = log
			opts.Adapters = all.Registry()
			// go-redis logs dial failures through its own global logger; send them to ours.
			redis.SetLogger(redisLog{log.With("component", "redis")})
			if demo {
				opts.Layers = append(config.DefaultLayers(), loadtest.DemoLayer())
			}
			ctx := cmd.Context()
			go gcfloor.Tuner{Floor: heapFloorMiB << 20}.Run(ctx)
			if sysmon.Awake() {
				log.Debug("the Go runtime's sysmon is kept out of its deep sleep", "GODEBUG", os.Getenv("GODEBUG"))
			} else {
				log.Info("the Go runtime's sysmon may sleep deeply: each check after an idle spell wakes it (GODEBUG sets schedtrace, or re-executing failed)")
			}
			rc, err := newRouting(&opts, rf, log)
			if err != nil {
				log.Error("cannot start", "error", err.Error())
				return exitError(1)
			}
			m, err := mixer.New(ctx, opts)
			if errors.Is(err, mixer.ErrConfigRejected) {
				// Its errors were logged as the config was rejected (the first 50);
				// printing them again would double every line.
				log.Error("cannot start: the config was rejected", "errors", len(config.Errors(err)))
				return exitError(1)
			}
			if err != nil {
				for _, e := range config.Errors(err) {
					log.Error("cannot start", "error", e.Error())
				}
				return exitError(1)
			}
			admin := hostPort(m.AdminAddr())
			fmt.Fprintf(cmd.OutOrStdout(), "%s is serving\n  access logs (gRPC): %s\n  metrics:            http://%s/metrics\n  config:             http://%s/api/config\n",
				versionString(), hostPort(m.GRPCAddr()), admin, admin)
			if a := m.CheckAddr(); a != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "  checks (lean h2):   %s (ext_authz, rate limits; also on the gRPC port)\n", hostPort(a))
			}
			fmt.Fprint(cmd.OutOrStdout(), rc.xdsBanner(admin))
			if demo {
				go func() {
					if err := loadtest.RunDemo(ctx, hostPort(m.GRPCAddr()), demoRate, log); err != nil {
						log.Error("demo traffic stopped", "err", err)
					}
				}()
				fmt.Fprintf(cmd.OutOrStdout(), "  demo traffic:       a bookinfo mesh, %.0f requests/s; try\n    curl -s http://%s/metrics | grep istio_requests_total\n", demoRate, admin)
			}
			return rc.run(ctx, m)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.ConfigDir, "config", "", "config directory layered over the embedded defaults (reloaded on change)")
	f.StringVar(&opts.GRPCAddr, "grpc-addr", ":9091", "gRPC listen address (access-log service, ext_authz Check, rate-limit service, health, reflection)")
	f.StringVar(&opts.AdminAddr, "admin-addr", ":9093", "admin HTTP listen address")
	f.StringVar(&opts.CheckAddr, "check-addr", "", "also serve ext_authz and rate limits on this address with a lean HTTP/2 transport: less CPU per check and a shorter tail than grpc-go (default: off; the gRPC port always serves them)")
	f.IntVar(&opts.MaxRecvMsgSize, "max-recv-msg-size", 16<<20, "largest gRPC message accepted, in bytes")
	f.IntVar(&opts.MaxConcurrentStreams, "max-concurrent-streams", 1024, "calls and streams one connection to the gRPC port or --check-addr may hold at once; new ones past it are refused (the client opens another connection or waits)")
	f.IntVar(&opts.MaxConnections, "max-connections", connlimit.DefaultMax, "connections the gRPC port, --check-addr and the xDS port each hold open at once; one past it is closed as soon as accepted and counted (an idle connection holds about 15 KiB on the gRPC port, 38 KiB on --check-addr); 0 or less: the default")
	f.IntVar(&opts.Shards, "shards", 0, "report-path shards (0: one per CPU)")
	f.IntVar(&opts.QueueSize, "queue-size", 1024, "batches each shard queue holds before entries are dropped")
	f.StringVar(&opts.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of principals derived from service accounts")
	f.DurationVar(&opts.DrainTimeout, "drain-timeout", 10*time.Second, "how long shutdown waits for streams and shards")
	f.StringVar(&opts.GRPCTLS.Cert, "tls-cert-file", "", "certificate for TLS on the gRPC port")
	f.StringVar(&opts.GRPCTLS.Key, "tls-key-file", "", "key for TLS on the gRPC port")
	f.StringVar(&opts.GRPCTLS.ClientCA, "tls-client-ca-file", "", "CA bundle; when set, gRPC clients must present a certificate it signed")
	f.StringVar(&opts.AdminTLS.Cert, "admin-tls-cert-file", "", "certificate for TLS on the admin port")
	f.StringVar(&opts.AdminTLS.Key, "admin-tls-key-file", "", "key for TLS on the admin port")
	f.StringVar(&opts.AdminTLS.ClientCA, "admin-tls-client-ca-file", "", "CA bundle; when set, admin clients must present a certificate it signed")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&opts.RedisAddr, "redis-addr", "", "HOST:PORT of Redis, or a redis://, rediss:// or unix:// URL: the default quota backend of rate limits and quotas, shared by replicas (default: in memory)")
	f.DurationVar(&opts.RedisTimeout, "redis-timeout", 50*time.Millisecond, "with --redis-addr: how long a decision waits for Redis before it is allowed by the fail-open policy (and counted)")
	f.BoolVar(&opts.RateLimitHeaders, "ratelimit-headers", false, "add RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset to rate-limit answers")
	f.IntVar(&opts.MaxDetailedDescriptors, "ratelimit-detailed-metric-max", 10000, "descriptor names (made of request values) that detailed_metric may add to sluice_ratelimit_descriptors_total; later ones are counted as descriptor=\"overflow\"")
	f.IntVar(&opts.CheckCacheSize, "check-cache-size", 10000, "entries of the policy check cache at most (kept as 16 LRU shards, each a 16th of it); 0 turns the cache off")
	f.Uint64Var(&heapFloorMiB, "gc-heap-floor-mib", 64, "let the heap grow to this many MiB between garbage collections while the live heap is small (GOGC is raised, never lowered; GOMEMLIMIT still applies): fewer collections, a shorter check tail; 0 leaves GOGC alone")
	f.BoolVar(&demo, "demo", false, "also run a simulated bookinfo mesh that streams access logs to this server")
	f.Float64Var(&demoRate, "demo-rate", 50, "requests per second of the demo traffic")
	rf.register(f)
	return cmd
}

// checkServeFlags refuses, naming the flag, the values that mean nothing: without
// it a zero or negative size would quietly become a default, which the operator who
// typed it did not ask for. It maps --check-cache-size 0 to the cache off.
func checkServeFlags(opts *mixer.Options) error {
	for _, f := range []struct {
		name string
		v    int
		min  int
	}{
		{"--max-recv-msg-size", opts.MaxRecvMsgSize, 1},
		{"--max-concurrent-streams", opts.MaxConcurrentStreams, 1},
		{"--queue-size", opts.QueueSize, 1},
		{"--shards", opts.Shards, 0},
		{"--check-cache-size", opts.CheckCacheSize, 0},
		{"--ratelimit-detailed-metric-max", opts.MaxDetailedDescriptors, 1},
	} {
		if f.v < f.min {
			return fmt.Errorf("%s %d: must be at least %d", f.name, f.v, f.min)
		}
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{{"--redis-timeout", opts.RedisTimeout}, {"--drain-timeout", opts.DrainTimeout}} {
		if f.v <= 0 {
			return fmt.Errorf("%s %v: must be positive", f.name, f.v)
		}
	}
	if opts.CheckCacheSize == 0 {
		opts.CheckCacheSize = -1 // check.Options: off
	}
	return nil
}

// redisLog adapts slog to go-redis's logger.
type redisLog struct{ l *slog.Logger }

func (r redisLog) Printf(ctx context.Context, format string, v ...any) {
	r.l.WarnContext(ctx, fmt.Sprintf(format, v...))
}

// hostPort turns a listener address into one a local client can dial.
func hostPort(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}
