// Package xds serves Envoy and proxyless gRPC clients over ADS (state of the world
// and delta) with go-control-plane, and tracks what each client was sent and accepted.
package xds

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/sluicemesh/sluice/mixer/connlimit"
	"github.com/sluicemesh/sluice/routing/translate"
)

// Options configure a Server.
type Options struct {
	// Addr is the listen address (default :15010).
	Addr    string
	Logger  *slog.Logger
	Metrics prometheus.Registerer
	// DrainTimeout bounds a graceful stop (default 5s).
	DrainTimeout time.Duration
	// MaxConnections bounds the connections open at once (default
	// connlimit.DefaultMax): one past it is closed as soon as accepted, counted
	// in sluice_connections_refused_total{listener="xds"}.
	MaxConnections int
}

// maxStreams bounds the streams of one connection: an Envoy opens one (ADS) or
// one per resource type, and grpc-go's default is unbounded.
const maxStreams = 1024

// Server is the xDS server. Resources reach clients through Update.
type Server struct {
	log     *slog.Logger
	lis     net.Listener
	grpc    *grpc.Server
	caches  *caches
	clients *clients
	metrics *metrics
	drain   time.Duration
	// stop ends go-control-plane's stream loops, which watch their own context.
	streamCtx context.Context
	stop      context.CancelFunc
	prefix    string

	mu          sync.Mutex
	res         *translate.Resources
	listenerGen uint64
	nodes       map[string]*envoyNode
}

// envoyNode is a connected Envoy node and the listener version it was given.
type envoyNode struct {
	node    translate.Node
	streams int
	version string
}

// New binds the listener.
func New(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = ":15010"
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 5 * time.Second
	}
	m, err := newMetrics(opts.Metrics)
	if err != nil {
		return nil, err
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = connlimit.DefaultMax
	}
	const keepaliveTimeout = 10 * time.Second
	lis, err := connlimit.Listen(opts.Addr, connlimit.Options{
		Max: opts.MaxConnections, Name: "xds", UserTimeout: keepaliveTimeout, Logger: opts.Logger,
	}, opts.Metrics)
	if err != nil {
		return nil, fmt.Errorf("listen for xDS on %s: %w", opts.Addr, err)
	}
	s := &Server{
		log: opts.Logger, lis: lis, metrics: m, drain: opts.DrainTimeout, nodes: map[string]*envoyNode{},
		// A prefix unique to this process makes clients that reconnect after a
		// restart get everything again instead of trusting an old version number.
		prefix: strconv.FormatInt(time.Now().UnixNano()%1e9, 36) + "-",
	}
	s.clients = newClients(opts.Logger, m)
	s.clients.onNode = s.nodeOpened
	s.clients.onClose = s.nodeClosed
	s.caches = newCaches(s.prefix, &cacheLogger{log: opts.Logger}, s.clients.unknownType)
	s.streamCtx, s.stop = context.WithCancel(context.Background())
	xs := serverv3.NewServer(s.streamCtx, s.caches, s.clients)
	s.grpc = grpc.NewServer(
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: keepaliveTimeout}),
		grpc.MaxConcurrentStreams(maxStreams),
		// Clients may ping idle streams (Envoy and grpc-go keep ADS open for hours).
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	discovery.RegisterAggregatedDiscoveryServiceServer(s.grpc, xs)
	listenerservice.RegisterListenerDiscoveryServiceServer(s.grpc, xs)
	routeservice.RegisterRouteDiscoveryServiceServer(s.grpc, xs)
	clusterservice.RegisterClusterDiscoveryServiceServer(s.grpc, xs)
	endpointservice.RegisterEndpointDiscoveryServiceServer(s.grpc, xs)
	return s, nil
}

// Addr returns the bound address.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Run serves until ctx ends, then closes every stream and stops.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.lis) }()
	select {
	case err := <-errc:
		s.stop()
		if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve xDS: %w", err)
		}
		return nil
	case <-ctx.Done():
	}
	s.stop()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(s.drain):
		s.grpc.Stop()
		<-done
	}
	return nil
}

// Update makes res what every client is served. Only resources that changed reach
// clients; their caches notify the affected watches at once.
func (s *Server) Update(res *translate.Resources) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.res
	if prev == nil {
		prev = &translate.Resources{}
	}
	// Make before break: what routes refer to goes first.
	steps := []struct {
		lc        *cachev3.LinearCache
		have, new map[string]types.Resource
		gen, typ  string
	}{
		{s.caches.endpoints, prev.Endpoints, res.Endpoints, "shared", "EDS"},
		{s.caches.envoy[resourcev3.ClusterType], prev.Envoy.Clusters, res.Envoy.Clusters, "envoy", "CDS"},
		{s.caches.grpc[resourcev3.ClusterType], prev.GRPC.Clusters, res.GRPC.Clusters, "grpc", "CDS"},
		{s.caches.envoy[resourcev3.RouteType], prev.Envoy.Routes, res.Envoy.Routes, "envoy", "RDS"},
		{s.caches.grpc[resourcev3.RouteType], prev.GRPC.Routes, res.GRPC.Routes, "grpc", "RDS"},
		{s.caches.grpc[resourcev3.ListenerType], prev.GRPC.Listeners, res.GRPC.Listeners, "grpc", "LDS"},
	}
	pushed := false
	for _, st := range steps {
		changed, err := syncCache(st.lc, st.have, st.new)
		if err != nil {
			return fmt.Errorf("update %s %s resources: %w", st.gen, st.typ, err)
		}
		pushed = pushed || changed
		s.metrics.resources.WithLabelValues(st.gen, st.typ).Set(float64(len(st.new)))
	}
	s.metrics.resources.WithLabelValues("envoy", "LDS").Set(float64(len(res.Envoy.Listeners)))
	if !sameResources(prev.Envoy.Listeners, res.Envoy.Listeners) {
		s.listenerGen++
	}
	s.res = res
	for _, n := range s.nodes {
		changed, err := s.setListeners(n)
		if err != nil {
			return err
		}
		pushed = pushed || changed
	}
	if pushed {
		s.metrics.pushes.Inc()
	}
	if err := s.caches.markReady(); err != nil {
		return fmt.Errorf("start waiting watches: %w", err)
	}
	return nil
}

func sameResources(a, b map[string]types.Resource) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !proto.Equal(v, w) {
			return false
		}
	}
	return true
}

// setListeners gives an Envoy node its listeners: the shared outbound ones and its
// own inbound one. s.mu is held.
func (s *Server) setListeners(n *envoyNode) (bool, error) {
	if s.res == nil {
		return false, nil // the node's watch waits for the first Update
	}
	lis, sig := s.res.SidecarListeners(n.node)
	h := fnv.New64a()
	h.Write([]byte(sig))
	version := s.prefix + strconv.FormatUint(s.listenerGen, 10) + "-" + strconv.FormatUint(h.Sum64(), 36)
	if version == n.version {
		return false, nil
	}
	list := make([]types.Resource, 0, len(lis))
	for _, l := range lis {
		list = append(list, l)
	}
	snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{resourcev3.ListenerType: list})
	if err != nil {
		return false, fmt.Errorf("listener snapshot of %s: %w", n.node.ID, err)
	}
	if err := s.caches.envoyListeners.SetSnapshot(context.Background(), n.node.ID, snap); err != nil {
		return false, fmt.Errorf("set listeners of %s: %w", n.node.ID, err)
	}
	n.version = version
	return true, nil
}

// nodeOpened prepares the listeners of an Envoy node before its first watch.
func (s *Server) nodeOpened(_ int64, node translate.Node) {
	if node.Generator != translate.GeneratorEnvoy {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[node.ID]
	if !ok {
		n = &envoyNode{node: node}
		s.nodes[node.ID] = n
	}
	n.streams++
	if _, err := s.setListeners(n); err != nil {
		s.log.Error("cannot prepare listeners", "node", node.ID, "err", err)
	}
}

// nodeClosed forgets an Envoy node when its last stream ends.
func (s *Server) nodeClosed(_ int64, node translate.Node) {
	if node.Generator != translate.GeneratorEnvoy {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[node.ID]
	if !ok {
		return
	}
	if n.streams--; n.streams > 0 {
		return
	}
	delete(s.nodes, node.ID)
	s.caches.envoyListeners.ClearSnapshot(node.ID)
}

// Clients returns the number of open streams.
func (s *Server) Clients() int { return s.clients.count() }
