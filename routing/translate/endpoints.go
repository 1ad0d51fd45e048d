package translate

import (
	"net/netip"
	"sort"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluicemesh/sluice/mixer/registry"
	"github.com/sluicemesh/sluice/routing/mesh"
)

// instance is one endpoint of a service: a registry workload or an inline endpoint.
type instance struct {
	addr     netip.Addr
	labels   map[string]string
	ports    map[string]uint32
	weight   uint32
	locality string
}

// port returns the port the instance serves a service port on: its own named port,
// else the service's target port.
func (e instance) port(p mesh.Port) uint32 {
	if p.Name != "" {
		if n, ok := e.ports[p.Name]; ok && n != 0 {
			return n
		}
	}
	return p.TargetPort
}

// index finds registry workloads by namespace and label quickly: a selector is
// looked up by one of its labels, then checked in full.
type index struct {
	byLabel map[string][]*registry.Workload // "namespace/key=value"
}

func newIndex(reg *registry.Snapshot) *index {
	idx := &index{byLabel: map[string][]*registry.Workload{}}
	if reg == nil {
		return idx
	}
	for _, w := range reg.Workloads() {
		for k, v := range w.Labels {
			key := w.Namespace + "/" + k + "=" + v
			idx.byLabel[key] = append(idx.byLabel[key], w)
		}
	}
	return idx
}

// endpoints returns the instances of a service, sorted by address, one per address.
func (idx *index) endpoints(s *mesh.Service) []instance {
	var out []instance
	if len(s.Selector) > 0 {
		// The rarest label narrows the candidates most.
		var candidates []*registry.Workload
		first := true
		for k, v := range s.Selector {
			c := idx.byLabel[s.Namespace+"/"+k+"="+v]
			if first || len(c) < len(candidates) {
				candidates, first = c, false
			}
		}
		for _, w := range candidates {
			if matches(w.Labels, s.Selector) {
				out = append(out, instance{addr: w.Address, labels: w.Labels, ports: w.Ports, weight: w.Weight, locality: w.Locality})
			}
		}
	}
	for _, e := range s.Endpoints {
		a, err := netip.ParseAddr(e.Address)
		if err != nil {
			continue // the mesh builder rejected it already
		}
		out = append(out, instance{addr: a.Unmap(), labels: e.Labels, ports: e.Ports, weight: e.Weight, locality: e.Locality})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].addr.Less(out[j].addr) })
	dedup := out[:0]
	for i, e := range out {
		if i > 0 && e.addr == out[i-1].addr {
			continue // grpc-go rejects an assignment that lists an address twice
		}
		dedup = append(dedup, e)
	}
	return dedup
}

func matches(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// selectSubset returns the instances of a subset ("" for all).
func selectSubset(s *mesh.Service, subset string, eps []instance) []instance {
	ss, ok := s.Subset(subset)
	if !ok {
		return eps
	}
	var out []instance
	for _, e := range eps {
		if matches(e.labels, ss.Labels) {
			out = append(out, e)
		}
	}
	return out
}

// loadAssignment groups instances by locality. Every locality carries a weight,
// without which grpc-go has nothing to pick from.
func loadAssignment(name string, eps []instance, p mesh.Port) *endpoint.ClusterLoadAssignment {
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
	byLoc := map[string]*endpoint.LocalityLbEndpoints{}
	var locs []string
	for _, e := range eps {
		l, ok := byLoc[e.locality]
		if !ok {
			l = &endpoint.LocalityLbEndpoints{Locality: locality(e.locality)}
			byLoc[e.locality] = l
			locs = append(locs, e.locality)
		}
		w := e.weight
		if w == 0 {
			w = 1
		}
		l.LbEndpoints = append(l.LbEndpoints, &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
				Address: socketAddress(e.addr.String(), e.port(p)),
			}},
			HealthStatus:        core.HealthStatus_HEALTHY,
			LoadBalancingWeight: wrapperspb.UInt32(w),
		})
	}
	sort.Strings(locs)
	for _, k := range locs {
		l := byLoc[k]
		var sum uint32
		for _, e := range l.LbEndpoints {
			sum += e.GetLoadBalancingWeight().GetValue()
		}
		l.LoadBalancingWeight = wrapperspb.UInt32(sum)
		cla.Endpoints = append(cla.Endpoints, l)
	}
	return cla
}

// locality parses Istio's region/zone/subzone form.
func locality(s string) *core.Locality {
	parts := strings.SplitN(s, "/", 3)
	l := &core.Locality{}
	if len(parts) > 0 {
		l.Region = parts[0]
	}
	if len(parts) > 1 {
		l.Zone = parts[1]
	}
	if len(parts) > 2 {
		l.SubZone = parts[2]
	}
	return l
}

func socketAddress(host string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}
