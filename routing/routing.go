// Package routing is Sluice's xDS routing core: it turns the config's Istio networking
// objects and the workload registry into Envoy and proxyless gRPC resources, and serves them.
package routing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/registry"
	"github.com/sluicemesh/sluice/routing/mesh"
	"github.com/sluicemesh/sluice/routing/translate"
	"github.com/sluicemesh/sluice/routing/xds"
)

// ClientsPath is where the admin server shows the xDS clients.
const ClientsPath = "/api/xds/clients"

// Options configure the routing core.
type Options struct {
	// Addr is the xDS listen address (default :15010).
	Addr string
	// Advertise is the HOST:PORT at which proxies reach Sluice's gRPC port.
	Advertise string
	// CheckAdvertise, when set, is the HOST:PORT at which proxies reach Sluice's
	// lean check listener; generated ext_authz and rate-limit filters use it.
	CheckAdvertise string
	// CheckFailOpen lets requests through ext_authz when Sluice cannot answer
	// (translate.Options.CheckFailOpen).
	CheckFailOpen bool
	// Registry is the workload registry shared with the mixer; endpoints come from it.
	Registry *registry.Registry
	Metrics  prometheus.Registerer
	Logger   *slog.Logger
	// DomainSuffix qualifies short host names (default cluster.local).
	DomainSuffix string
	// Debounce groups config and registry changes that come together into one push
	// (default 100ms).
	Debounce time.Duration
	// MaxConnections bounds the xDS port's open connections (xds.Options).
	MaxConnections int
}

// Server is the routing core.
type Server struct {
	opts    Options
	log     *slog.Logger
	xds     *xds.Server
	cfg     atomic.Pointer[config.Snapshot]
	kick    chan struct{}
	builds  *prometheus.CounterVec
	seconds prometheus.Histogram
	version prometheus.Gauge

	mu        sync.Mutex // serialises rebuilds
	lastCfg   *config.Snapshot
	lastMesh  *mesh.Mesh
	advertise translate.Options // the addresses proxies reach Sluice at
}

// New binds the xDS listener.
func New(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registry == nil {
		return nil, errors.New("routing needs the workload registry")
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	s := &Server{
		opts: opts, log: opts.Logger, kick: make(chan struct{}, 1),
		builds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_xds_builds_total", Help: "Computations of the xDS resources from config and registry, by result (success, failure).",
		}, []string{"result"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sluice_xds_build_duration_seconds", Help: "Time to compute the xDS resources and hand them to the caches.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		version: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_xds_config_version", Help: "Version of the config whose routing is being served.",
		}),
	}
	s.builds.WithLabelValues("success")
	s.builds.WithLabelValues("failure")
	if opts.Metrics != nil {
		for _, c := range []prometheus.Collector{s.builds, s.seconds, s.version} {
			if err := opts.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("register routing metrics: %w", err)
			}
		}
	}
	x, err := xds.New(xds.Options{Addr: opts.Addr, Logger: opts.Logger, Metrics: opts.Metrics, MaxConnections: opts.MaxConnections})
	if err != nil {
		return nil, err
	}
	s.xds = x
	s.advertise = translate.Options{Advertise: opts.Advertise, CheckAdvertise: opts.CheckAdvertise, CheckFailOpen: opts.CheckFailOpen}
	return s, nil
}

// SetAdvertise sets the HOST:PORTs at which proxies reach Sluice's gRPC port and
// its lean check listener (empty: checks go to the gRPC port), when they are known
// only once the ports are bound. Clients get them with the next push.
func (s *Server) SetAdvertise(grpc, check string) {
	s.mu.Lock()
	s.advertise.Advertise, s.advertise.CheckAdvertise = grpc, check
	s.lastCfg = nil // rebuild everything
	s.mu.Unlock()
	s.signal()
}

// Addr returns the bound xDS address.
func (s *Server) Addr() net.Addr { return s.xds.Addr() }

// Validator rejects mesh objects the routing core cannot honour; give it to the
// config loader.
func (s *Server) Validator() config.Validator {
	return mesh.Validator{Options: mesh.Options{DomainSuffix: s.opts.DomainSuffix}}
}

// OnApply is told of every applied config.
func (s *Server) OnApply(_ context.Context, snap *config.Snapshot) {
	s.cfg.Store(snap)
	s.signal()
}

// AdminRoutes are the routing core's pages on the admin server.
func (s *Server) AdminRoutes() map[string]http.Handler {
	return map[string]http.Handler{ClientsPath: s.xds.Handler()}
}

func (s *Server) signal() {
	select {
	case s.kick <- struct{}{}:
	default: // a rebuild is already due
	}
}

// Run serves xDS and pushes every config or registry change until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- s.xds.Run(ctx) }()
	s.Rebuild()
	for {
		changed := s.opts.Registry.Snapshot().Changed()
		select {
		case <-ctx.Done():
			return <-errc
		case err := <-errc:
			return err
		case <-s.kick:
		case <-changed:
		}
		// Let the rest of a burst arrive (the mixer changes the registry and then
		// the config; a cluster's endpoints change one by one).
		select {
		case <-ctx.Done():
			return <-errc
		case <-time.After(s.opts.Debounce):
		}
		select {
		case <-s.kick:
		default:
		}
		s.Rebuild()
	}
}

// Rebuild computes the resources of the current config and registry and pushes
// what changed. A failure is logged and counted; clients keep what they have.
func (s *Server) Rebuild() {
	s.mu.Lock()
	defer s.mu.Unlock()
	cfg := s.cfg.Load()
	if cfg == nil {
		return // nothing applied yet: clients wait
	}
	start := time.Now()
	if cfg != s.lastCfg {
		m, err := mesh.Build(cfg, mesh.Options{DomainSuffix: s.opts.DomainSuffix})
		if err != nil {
			// The validator accepted this config, so this is a bug; keep serving.
			s.builds.WithLabelValues("failure").Inc()
			s.log.Error("routing: cannot build the mesh of an applied config; clients keep the previous one", "version", cfg.Version, "err", err)
			return
		}
		s.lastCfg, s.lastMesh = cfg, m
	}
	res := translate.Build(s.lastMesh, s.opts.Registry.Snapshot(), s.advertise)
	if err := s.xds.Update(res); err != nil {
		s.builds.WithLabelValues("failure").Inc()
		s.log.Error("routing: cannot update the xDS caches", "err", err)
		return
	}
	s.builds.WithLabelValues("success").Inc()
	s.seconds.Observe(time.Since(start).Seconds())
	s.version.Set(float64(cfg.Version))
}

// Clients returns the number of open xDS streams.
func (s *Server) Clients() int { return s.xds.Clients() }

// MeshValidator is the routing core's config check with default options, for
// commands that validate config without serving it.
func MeshValidator() config.Validator { return mesh.Validator{} }
