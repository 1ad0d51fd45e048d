// Package mixer assembles Sluice's core: config and its watcher, the workload registry,
// the dispatcher and the servers, with one lifecycle.
package mixer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing/fstest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/check"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/dispatch"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/mixer/registry"
	"github.com/sluicemesh/sluice/mixer/server"
)

// Options configure a Mixer. The zero value of each field has a sane default.
type Options struct {
	// ConfigDir is the --config directory; empty serves the embedded defaults.
	ConfigDir string
	// Layers replace the embedded defaults (the demo adds its workloads to them).
	Layers         []config.Layer
	GRPCAddr       string
	AdminAddr      string
	MaxRecvMsgSize int
	Shards         int
	QueueSize      int
	TrustDomain    string
	GRPCTLS        server.TLSFiles
	AdminTLS       server.TLSFiles
	DrainTimeout   time.Duration
	Adapters       *adapters.Registry
	Logger         *slog.Logger
	// Registry is the workload registry; nil makes a new one. Pass one to share it
	// with the routing core.
	Registry *registry.Registry
	// Validators add checks to every config load (the routing core's mesh checks).
	Validators []config.Validator
	// OnApply are told, in order, of every config that was applied. They cannot
	// refuse it: a component that can reject config does so with a Validator.
	OnApply []func(ctx context.Context, s *config.Snapshot)
	// Metrics is the registry of Sluice's own metrics; nil makes a new one. Pass one
	// to let other components register theirs on the same /metrics.
	Metrics *prometheus.Registry
	// AdminRoutes are mounted on the admin mux (the routing core's /api/xds/clients).
	AdminRoutes map[string]http.Handler
	// GRPCServices register further services on the gRPC port.
	GRPCServices []func(*grpc.Server)
	// Now is the clock of handlers and the check path; nil means time.Now. Tests
	// inject one.
	Now func() time.Time
	// CheckCacheSize bounds the check cache (entries); 0 means 10000.
	CheckCacheSize int
	// RateLimitHeaders adds the RateLimit-* headers to rate-limit answers.
	RateLimitHeaders bool
	// RedisAddr, when set, replaces the default quota backend (memquota) with a
	// redisquota handler at this address, so that replicas share their counts.
	RedisAddr string
	// RedisTimeout bounds each batch of Redis decisions of that handler; when Redis
	// is slower, requests are allowed (fail open) and counted. 0 means redisquota's
	// default, 50ms.
	RedisTimeout time.Duration
	// CheckAddr, when set, also serves ext_authz and the rate-limit service on this
	// address with a lean HTTP/2 transport (mixer/h2unary: less CPU per check and a
	// shorter tail than grpc-go); the gRPC port serves them as well.
	CheckAddr string
	// MaxConcurrentStreams bounds the calls and streams of one connection to the
	// gRPC port or the check listener; 0 means 1024.
	MaxConcurrentStreams int
	// MaxConnections bounds the connections the gRPC port and the check listener
	// each hold open at once (server.Options.MaxConnections); sluice serve gives
	// the xDS port the same bound.
	MaxConnections int
	// KeepaliveTime and KeepaliveTimeout are the gRPC port's pings of silent peers
	// (server.Options); 0 means 30s and 10s.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// MaxDetailedDescriptors bounds the descriptor names detailed_metric adds to
	// sluice_ratelimit_descriptors_total; 0 means 10000 (see check.Options).
	MaxDetailedDescriptors int
}

// redisLayer replaces the default quota handler with one backed by Redis at addr.
func redisLayer(addr string, timeout time.Duration) config.Layer {
	ns, name, _ := strings.Cut(check.DefaultQuotaHandler, "/")
	doc := fmt.Sprintf("apiVersion: %s\nkind: Handler\nmetadata: {name: %s, namespace: %s}\nspec:\n  adapter: redisquota\n  params:\n    redisServerUrl: %q\n",
		config.MixerAPIVersion, name, ns, addr)
	if timeout > 0 {
		doc += fmt.Sprintf("    timeout: %s\n", timeout)
	}
	return config.Layer{Name: "flag:--redis-addr", Default: true, FS: fstest.MapFS{"redis.yaml": {Data: []byte(doc)}}}
}

// Mixer is a running Sluice core.
type Mixer struct {
	log      *slog.Logger
	metrics  *prometheus.Registry
	registry *registry.Registry
	disp     *dispatch.Dispatcher
	watcher  *config.Watcher
	server   *server.Server
	onApply  []func(ctx context.Context, s *config.Snapshot)
	// redisAddr is --redis-addr, for warning when the config replaces its handler.
	redisAddr string
}

// ErrConfigRejected is wrapped by New's error when the config did not load or apply;
// its errors were then logged already, and config.Errors lists them.
var ErrConfigRejected = errors.New("config rejected")

// New loads and applies the config (a bad config fails here, with every error) and
// binds the listeners.
func New(ctx context.Context, opts Options) (*Mixer, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Adapters == nil {
		return nil, fmt.Errorf("no adapters registry")
	}
	if opts.RedisTimeout < 0 {
		return nil, fmt.Errorf("redis timeout %v is negative", opts.RedisTimeout)
	}
	if opts.GRPCAddr == "" {
		opts.GRPCAddr = ":9091"
	}
	if opts.AdminAddr == "" {
		opts.AdminAddr = ":9093"
	}
	m := &Mixer{log: opts.Logger, metrics: opts.Metrics, redisAddr: opts.RedisAddr}
	if m.metrics == nil {
		m.metrics = prometheus.NewRegistry()
	}
	m.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	compiler, err := expr.NewCompiler(attribute.NewVocabulary())
	if err != nil {
		return nil, err
	}
	m.registry = opts.Registry
	if m.registry == nil {
		m.registry = registry.New(opts.TrustDomain)
	}
	m.onApply = opts.OnApply
	m.disp, err = dispatch.New(dispatch.Options{
		Shards: opts.Shards, QueueSize: opts.QueueSize, Registry: m.registry,
		TrustDomain: m.registry.TrustDomain(), Logger: opts.Logger, Metrics: m.metrics,
		Compiler: compiler, Now: opts.Now,
	})
	if err != nil {
		return nil, err
	}
	layers := opts.Layers
	if opts.RedisAddr != "" {
		if layers == nil {
			layers = config.DefaultLayers()
		}
		layers = append(layers, redisLayer(opts.RedisAddr, opts.RedisTimeout))
	}
	loader := &config.Loader{Dir: opts.ConfigDir, Layers: layers, Adapters: opts.Adapters, Compiler: compiler, Validators: opts.Validators}
	m.watcher, err = config.NewWatcher(loader, m.apply, opts.Logger, m.metrics)
	if err != nil {
		return nil, err
	}
	if err := m.watcher.Reload(ctx); err != nil {
		_ = m.disp.Close(ctx)
		return nil, fmt.Errorf("%w: %w", ErrConfigRejected, err)
	}
	checks, err := check.New(check.Options{
		Dispatcher: m.disp, Registry: m.registry, Compiler: compiler, Logger: opts.Logger, Metrics: m.metrics,
		Now: opts.Now, CacheSize: opts.CheckCacheSize, RateLimitHeaders: opts.RateLimitHeaders,
		MaxDetailedDescriptors: opts.MaxDetailedDescriptors,
	})
	if err != nil {
		_ = m.disp.Close(ctx)
		return nil, err
	}
	var grpcTLS, adminTLS = opts.GRPCTLS, opts.AdminTLS
	sopts := server.Options{
		GRPCAddr: opts.GRPCAddr, AdminAddr: opts.AdminAddr, MaxRecvMsgSize: opts.MaxRecvMsgSize,
		DrainTimeout: opts.DrainTimeout, TrustDomain: m.registry.TrustDomain(), Dispatcher: m.disp,
		Gatherer: prometheus.Gatherers{m.metrics, m.disp}, Metrics: m.metrics, Logger: opts.Logger,
		Config: m.configView, Routes: opts.AdminRoutes,
		Register:  append([]func(*grpc.Server){checks.Register}, opts.GRPCServices...),
		CheckAddr: opts.CheckAddr, CheckMethods: checks.Methods(), MaxConcurrentStreams: opts.MaxConcurrentStreams,
		MaxConnections: opts.MaxConnections,
		KeepaliveTime:  opts.KeepaliveTime, KeepaliveTimeout: opts.KeepaliveTimeout,
	}
	if grpcTLS.Enabled() {
		if sopts.GRPCTLS, err = grpcTLS.TLSConfig(); err != nil {
			return nil, fmt.Errorf("gRPC TLS: %w", err)
		}
	}
	if adminTLS.Enabled() {
		if sopts.AdminTLS, err = adminTLS.TLSConfig(); err != nil {
			return nil, fmt.Errorf("admin TLS: %w", err)
		}
	}
	m.server, err = server.New(sopts)
	if err != nil {
		_ = m.disp.Close(ctx)
		return nil, err
	}
	return m, nil
}

// apply makes a loaded snapshot the running config everywhere.
func (m *Mixer) apply(ctx context.Context, s *config.Snapshot) error {
	if err := m.disp.Apply(ctx, s); err != nil {
		return err
	}
	m.registry.SetSource(registry.ConfigSource, registry.FromSnapshot(s))
	if m.redisAddr != "" {
		m.warnRedisReplaced(ctx, s)
	}
	for _, f := range m.onApply {
		f(ctx, s)
	}
	return nil
}

// warnRedisReplaced logs, at each config applied, when the config replaced or
// disabled the quota handler --redis-addr made. The config may (a layer above the
// flag's), but an operator who gave the flag expects counts shared through Redis,
// and would otherwise find them per replica with nothing said.
func (m *Mixer) warnRedisReplaced(ctx context.Context, s *config.Snapshot) {
	for _, o := range s.ByKind(config.KindHandler) {
		if o.Namespace+"/"+o.Name != check.DefaultQuotaHandler {
			continue
		}
		if o.Default {
			return // the flag's own
		}
		adapter := ""
		if h, ok := o.Spec.(*config.HandlerSpec); ok {
			adapter = h.Adapter
		}
		m.log.WarnContext(ctx, "the config replaces the quota handler --redis-addr made: rate limits and quotas sent to it do not use the flag's Redis",
			"handler", check.DefaultQuotaHandler, "adapter", adapter, "source", o.Pos.String())
		return
	}
	m.log.WarnContext(ctx, "the config disables the quota handler --redis-addr made", "handler", check.DefaultQuotaHandler)
}

// Registry returns the workload registry.
func (m *Mixer) Registry() *registry.Registry { return m.registry }

// configView is what /api/config shows.
func (m *Mixer) configView() any {
	type view struct {
		Version   uint64               `json:"version"`
		Hash      string               `json:"hash"`
		LastError []string             `json:"lastError,omitempty"`
		Objects   []*config.Object     `json:"objects"`
		Workloads []*registry.Workload `json:"workloads"`
	}
	s := m.watcher.Current()
	v := view{Version: s.Version, Hash: s.Hash, Objects: s.Objects, Workloads: m.registry.Snapshot().Workloads()}
	for _, e := range config.Errors(m.watcher.LastError()) {
		v.LastError = append(v.LastError, e.Error())
	}
	return v
}

// GRPCAddr returns the bound gRPC address.
func (m *Mixer) GRPCAddr() net.Addr { return m.server.GRPCAddr() }

// CheckAddr returns the lean check listener's address, nil when it is off.
func (m *Mixer) CheckAddr() net.Addr { return m.server.CheckAddr() }

// AdminAddr returns the bound admin address.
func (m *Mixer) AdminAddr() net.Addr { return m.server.AdminAddr() }

// Run serves until ctx ends, then drains (see server.Server.Run).
func (m *Mixer) Run(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.watcher.Run(wctx) }()
	m.server.SetReady(true)
	err := m.server.Run(ctx)
	cancel()
	if werr := <-done; werr != nil {
		m.log.Warn("config watcher", "err", werr)
	}
	return err
}
