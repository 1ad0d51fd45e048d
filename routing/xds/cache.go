package xds

import (
	"context"
	"errors"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sluicemesh/sluice/routing/translate"
)

// caches routes each request to the cache of its client family and type:
//
//   - Envoy sidecars ask for listeners and clusters by wildcard and for routes and
//     endpoints by name. Listeners differ per node (the inbound listener), so they
//     come from a snapshot cache keyed by node ID; the rest is shared.
//   - grpc-go asks only for the resources it needs, by name. go-control-plane's
//     snapshot cache in ADS mode waits for a request naming every resource of the
//     snapshot and would never answer it, so proxyless clients are served from linear
//     caches, which answer any subset.
//
// Endpoints are the same for both families and shared.
type caches struct {
	envoyListeners cachev3.SnapshotCache
	envoy          map[string]*cachev3.LinearCache // routes, clusters
	grpc           map[string]*cachev3.LinearCache // listeners, routes, clusters
	endpoints      *cachev3.LinearCache
	// unknown is told of requests for types Sluice does not serve.
	unknown func(req string, node translate.Node)

	// Until the first resources are in, watches wait here: an empty answer would
	// tell a starting Envoy that the mesh has no clusters.
	mu      sync.Mutex
	ready   bool
	pending map[*heldWatch]bool
}

// heldWatch is a watch created before the caches were ready.
type heldWatch struct {
	start    func() (func(), error)
	cancel   func() // of the watch once started
	canceled bool
}

var _ cachev3.Cache = (*caches)(nil)

func newCaches(versionPrefix string, log *cacheLogger, unknown func(string, translate.Node)) *caches {
	linear := func(typ string) *cachev3.LinearCache {
		return cachev3.NewLinearCache(typ, cachev3.WithVersionPrefix(versionPrefix), cachev3.WithLogger(log))
	}
	return &caches{
		envoyListeners: cachev3.NewSnapshotCache(false, cachev3.IDHash{}, log),
		envoy:          map[string]*cachev3.LinearCache{resourcev3.RouteType: linear(resourcev3.RouteType), resourcev3.ClusterType: linear(resourcev3.ClusterType)},
		grpc: map[string]*cachev3.LinearCache{
			resourcev3.ListenerType: linear(resourcev3.ListenerType), resourcev3.RouteType: linear(resourcev3.RouteType),
			resourcev3.ClusterType: linear(resourcev3.ClusterType),
		},
		endpoints: linear(resourcev3.EndpointType),
		unknown:   unknown,
		pending:   map[*heldWatch]bool{},
	}
}

// hold starts a watch now if the caches are ready, else when they become ready.
func (c *caches) hold(start func() (func(), error)) (func(), error) {
	c.mu.Lock()
	if c.ready {
		c.mu.Unlock()
		return start()
	}
	h := &heldWatch{start: start}
	c.pending[h] = true
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.pending, h)
		h.canceled = true
		if h.cancel != nil {
			h.cancel()
		}
	}, nil
}

// markReady starts the held watches; it is called once the first resources are in.
func (c *caches) markReady() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ready {
		return nil
	}
	c.ready = true
	var errs []error
	for h := range c.pending {
		cancel, err := h.start()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		h.cancel = cancel
	}
	c.pending = nil
	return errors.Join(errs...)
}

// pick returns the cache for a client family and type, or nil.
func (c *caches) pick(g translate.Generator, typ string) cachev3.Cache {
	if typ == resourcev3.EndpointType {
		return c.endpoints
	}
	if g == translate.GeneratorGRPC {
		if lc, ok := c.grpc[typ]; ok {
			return lc
		}
		return nil
	}
	if typ == resourcev3.ListenerType {
		return c.envoyListeners
	}
	if lc, ok := c.envoy[typ]; ok {
		return lc
	}
	return nil
}

// CreateWatch implements cachev3.ConfigWatcher.
func (c *caches) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, out chan cachev3.Response) (func(), error) {
	node := translate.ParseNode(req.GetNode())
	target := c.pick(node.Generator, req.GetTypeUrl())
	if target == nil {
		c.unknown(req.GetTypeUrl(), node)
		// The watch stays open and never fires: the client learns nothing of a type
		// Sluice does not serve, and its other subscriptions carry on.
		return func() {}, nil
	}
	if node.Generator == translate.GeneratorGRPC {
		sub = namedOnly{sub}
	}
	return c.hold(func() (func(), error) { return target.CreateWatch(req, sub, out) })
}

// CreateDeltaWatch implements cachev3.ConfigWatcher.
func (c *caches) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, out chan cachev3.DeltaResponse) (func(), error) {
	node := translate.ParseNode(req.GetNode())
	target := c.pick(node.Generator, req.GetTypeUrl())
	if target == nil {
		c.unknown(req.GetTypeUrl(), node)
		return func() {}, nil
	}
	if node.Generator == translate.GeneratorGRPC {
		sub = namedOnly{sub}
	}
	return c.hold(func() (func(), error) { return target.CreateDeltaWatch(req, sub, out) })
}

// Fetch implements cachev3.ConfigFetcher; Sluice serves xDS over gRPC streams only.
func (c *caches) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, errors.New("REST xDS is not served; use ADS over gRPC")
}

// namedOnly keeps a proxyless client's empty request from being read as a legacy
// wildcard subscription: grpc-go only ever wants the resources it names.
type namedOnly struct{ cachev3.Subscription }

func (namedOnly) IsWildcard() bool { return false }

// syncCache makes a linear cache hold exactly want, touching only what changed, so that
// versions of unchanged resources stay the same and clients get only real changes.
// It returns whether anything changed.
func syncCache(lc *cachev3.LinearCache, have, want map[string]types.Resource) (bool, error) {
	changed := map[string]types.Resource{}
	var removed []string
	for name, r := range want {
		if old, ok := have[name]; !ok || !proto.Equal(old, r) {
			changed[name] = r
		}
	}
	for name := range have {
		if _, ok := want[name]; !ok {
			removed = append(removed, name)
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		return false, nil
	}
	return true, lc.UpdateResources(changed, removed)
}
