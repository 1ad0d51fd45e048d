package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/sluicemesh/sluice/mixer"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/registry"
	"github.com/sluicemesh/sluice/mixer/registry/kube"
	"github.com/sluicemesh/sluice/routing"
)

// routingFlags are sluice serve's flags for the xDS routing core.
type routingFlags struct {
	xdsAddr        string
	advertise      string
	checkAdvertise string
	checkFailOpen  bool
	kubeconfig     string
}

func (r *routingFlags) register(f *pflag.FlagSet) {
	f.StringVar(&r.xdsAddr, "xds-addr", ":15010", "xDS listen address (ADS, state of the world and delta, for Envoy and proxyless gRPC)")
	f.StringVar(&r.advertise, "advertise-addr", "", "HOST:PORT at which proxies reach Sluice's gRPC port (access logs, ext_authz, rate limits); default: the --grpc-addr host if specific, else $POD_IP, else this machine's first non-loopback address, with the bound gRPC port")
	f.StringVar(&r.checkAdvertise, "check-advertise-addr", "", "HOST:PORT at which proxies reach the --check-addr listener; generated ext_authz and rate-limit filters use it when --check-addr is set (default: the --advertise-addr host, or the address chosen for the gRPC port, with the bound check port)")
	f.BoolVar(&r.checkFailOpen, "check-fail-open", false, "let requests through the generated ext_authz filters when Sluice cannot answer (marked x-envoy-auth-failure-mode-allowed); by default they get 503")
	f.StringVar(&r.kubeconfig, "kubeconfig", "", "kubeconfig of a cluster whose Pods and EndpointSlices feed the workload registry (default: the in-cluster config when running in a cluster)")
}

// routingCore is the routing server and, in a cluster, the Kubernetes registry source.
type routingCore struct {
	server *routing.Server
	kube   *kube.Source
	flags  routingFlags
	log    *slog.Logger
}

// newRouting builds the routing core and hooks it into the mixer's options: a shared
// workload registry and metrics registry, its config validator, its config listener
// and its admin page.
func newRouting(opts *mixer.Options, rf routingFlags, log *slog.Logger) (*routingCore, error) {
	if rf.checkAdvertise != "" && opts.CheckAddr == "" {
		return nil, errors.New("--check-advertise-addr needs --check-addr: there is no check listener to advertise")
	}
	if opts.GRPCTLS.Cert != "" {
		// The generated clusters to Sluice carry no TLS settings (proxies would
		// need a CA, and client certificates, that the routing core does not know).
		log.Warn("the gRPC port serves TLS, but the sidecars the routing core configures reach Sluice in plaintext: their access logs and checks will fail (and checks refuse requests unless --check-fail-open); configure such proxies by hand, or serve Sluice without TLS inside the mesh")
	}
	if opts.Registry == nil {
		opts.Registry = registry.New(opts.TrustDomain)
	}
	if opts.Metrics == nil {
		opts.Metrics = prometheus.NewRegistry()
	}
	srv, err := routing.New(routing.Options{
		Addr: rf.xdsAddr, Advertise: rf.advertise, CheckAdvertise: rf.checkAdvertise, CheckFailOpen: rf.checkFailOpen,
		Registry: opts.Registry, Metrics: opts.Metrics, Logger: log, MaxConnections: opts.MaxConnections,
	})
	if err != nil {
		return nil, err
	}
	rc := &routingCore{server: srv, flags: rf, log: log}
	opts.Validators = append(opts.Validators, srv.Validator())
	opts.OnApply = append(opts.OnApply, srv.OnApply)
	if opts.AdminRoutes == nil {
		opts.AdminRoutes = map[string]http.Handler{}
	}
	for path, h := range srv.AdminRoutes() {
		opts.AdminRoutes[path] = h
	}
	cfg, err := kube.Config(rf.kubeconfig)
	switch {
	case errors.Is(err, kube.ErrNoCluster):
		log.Debug("no Kubernetes cluster: workloads come from WorkloadEntry objects only")
	case err != nil:
		return nil, err
	default:
		rc.kube, err = kube.NewForConfig(cfg, opts.Registry, kube.Options{Logger: log})
		if err != nil {
			return nil, err
		}
	}
	return rc, nil
}

// run serves xDS (and watches the cluster) alongside the mixer until ctx ends; the
// first to fail stops the others.
func (rc *routingCore) run(ctx context.Context, m *mixer.Mixer) error {
	grpcAdv, checkAdv := rc.flags.advertise, rc.flags.checkAdvertise
	if grpcAdv == "" {
		grpcAdv = advertiseAddr(m.GRPCAddr())
	}
	if checkAdv == "" && m.CheckAddr() != nil {
		checkAdv = checkAdvertiseAddr(rc.flags.advertise, m.CheckAddr())
	}
	if grpcAdv != rc.flags.advertise || checkAdv != rc.flags.checkAdvertise {
		rc.server.SetAdvertise(grpcAdv, checkAdv)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() {
		err := rc.server.Run(ctx)
		if err != nil {
			rc.log.Error("xDS server stopped", "err", err)
			cancel()
		}
		errc <- err
	}()
	running := 1
	if rc.kube != nil {
		running++
		go func() {
			err := rc.kube.Run(ctx)
			if err != nil {
				rc.log.Error("Kubernetes registry source stopped", "err", err)
				cancel()
			}
			errc <- err
		}()
	}
	err := m.Run(ctx)
	cancel()
	for range running {
		err = errors.Join(err, <-errc)
	}
	return err
}

// advertiseAddr picks the address proxies use to reach the gRPC port when
// --advertise-addr is not given.
func advertiseAddr(grpc net.Addr) string {
	host, port, err := net.SplitHostPort(grpc.String())
	if err != nil {
		return grpc.String()
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return grpc.String()
	}
	if ip := os.Getenv("POD_IP"); ip != "" {
		return net.JoinHostPort(ip, port)
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
				return net.JoinHostPort(n.IP.String(), port)
			}
		}
	}
	if h, err := os.Hostname(); err == nil {
		return net.JoinHostPort(h, port)
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// checkAdvertiseAddr picks the address proxies use to reach the lean check
// listener when --check-advertise-addr is not given: the host given for the gRPC
// port, which names Sluice's Service or host, with the bound check port; else the
// address advertiseAddr picks for the check listener itself.
func checkAdvertiseAddr(grpcAdvertise string, check net.Addr) string {
	if host, _, err := net.SplitHostPort(grpcAdvertise); err == nil && host != "" {
		if _, port, err := net.SplitHostPort(check.String()); err == nil {
			return net.JoinHostPort(host, port)
		}
	}
	return advertiseAddr(check)
}

// xdsBanner is the routing core's line of the serve banner.
func (rc *routingCore) xdsBanner(admin string) string {
	return fmt.Sprintf("  xDS (ADS):          %s (clients: http://%s%s)\n", hostPort(rc.server.Addr()), admin, routing.ClientsPath)
}

// validators are the routing core's config checks, for sluice validate.
func routingValidators() []config.Validator {
	return []config.Validator{routing.MeshValidator()}
}
