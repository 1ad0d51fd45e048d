package translate

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	commonfault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluicemesh/sluice/routing/mesh"
)

// domains are the names a virtual host answers to: the host, its aliases and
// addresses, each with and without the port.
func domains(s *mesh.Service, port uint32) []string {
	names := append(append([]string{s.Host}, s.Aliases...), s.Addresses...)
	p := strconv.Itoa(int(port))
	out := make([]string, 0, 2*len(names))
	for _, n := range names {
		// net.JoinHostPort brackets IPv6 addresses, as Host headers carry them.
		out = append(out, n, net.JoinHostPort(n, p))
	}
	return out
}

// routes translates a service's routes for requests arriving on port. Proxyless
// routes carry only what grpc-go implements: it reads timeouts from
// max_stream_duration, retries only on gRPC status codes, and has no mirroring.
func (r *Resources) routes(m *mesh.Mesh, s *mesh.Service, port uint32, proxyless bool) []*route.Route {
	if len(s.Routes) == 0 {
		d := mesh.Destination{Host: s.Host, Port: port, Weight: 100}
		return []*route.Route{{
			Name:   "default",
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: r.routeAction(m, &mesh.Route{Destinations: []mesh.Destination{d}}, port, proxyless)},
		}}
	}
	var out []*route.Route
	for _, mr := range s.Routes {
		action := r.routeAction(m, mr, port, proxyless)
		perFilter := faultConfig(mr.Fault)
		var md *core.Metadata
		if !proxyless {
			md = routeMetadata(mr)
		}
		matches := mr.Matches
		if len(matches) == 0 {
			matches = []mesh.Match{{}}
		}
		for _, mm := range matches {
			out = append(out, &route.Route{
				Name:                 mr.Name,
				Match:                routeMatch(mm),
				Action:               &route.Route_Route{Route: action},
				TypedPerFilterConfig: perFilter,
				Metadata:             md,
			})
		}
	}
	return out
}

// routeMetadata names the VirtualService a route came from, for Envoy's admin views.
func routeMetadata(mr *mesh.Route) *core.Metadata {
	src := mr.Source
	v := &structpb.Struct{Fields: map[string]*structpb.Value{
		"config": structpb.NewStringValue("VirtualService " + src.Namespace + "/" + src.Name),
		"route":  structpb.NewStringValue(fmt.Sprintf("http[%d]", mr.Index)),
	}}
	return &core.Metadata{FilterMetadata: map[string]*structpb.Struct{"sluice": v}}
}

func routeMatch(mm mesh.Match) *route.RouteMatch {
	rm := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	if u := mm.URI; u != nil {
		switch u.Kind {
		case mesh.MatchExact:
			rm.PathSpecifier = &route.RouteMatch_Path{Path: u.Value}
		case mesh.MatchPrefix:
			rm.PathSpecifier = &route.RouteMatch_Prefix{Prefix: u.Value}
		case mesh.MatchRegex:
			rm.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: u.Value}}
		}
	}
	if mm.IgnoreCase {
		rm.CaseSensitive = wrapperspb.Bool(false)
	}
	if mm.Method != nil {
		rm.Headers = append(rm.Headers, headerMatch(":method", *mm.Method))
	}
	for _, h := range mm.Headers {
		rm.Headers = append(rm.Headers, headerMatch(h.Name, h.Match))
	}
	return rm
}

func headerMatch(name string, sm mesh.StringMatch) *route.HeaderMatcher {
	m := &matcher.StringMatcher{}
	switch sm.Kind {
	case mesh.MatchExact:
		m.MatchPattern = &matcher.StringMatcher_Exact{Exact: sm.Value}
	case mesh.MatchPrefix:
		m.MatchPattern = &matcher.StringMatcher_Prefix{Prefix: sm.Value}
	case mesh.MatchRegex:
		m.MatchPattern = &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: sm.Value}}
	}
	return &route.HeaderMatcher{Name: name, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: m}}
}

func (r *Resources) routeAction(m *mesh.Mesh, mr *mesh.Route, port uint32, proxyless bool) *route.RouteAction {
	a := &route.RouteAction{}
	type wc struct {
		name   string
		weight uint32
	}
	var clusters []wc
	var hashHeader string
	for _, d := range mr.Destinations {
		if d.Weight == 0 {
			continue // Istio drops them; grpc-go would too
		}
		p, _ := d.ResolvePort(m, port) // checked by the mesh builder
		clusters = append(clusters, wc{ClusterName(Outbound, p, d.Subset, d.Host), d.Weight})
		if s, ok := m.Service(d.Host); ok && hashHeader == "" {
			if pol := s.PolicyFor(d.Subset); pol.LB == mesh.LBRingHash {
				hashHeader = pol.HashHeader
			}
		}
	}
	if len(clusters) == 1 {
		a.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: clusters[0].name}
	} else {
		w := &route.WeightedCluster{}
		for _, c := range clusters {
			w.Clusters = append(w.Clusters, &route.WeightedCluster_ClusterWeight{Name: c.name, Weight: wrapperspb.UInt32(c.weight)})
		}
		a.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: w}
	}
	if hashHeader != "" {
		a.HashPolicy = []*route.RouteAction_HashPolicy{{PolicySpecifier: &route.RouteAction_HashPolicy_Header_{
			Header: &route.RouteAction_HashPolicy_Header{HeaderName: hashHeader},
		}}}
	}
	if proxyless {
		if mr.Timeout > 0 {
			a.MaxStreamDuration = &route.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(mr.Timeout)}
		}
		a.RetryPolicy = proxylessRetry(mr.Retries)
		return a
	}
	// Like Istio: no timeout unless the VirtualService sets one (Envoy's default is 15s).
	a.Timeout = durationpb.New(mr.Timeout)
	a.RetryPolicy = r.envoyRetry(mr.Retries)
	if mr.Mirror != nil {
		p, _ := mr.Mirror.ResolvePort(m, port)
		a.RequestMirrorPolicies = []*route.RouteAction_RequestMirrorPolicy{{
			Cluster: ClusterName(Outbound, p, mr.Mirror.Subset, mr.Mirror.Host),
			RuntimeFraction: &core.RuntimeFractionalPercent{
				DefaultValue: fractional(mr.MirrorPercent),
			},
		}}
	}
	return a
}

// envoyRetry is the VirtualService's retry policy, or Istio's default (two retries of
// connection failures and 503s) when it has none.
func (r *Resources) envoyRetry(rt *mesh.Retries) *route.RetryPolicy {
	if rt == nil {
		rt = &mesh.Retries{Attempts: 2, RetryOn: []string{"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}, StatusCode: []uint32{503}}
	}
	if rt.Attempts == 0 {
		return nil
	}
	p := &route.RetryPolicy{
		RetryOn:                       strings.Join(rt.RetryOn, ","),
		NumRetries:                    wrapperspb.UInt32(rt.Attempts),
		RetriableStatusCodes:          rt.StatusCode,
		HostSelectionRetryMaxAttempts: 5,
		RetryHostPredicate: []*route.RetryPolicy_RetryHostPredicate{{
			Name:       "envoy.retry_host_predicates.previous_hosts",
			ConfigType: &route.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: r.consts.previousHosts},
		}},
	}
	if rt.PerTry > 0 {
		p.PerTryTimeout = durationpb.New(rt.PerTry)
	}
	return p
}

// proxylessRetry keeps the gRPC status conditions, the only ones grpc-go retries on.
func proxylessRetry(rt *mesh.Retries) *route.RetryPolicy {
	if rt == nil || rt.Attempts == 0 {
		return nil
	}
	var on []string
	for _, c := range rt.RetryOn {
		if mesh.GRPCRetryOn(c) {
			on = append(on, c)
		}
	}
	if len(on) == 0 {
		return nil
	}
	p := &route.RetryPolicy{RetryOn: strings.Join(on, ","), NumRetries: wrapperspb.UInt32(rt.Attempts)}
	if rt.PerTry > 0 {
		p.PerTryTimeout = durationpb.New(rt.PerTry)
	}
	return p
}

// faultConfig is the per-route configuration of the fault filter.
func faultConfig(f *mesh.Fault) map[string]*anypb.Any {
	if f == nil || (!f.HasDelay && !f.HasAbort) {
		return nil
	}
	hf := &fault.HTTPFault{}
	if f.HasDelay {
		hf.Delay = &commonfault.FaultDelay{
			FaultDelaySecifier: &commonfault.FaultDelay_FixedDelay{FixedDelay: durationpb.New(f.Delay)},
			Percentage:         fractional(f.DelayPercent),
		}
	}
	if f.HasAbort {
		hf.Abort = &fault.FaultAbort{Percentage: fractional(f.AbortPercent)}
		if f.AbortGRPC != nil {
			hf.Abort.ErrorType = &fault.FaultAbort_GrpcStatus{GrpcStatus: uint32(*f.AbortGRPC)}
		} else {
			hf.Abort.ErrorType = &fault.FaultAbort_HttpStatus{HttpStatus: f.AbortHTTP}
		}
	}
	return map[string]*anypb.Any{wellknown.Fault: toAny(hf)}
}

// fractional turns a percentage into parts per million, as Istio does.
func fractional(percent float64) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: uint32(percent*10000 + 0.5), Denominator: typev3.FractionalPercent_MILLION}
}

// outboundRoutes is the route configuration of one port: a virtual host per service
// on that port, and allow_any for every other destination (passed through).
func (r *Resources) outboundRoutes(m *mesh.Mesh, port uint32, services []*mesh.Service) *route.RouteConfiguration {
	rc := &route.RouteConfiguration{
		Name:             strconv.Itoa(int(port)),
		ValidateClusters: wrapperspb.Bool(false),
	}
	sorted := append([]*mesh.Service(nil), services...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Host < sorted[j].Host })
	for _, s := range sorted {
		rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
			Name:                 s.Host + ":" + strconv.Itoa(int(port)),
			Domains:              domains(s, port),
			Routes:               r.routes(m, s, port, false),
			TypedPerFilterConfig: r.consts.extAuthzOff,
		})
	}
	rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
		Name:    "allow_any",
		Domains: []string{"*"},
		Routes: []*route.Route{{
			Name:  "allow_any",
			Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: &route.RouteAction{
				ClusterSpecifier: &route.RouteAction_Cluster{Cluster: PassthroughCluster},
				Timeout:          durationpb.New(0),
			}},
		}},
		TypedPerFilterConfig: r.consts.extAuthzOff,
	})
	return rc
}

// inboundRoutes sends everything arriving on a port to the local workload.
func inboundRoutes(p inboundPort) *route.RouteConfiguration {
	name := ClusterName(Inbound, p.Port, "", "")
	return &route.RouteConfiguration{
		Name:             name,
		ValidateClusters: wrapperspb.Bool(false),
		VirtualHosts: []*route.VirtualHost{{
			Name:    "inbound|http|" + strconv.Itoa(int(p.Port)),
			Domains: []string{"*"},
			Routes: []*route.Route{{
				Name:  "default",
				Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_Route{Route: &route.RouteAction{
					ClusterSpecifier: &route.RouteAction_Cluster{Cluster: name},
					Timeout:          durationpb.New(time.Duration(0)),
				}},
			}},
			RateLimits: rateLimits(p.Host),
		}},
	}
}
