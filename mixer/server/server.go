// Package server runs Sluice's listeners: the gRPC server (access-log service with a
// raw-bytes codec, health, reflection) and the admin HTTP server, with a drain on stop.
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/sluicemesh/sluice/mixer/connlimit"
	"github.com/sluicemesh/sluice/mixer/dispatch"
	"github.com/sluicemesh/sluice/mixer/h2unary"
)

// Options configure a Server.
type Options struct {
	GRPCAddr  string
	AdminAddr string
	// MaxRecvMsgSize bounds one gRPC message; larger ones fail with RESOURCE_EXHAUSTED.
	MaxRecvMsgSize int
	// MaxConcurrentStreams bounds the calls and streams one connection holds at
	// once, on the gRPC port and the check listener; 0 means 1024. A client past
	// it has its new streams refused (REFUSED_STREAM): Envoy and grpc-go open
	// another connection or wait.
	MaxConcurrentStreams int
	// MaxConnections bounds the connections the gRPC port, and the check
	// listener, each hold open at once; 0 means connlimit.DefaultMax. A
	// connection past it is closed as soon as it is accepted, and counted.
	MaxConnections int
	// KeepaliveTime is how long a connection to the gRPC port may be silent before
	// the server pings it, and KeepaliveTimeout how long the ping may go
	// unanswered before the connection is closed; 0 means 30s and 10s.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// GRPCTLS and AdminTLS, when set, serve TLS on the listeners.
	GRPCTLS  *tls.Config
	AdminTLS *tls.Config
	// DrainTimeout bounds the graceful part of shutdown: waiting for streams to end
	// and shards to drain before they are cut.
	DrainTimeout time.Duration
	TrustDomain  string
	Dispatcher   *dispatch.Dispatcher
	// Gatherer serves /metrics: Sluice's own registry and the adapters' collectors.
	Gatherer prometheus.Gatherer
	// Metrics receives the server's own metrics.
	Metrics prometheus.Registerer
	Logger  *slog.Logger
	// Config serves /api/config; it returns the running config as JSON-encodable data.
	Config func() any
	// Register adds further gRPC services (check path, xDS) before serving.
	Register []func(*grpc.Server)
	// Routes adds further admin handlers (graph, xDS clients).
	Routes map[string]http.Handler
	// CheckAddr, when set, serves CheckMethods on a listener of its own with the
	// lean HTTP/2 transport (h2unary), with GRPCTLS and MaxRecvMsgSize.
	CheckAddr    string
	CheckMethods []h2unary.Method
}

// DefaultMaxConcurrentStreams is the default of Options.MaxConcurrentStreams.
const DefaultMaxConcurrentStreams = 1024

// MaxHeaderListSize bounds the header block (decoded) of one call on the gRPC port,
// as the check listener bounds it: gRPC calls carry their data in messages, and
// Envoy's headers for a call are a few hundred bytes.
const MaxHeaderListSize = 64 << 10

// Server is Sluice's network front.
type Server struct {
	opts   Options
	log    *slog.Logger
	grpc   *grpc.Server
	health *health.Server
	als    *alsServer
	admin  *http.Server
	check  *h2unary.Server
	ready  atomic.Bool

	grpcLis, adminLis, checkLis net.Listener
}

// New builds the servers and binds their listeners, so that the addresses are known
// (and a port conflict fails) before Run.
func New(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 10 * time.Second
	}
	if opts.MaxRecvMsgSize <= 0 {
		opts.MaxRecvMsgSize = 16 << 20
	}
	if opts.MaxConcurrentStreams <= 0 {
		opts.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	opts.MaxConcurrentStreams = min(opts.MaxConcurrentStreams, 1<<31-1) // HTTP/2's stream IDs
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = connlimit.DefaultMax
	}
	if opts.KeepaliveTime <= 0 {
		opts.KeepaliveTime = 30 * time.Second
	}
	if opts.KeepaliveTimeout <= 0 {
		opts.KeepaliveTimeout = 10 * time.Second
	}
	s := &Server{opts: opts, log: opts.Logger}
	s.als = &alsServer{
		d:           opts.Dispatcher,
		log:         opts.Logger,
		trustDomain: opts.TrustDomain,
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_als_streams_active", Help: "Open access-log streams.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_messages_rejected_total", Help: "Access-log messages rejected with a gRPC error, by reason; their entries are counted in sluice_entries_dropped_total where known.",
		}, []string{"reason"}),
	}
	if opts.Metrics != nil {
		for _, c := range []prometheus.Collector{s.als.streams, s.als.rejected} {
			if err := opts.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("register server metrics: %w", err)
			}
		}
	}
	pool := &bufferPool{}
	s.als.pool = pool
	s.als.helds.New = s.als.newHeld
	gopts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(newCodec()),
		experimental.BufferPool(pool),
		grpc.MaxRecvMsgSize(opts.MaxRecvMsgSize),
		// grpc-go's defaults are unbounded streams per connection and 16 MiB of
		// headers per stream: each stream holds a goroutine, and a unary call's
		// stream up to MaxRecvMsgSize of request, so that one connection could
		// hold any number of them. The bounds are the check listener's.
		grpc.MaxConcurrentStreams(uint32(opts.MaxConcurrentStreams)),
		grpc.MaxHeaderListSize(MaxHeaderListSize),
		// grpc-go pings a silent peer only after 2 h, so an Envoy whose node died
		// held its access-log streams that long; and it closes a client pinging
		// more often than every 5 min (ENHANCE_YOUR_CALM), which an Envoy with
		// connection_keepalive set does. As the xDS server does.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: opts.KeepaliveTime, Timeout: opts.KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Checks are short calls: long-lived workers, whose stacks have grown
		// already, serve them for ~5% less CPU than a new goroutine per call
		// (measured with sluice-loadtest check at 10k/s).
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
	}
	if opts.GRPCTLS != nil {
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(opts.GRPCTLS)))
	}
	s.grpc = grpc.NewServer(gopts...)
	desc := alsServiceDesc()
	s.grpc.RegisterService(&desc, s.als)
	s.health = health.NewServer()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	for _, r := range opts.Register {
		r(s.grpc)
	}
	reflection.Register(s.grpc)

	var err error
	s.grpcLis, err = connlimit.Listen(opts.GRPCAddr, connlimit.Options{
		Max: opts.MaxConnections, Name: "grpc", UserTimeout: opts.KeepaliveTimeout, Logger: opts.Logger,
	}, opts.Metrics)
	if err != nil {
		return nil, fmt.Errorf("listen gRPC on %s: %w", opts.GRPCAddr, err)
	}
	if s.adminLis, err = net.Listen("tcp", opts.AdminAddr); err != nil {
		s.grpcLis.Close()
		return nil, fmt.Errorf("listen admin on %s: %w", opts.AdminAddr, err)
	}
	if opts.AdminTLS != nil {
		s.adminLis = tls.NewListener(s.adminLis, opts.AdminTLS)
	}
	if opts.CheckAddr != "" {
		s.check, err = h2unary.New(h2unary.Options{
			Methods: opts.CheckMethods, MaxRecvMsgSize: opts.MaxRecvMsgSize, TLS: opts.GRPCTLS,
			Logger: opts.Logger, Metrics: opts.Metrics, MaxConcurrentStreams: uint32(opts.MaxConcurrentStreams),
			MaxConnections: opts.MaxConnections,
		})
		if err == nil {
			// h2unary bounds its connections itself, and holds a connection's
			// place until its calls have returned, not only until it closes.
			if s.checkLis, err = net.Listen("tcp", opts.CheckAddr); err != nil {
				err = fmt.Errorf("listen checks on %s: %w", opts.CheckAddr, err)
			}
		}
		if err != nil {
			s.grpcLis.Close()
			s.adminLis.Close()
			return nil, err
		}
	}
	s.admin = &http.Server{
		Handler:           s.adminMux(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// GRPCAddr returns the bound gRPC address.
func (s *Server) GRPCAddr() net.Addr { return s.grpcLis.Addr() }

// CheckAddr returns the bound address of the lean check listener, nil when off.
func (s *Server) CheckAddr() net.Addr {
	if s.checkLis == nil {
		return nil
	}
	return s.checkLis.Addr()
}

// AdminAddr returns the bound admin address.
func (s *Server) AdminAddr() net.Addr { return s.adminLis.Addr() }

// SetReady marks the server ready (after the first config is applied).
func (s *Server) SetReady(ready bool) {
	s.ready.Store(ready)
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ready {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
}

func (s *Server) adminMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.opts.Gatherer, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/api/config", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		var v any
		if s.opts.Config != nil {
			v = s.opts.Config()
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			s.log.Warn("encode /api/config", "err", err)
		}
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	for p, h := range s.opts.Routes {
		mux.Handle(p, h)
	}
	return mux
}

// Run serves until ctx ends, then shuts down: not ready; stop accepting streams and
// give them DrainTimeout to end; cut the rest; drain every shard; close (flush) every
// handler; stop the admin server last so that the drain can be watched.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 3)
	if s.check != nil {
		go func() {
			if err := s.check.Serve(s.checkLis); err != nil && !errors.Is(err, h2unary.ErrServerClosed) {
				errc <- fmt.Errorf("check listener: %w", err)
			}
		}()
	}
	go func() {
		if err := s.grpc.Serve(s.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("gRPC server: %w", err)
		}
	}()
	go func() {
		if err := s.admin.Serve(s.adminLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admin server: %w", err)
		}
	}()
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	s.log.Info("shutting down", "drain_timeout", s.opts.DrainTimeout)
	s.SetReady(false)
	s.health.Shutdown()

	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	if s.check != nil {
		// Checks are short: half the drain lets the calls in flight finish.
		checkCtx, cancel := context.WithTimeout(context.Background(), s.opts.DrainTimeout/2)
		_ = s.check.Shutdown(checkCtx)
		cancel()
	}
	select {
	case <-stopped:
	case <-time.After(s.opts.DrainTimeout / 2):
		// Access-log streams never end by themselves: cut them. Everything they
		// delivered has been handed to the shards already.
		s.grpc.Stop()
		<-stopped
	}
	s.als.active.Wait()

	drainCtx, cancel := context.WithTimeout(context.Background(), s.opts.DrainTimeout)
	defer cancel()
	if err := s.opts.Dispatcher.Close(drainCtx); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("drain: %w", err))
	}
	if err := s.admin.Shutdown(drainCtx); err != nil {
		runErr = errors.Join(runErr, fmt.Errorf("admin shutdown: %w", err))
	}
	s.log.Info("stopped")
	return runErr
}
