package translate

import (
	"time"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	ratelimitconf "github.com/envoyproxy/go-control-plane/envoy/config/ratelimit/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	als "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	ratelimit "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	previoushosts "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Names of the access-log extensions.
const (
	httpGRPCAccessLog = "envoy.access_loggers.http_grpc"
	tcpGRPCAccessLog  = "envoy.access_loggers.tcp_grpc"
	// alsLogName identifies Sluice-generated proxies in access-log streams.
	alsLogName = "sluice"
)

// Timeouts of the calls Envoy makes to Sluice on the request path.
const (
	extAuthzTimeout  = 200 * time.Millisecond
	rateLimitTimeout = 100 * time.Millisecond
)

// sluiceService is a gRPC service on the named Sluice cluster.
func sluiceService(cluster string, timeout time.Duration) *core.GrpcService {
	g := &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
		EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: cluster},
	}}
	if timeout > 0 {
		g.Timeout = durationpb.New(timeout)
	}
	return g
}

func (r *Resources) commonALS() *als.CommonGrpcAccessLogConfig {
	return &als.CommonGrpcAccessLogConfig{
		LogName:             alsLogName,
		GrpcService:         sluiceService(SluiceCluster, 0),
		TransportApiVersion: core.ApiVersion_V3,
	}
}

// checkCluster is the cluster the request-path checks use: the lean check
// listener when it is advertised, else the gRPC port.
func (r *Resources) checkCluster() string {
	if r.opts.CheckAdvertise != "" {
		return SluiceCheckCluster
	}
	return SluiceCluster
}

// httpAccessLog streams every request's log entry to Sluice, with the headers the
// report path reads (protocol detection, peer identity, gRPC status).
func (r *Resources) httpAccessLog() []*accesslog.AccessLog {
	return []*accesslog.AccessLog{{
		Name: httpGRPCAccessLog,
		ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: toAny(&als.HttpGrpcAccessLogConfig{
			CommonConfig:                    r.commonALS(),
			AdditionalRequestHeadersToLog:   []string{"content-type", "x-envoy-peer-metadata"},
			AdditionalResponseHeadersToLog:  []string{"grpc-status", "x-envoy-peer-metadata"},
			AdditionalResponseTrailersToLog: []string{"grpc-status"},
		})},
	}}
}

func (r *Resources) tcpAccessLog() []*accesslog.AccessLog {
	return []*accesslog.AccessLog{{
		Name: tcpGRPCAccessLog,
		ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: toAny(&als.TcpGrpcAccessLogConfig{
			CommonConfig: r.commonALS(),
		})},
	}}
}

// sidecarHTTPFilters are the HTTP filters of every Envoy connection manager Sluice
// generates: faults from VirtualServices, then Sluice's checks, then the router.
func (r *Resources) sidecarHTTPFilters() []*hcm.HttpFilter {
	return []*hcm.HttpFilter{
		httpFilter(wellknown.Fault, &fault.HTTPFault{}),
		httpFilter(wellknown.HTTPExternalAuthorization, &extauthz.ExtAuthz{
			Services:            &extauthz.ExtAuthz_GrpcService{GrpcService: sluiceService(r.checkCluster(), extAuthzTimeout)},
			TransportApiVersion: core.ApiVersion_V3,
			// Closed unless asked (see Options.CheckFailOpen); a 503 tells an
			// outage from a denial (Envoy's default is 403).
			FailureModeAllow:          r.opts.CheckFailOpen,
			FailureModeAllowHeaderAdd: r.opts.CheckFailOpen,
			StatusOnError:             &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
			IncludePeerCertificate:    true,
		}),
		httpFilter(wellknown.HTTPRateLimit, &ratelimit.RateLimit{
			Domain:  r.opts.RateLimitDomain,
			Timeout: durationpb.New(rateLimitTimeout),
			RateLimitService: &ratelimitconf.RateLimitServiceConfig{
				GrpcService:         sluiceService(r.checkCluster(), 0),
				TransportApiVersion: core.ApiVersion_V3,
			},
		}),
		httpFilter(wellknown.Router, &router.Router{}),
	}
}

// proxylessHTTPFilters are those grpc-go implements: fault injection, then the router.
func proxylessHTTPFilters() []*hcm.HttpFilter {
	return []*hcm.HttpFilter{
		httpFilter(wellknown.Fault, &fault.HTTPFault{}),
		httpFilter(wellknown.Router, &router.Router{}),
	}
}

func httpFilter(name string, cfg proto.Message) *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: name, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: toAny(cfg)}}
}

// constants are typed configs many resources share, marshalled once per Build.
type constants struct {
	// extAuthzOff disables the check on a virtual host. Sidecars check requests
	// where they arrive (inbound), as Mixer did, not again where they leave.
	extAuthzOff   map[string]*anypb.Any
	previousHosts *anypb.Any
}

func newConstants() constants {
	return constants{extAuthzOff: extAuthzOff(), previousHosts: toAny(&previoushosts.PreviousHostsPredicate{})}
}

func extAuthzOff() map[string]*anypb.Any {
	return map[string]*anypb.Any{
		wellknown.HTTPExternalAuthorization: toAny(&extauthz.ExtAuthzPerRoute{
			Override: &extauthz.ExtAuthzPerRoute_Disabled{Disabled: true},
		}),
	}
}

// rateLimits are the descriptors inbound requests send to Sluice's rate-limit
// service: the destination service, and the destination service with the caller's
// address.
func rateLimits(host string) []*route.RateLimit {
	svc := &route.RateLimit_Action{ActionSpecifier: &route.RateLimit_Action_GenericKey_{
		GenericKey: &route.RateLimit_Action_GenericKey{DescriptorKey: "destination_service", DescriptorValue: host},
	}}
	remote := &route.RateLimit_Action{ActionSpecifier: &route.RateLimit_Action_RemoteAddress_{
		RemoteAddress: &route.RateLimit_Action_RemoteAddress{},
	}}
	return []*route.RateLimit{
		{Actions: []*route.RateLimit_Action{svc}},
		{Actions: []*route.RateLimit_Action{svc, remote}},
	}
}

func networkFilter(name string, cfg *anypb.Any) *listener.Filter {
	return &listener.Filter{Name: name, ConfigType: &listener.Filter_TypedConfig{TypedConfig: cfg}}
}

func (r *Resources) tcpProxy(statPrefix, cluster string) *listener.Filter {
	return networkFilter(wellknown.TCPProxy, toAny(&tcpproxy.TcpProxy{
		StatPrefix:       statPrefix,
		ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: cluster},
		AccessLog:        r.tcpAccessLog(),
	}))
}
