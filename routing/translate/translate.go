// Package translate turns the routing model and the workload registry into Envoy xDS
// resources, for Envoy sidecars and for proxyless gRPC clients. It is a pure function.
package translate

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluicemesh/sluice/mixer/registry"
	"github.com/sluicemesh/sluice/routing/mesh"
)

// Options say how generated proxies reach Sluice.
type Options struct {
	// Advertise is the HOST:PORT at which proxies reach Sluice's gRPC port (access
	// logs, and ext_authz and rate limits unless CheckAdvertise is set).
	Advertise string
	// CheckAdvertise, when set, is the HOST:PORT of Sluice's lean check listener
	// (sluice serve --check-addr); ext_authz and rate-limit calls go there, through
	// the SluiceCheckCluster, for a shorter tail on the request path.
	CheckAdvertise string
	// RateLimitDomain is the domain of the rate-limit requests sidecars send.
	RateLimitDomain string
	// CheckFailOpen lets requests through ext_authz when Sluice cannot answer
	// (Envoy marks them x-envoy-auth-failure-mode-allowed); by default they are
	// refused with 503, as Mixer's policy checks were (policyCheckFailOpen false):
	// a request let through unchecked skips every policy, and carries whatever
	// headers the client wrote that an allowed answer would have removed.
	CheckFailOpen bool
}

// DefaultRateLimitDomain is the rate-limit domain generated sidecars use.
const DefaultRateLimitDomain = "sluice"

// Set is one client family's resources by type, each by name.
type Set struct {
	Listeners map[string]types.Resource
	Routes    map[string]types.Resource
	Clusters  map[string]types.Resource
}

func newSet() Set {
	return Set{Listeners: map[string]types.Resource{}, Routes: map[string]types.Resource{}, Clusters: map[string]types.Resource{}}
}

// Resources are the xDS resources of one config and registry version. They are
// immutable; InboundListener memoises what it builds.
type Resources struct {
	// Envoy holds what every sidecar shares: the outbound listeners, the route
	// configurations per port, all clusters. The inbound listener is per node.
	Envoy Set
	// GRPC holds the API listeners, route configurations and clusters of proxyless
	// gRPC clients, named after their dial targets (HOST:PORT).
	GRPC Set
	// Endpoints are shared by both families.
	Endpoints map[string]types.Resource

	opts    Options
	consts  constants
	inbound map[netip.Addr][]inboundPort

	mu       sync.Mutex
	inbounds map[string]types.Resource // memo by inbound-port signature
}

// inboundPort is a port a workload serves for some service.
type inboundPort struct {
	Port     uint32
	Protocol mesh.Protocol
	// Host is the first service host served on the port, for rate-limit descriptors.
	Host string
}

// Build computes every resource of a mesh and registry snapshot.
func Build(m *mesh.Mesh, reg *registry.Snapshot, opts Options) *Resources {
	if opts.RateLimitDomain == "" {
		opts.RateLimitDomain = DefaultRateLimitDomain
	}
	r := &Resources{
		Envoy: newSet(), GRPC: newSet(), Endpoints: map[string]types.Resource{},
		opts: opts, consts: newConstants(), inbound: map[netip.Addr][]inboundPort{}, inbounds: map[string]types.Resource{},
	}
	idx := newIndex(reg)
	byPort := map[uint32][]*mesh.Service{}
	for _, s := range m.Services {
		eps := idx.endpoints(s)
		for _, p := range s.Ports {
			byPort[p.Number] = append(byPort[p.Number], s)
			for _, subset := range append([]string{""}, subsetNames(s)...) {
				name := ClusterName(Outbound, p.Number, subset, s.Host)
				pol := s.PolicyFor(subset)
				r.Envoy.Clusters[name] = edsCluster(name, p, pol, false)
				r.GRPC.Clusters[name] = edsCluster(name, p, pol, true)
				r.Endpoints[name] = loadAssignment(name, selectSubset(s, subset, eps), p)
			}
			r.grpcService(m, s, p)
		}
		for _, e := range eps {
			for _, p := range s.Ports {
				r.inbound[e.addr] = append(r.inbound[e.addr], inboundPort{Port: e.port(p), Protocol: p.Protocol, Host: s.Host})
			}
		}
	}
	ports := make([]uint32, 0, len(byPort))
	for p := range byPort {
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	for _, p := range ports {
		rc := r.outboundRoutes(m, p, byPort[p])
		r.Envoy.Routes[rc.GetName()] = rc
		l := r.outboundListener(p)
		r.Envoy.Listeners[l.GetName()] = l
	}
	vo := r.virtualOutbound()
	r.Envoy.Listeners[vo.GetName()] = vo
	for _, c := range r.staticClusters() {
		r.Envoy.Clusters[c.GetName()] = c
	}
	for addr, ps := range r.inbound {
		r.inbound[addr] = dedupeInbound(ps)
		for _, p := range r.inbound[addr] {
			name := ClusterName(Inbound, p.Port, "", "")
			if _, ok := r.Envoy.Clusters[name]; !ok {
				r.Envoy.Clusters[name] = inboundCluster(name)
			}
		}
	}
	return r
}

func subsetNames(s *mesh.Service) []string {
	out := make([]string, len(s.Subsets))
	for i, ss := range s.Subsets {
		out[i] = ss.Name
	}
	return out
}

// dedupeInbound keeps one entry per port (the first service's protocol wins),
// sorted by port.
func dedupeInbound(ps []inboundPort) []inboundPort {
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].Port < ps[j].Port })
	out := ps[:0]
	for i, p := range ps {
		if i > 0 && p.Port == ps[i-1].Port {
			continue
		}
		out = append(out, p)
	}
	return out
}

// SidecarListeners returns the listeners of one Envoy sidecar: the shared outbound
// listeners and the node's own inbound listener. The version changes exactly when
// the set does, given the version of the shared part.
func (r *Resources) SidecarListeners(node Node) (map[string]types.Resource, string) {
	out := make(map[string]types.Resource, len(r.Envoy.Listeners)+1)
	for k, v := range r.Envoy.Listeners {
		out[k] = v
	}
	in, sig := r.InboundListener(node.IP)
	out[VirtualInboundName] = in
	return out, sig
}

// InboundListener returns the virtual inbound listener of the workload at ip, and a
// signature of its content.
func (r *Resources) InboundListener(ip netip.Addr) (types.Resource, string) {
	ports := r.inbound[ip.Unmap()]
	sig := "in"
	for _, p := range ports {
		sig += "|" + strconv.Itoa(int(p.Port)) + "/" + string(p.Protocol) + "/" + p.Host
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if l, ok := r.inbounds[sig]; ok {
		return l, sig
	}
	l := r.virtualInbound(ports)
	r.inbounds[sig] = l
	return l, sig
}

// advertise splits the Advertise address; it defaults to localhost:9091.
// endpointOf splits an advertised HOST:PORT, falling back to the contract's gRPC
// port where it names none.
func endpointOf(addr string) (string, uint32) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return "127.0.0.1", 9091
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return host, 9091
	}
	return host, uint32(n)
}

// toAny wraps a message deterministically, so that equal configs give equal bytes
// and resource versions do not change without a reason.
func toAny(m proto.Message) *anypb.Any {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		// Only messages built in this package reach here; they always marshal.
		panic(fmt.Sprintf("translate: marshal %T: %v", m, err))
	}
	return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(proto.MessageName(m)), Value: b}
}
