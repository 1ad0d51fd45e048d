package translate

import (
	"strconv"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	origdst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluicemesh/sluice/routing/mesh"
)

// sidecarHCM is an Envoy connection manager with Sluice's filters and access log.
func (r *Resources) sidecarHCM(statPrefix string, rs *hcm.HttpConnectionManager) *listener.Filter {
	rs.StatPrefix = statPrefix
	rs.CodecType = hcm.HttpConnectionManager_AUTO
	rs.HttpFilters = r.sidecarHTTPFilters()
	rs.AccessLog = r.httpAccessLog()
	rs.GenerateRequestId = wrapperspb.Bool(true)
	// Routes and the ext_authz filter see the path normalized (RFC 3986 dot
	// segments and percent-encoded unreserved characters, then adjacent slashes
	// merged), as the upstream does: otherwise //admin, /./admin or /%61dmin
	// would step past a policy on /admin that the application still serves.
	rs.NormalizePath = wrapperspb.Bool(true)
	rs.MergeSlashes = true
	return networkFilter(wellknown.HTTPConnectionManager, toAny(rs))
}

func rds(name string) *hcm.HttpConnectionManager {
	return &hcm.HttpConnectionManager{RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
		ConfigSource: adsSource(), RouteConfigName: name,
	}}}
}

// outboundListener takes the traffic for one port that the virtual outbound
// listener hands over (it does not bind the port itself) and routes it by host.
func (r *Resources) outboundListener(port uint32) *listener.Listener {
	name := "0.0.0.0_" + strconv.Itoa(int(port))
	return &listener.Listener{
		Name:             name,
		Address:          socketAddress("0.0.0.0", port),
		BindToPort:       wrapperspb.Bool(false),
		TrafficDirection: core.TrafficDirection_OUTBOUND,
		FilterChains: []*listener.FilterChain{{
			Filters: []*listener.Filter{r.sidecarHCM("outbound_"+name, rds(strconv.Itoa(int(port))))},
		}},
	}
}

// virtualOutbound receives all outgoing traffic redirected by iptables and hands it
// to the listener of its original destination port, or passes it through.
func (r *Resources) virtualOutbound() *listener.Listener {
	return &listener.Listener{
		Name:             VirtualOutboundName,
		Address:          socketAddress("0.0.0.0", VirtualOutboundPort),
		UseOriginalDst:   wrapperspb.Bool(true),
		TrafficDirection: core.TrafficDirection_OUTBOUND,
		FilterChains: []*listener.FilterChain{{
			Name:    "virtualOutbound-catchall-tcp",
			Filters: []*listener.Filter{r.tcpProxy(PassthroughCluster, PassthroughCluster)},
		}},
	}
}

// virtualInbound receives all incoming traffic redirected by iptables; the original
// destination port selects the filter chain of the service port the workload serves.
func (r *Resources) virtualInbound(ports []inboundPort) *listener.Listener {
	l := &listener.Listener{
		Name:             VirtualInboundName,
		Address:          socketAddress("0.0.0.0", VirtualInboundPort),
		TrafficDirection: core.TrafficDirection_INBOUND,
		ListenerFilters: []*listener.ListenerFilter{{
			Name:       wellknown.OriginalDestination,
			ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: toAny(&origdst.OriginalDst{})},
		}},
		DefaultFilterChain: &listener.FilterChain{
			Name:    "inbound-passthrough",
			Filters: []*listener.Filter{r.tcpProxy(InboundPassthroughCluster, InboundPassthroughCluster)},
		},
	}
	for _, p := range ports {
		name := "0.0.0.0_" + strconv.Itoa(int(p.Port))
		l.FilterChains = append(l.FilterChains, &listener.FilterChain{
			Name:             ClusterName(Inbound, p.Port, "", ""),
			FilterChainMatch: &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(p.Port)},
			Filters: []*listener.Filter{r.sidecarHCM("inbound_"+name, &hcm.HttpConnectionManager{
				RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: inboundRoutes(p)},
			})},
		})
	}
	return l
}

// grpcService adds a proxyless service port: an API listener for each name a
// client may dial (HOST:PORT, and the short names of Kubernetes-style hosts) and
// one route configuration.
func (r *Resources) grpcService(m *mesh.Mesh, s *mesh.Service, p mesh.Port) {
	port := ":" + strconv.Itoa(int(p.Number))
	rcName := s.Host + port
	rc := &route.RouteConfiguration{
		Name: rcName,
		VirtualHosts: []*route.VirtualHost{{
			Name:    rcName,
			Domains: domains(s, p.Number),
			Routes:  r.routes(m, s, p.Number, true),
		}},
	}
	r.GRPC.Routes[rcName] = rc
	for _, name := range append([]string{s.Host}, s.Aliases...) {
		h := rds(rcName)
		h.HttpFilters = proxylessHTTPFilters()
		h.StatPrefix = name + port
		l := &listener.Listener{
			Name:        name + port,
			ApiListener: &listener.ApiListener{ApiListener: toAny(h)},
		}
		r.GRPC.Listeners[l.GetName()] = l
	}
}
