package translate

import (
	"math"
	"net/netip"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluicemesh/sluice/routing/mesh"
)

// defaultConnectTimeout is Istio's.
const defaultConnectTimeout = 10 * time.Second

const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
		ResourceApiVersion:    core.ApiVersion_V3,
	}
}

// edsCluster is an outbound cluster whose endpoints come over ADS. For grpc-go it
// carries only what grpc-go reads.
func edsCluster(name string, p mesh.Port, pol mesh.Policy, proxyless bool) *cluster.Cluster {
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
	}
	switch pol.LB {
	case mesh.LBLeastRequest:
		c.LbPolicy = cluster.Cluster_LEAST_REQUEST
	case mesh.LBRingHash:
		c.LbPolicy = cluster.Cluster_RING_HASH
		if pol.MinRingSize > 0 {
			c.LbConfig = &cluster.Cluster_RingHashLbConfig_{RingHashLbConfig: &cluster.Cluster_RingHashLbConfig{
				MinimumRingSize: wrapperspb.UInt64(pol.MinRingSize),
			}}
		}
	}
	c.OutlierDetection = outlierDetection(pol.Outlier, proxyless)
	if pol.Outlier != nil && pol.Outlier.MinHealthPercent > 0 && !proxyless {
		c.CommonLbConfig = &cluster.Cluster_CommonLbConfig{
			HealthyPanicThreshold: &typev3.Percent{Value: float64(pol.Outlier.MinHealthPercent)},
		}
	}
	if proxyless {
		// grpc-go honours only max_requests, and defaults it to 1024 when a threshold
		// is present without it.
		if pol.MaxRequests > 0 {
			c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
				MaxRequests: wrapperspb.UInt32(pol.MaxRequests),
			}}}
		}
		return c
	}
	timeout := defaultConnectTimeout
	if pol.ConnectTimeout > 0 {
		timeout = pol.ConnectTimeout
	}
	c.ConnectTimeout = durationpb.New(timeout)
	// Like Istio: unset limits are effectively unlimited rather than Envoy's 1024.
	c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
		MaxConnections:     wrapperspb.UInt32(orMax(pol.MaxConnections)),
		MaxPendingRequests: wrapperspb.UInt32(orMax(pol.MaxPendingRequests)),
		MaxRequests:        wrapperspb.UInt32(orMax(pol.MaxRequests)),
		MaxRetries:         wrapperspb.UInt32(orMax(pol.MaxRetries)),
		TrackRemaining:     true,
	}}}
	if opts := httpProtocolOptions(p.Protocol.IsHTTP2(), pol.MaxRequestsPerConnection); opts != nil {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: opts}
	}
	return c
}

func orMax(v uint32) uint32 {
	if v == 0 {
		return math.MaxUint32
	}
	return v
}

// httpProtocolOptions makes Envoy speak HTTP/2 upstream where the port needs it.
func httpProtocolOptions(http2 bool, maxPerConn uint32) *anypb.Any {
	if !http2 && maxPerConn == 0 {
		return nil
	}
	o := &upstreamhttp.HttpProtocolOptions{}
	if maxPerConn > 0 {
		o.CommonHttpProtocolOptions = &core.HttpProtocolOptions{MaxRequestsPerConnection: wrapperspb.UInt32(maxPerConn)}
	}
	explicit := &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
		ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &core.Http1ProtocolOptions{}},
	}
	if http2 {
		explicit.ProtocolConfig = &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}
	}
	o.UpstreamProtocolOptions = &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: explicit}
	return toAny(o)
}

// outlierDetection translates Istio's consecutive-error ejection. Envoy counts
// consecutive errors; grpc-go implements only the success-rate and
// failure-percentage algorithms, so for it "N consecutive errors" becomes "every one
// of at least N calls in an interval failed".
func outlierDetection(o *mesh.Outlier, proxyless bool) *cluster.OutlierDetection {
	if o == nil {
		return nil
	}
	od := &cluster.OutlierDetection{
		// Istio disables success-rate ejection, which Envoy and grpc-go enable by default.
		EnforcingSuccessRate: wrapperspb.UInt32(0),
	}
	if o.Interval > 0 {
		od.Interval = durationpb.New(o.Interval)
	}
	if o.BaseEjectionTime > 0 {
		od.BaseEjectionTime = durationpb.New(o.BaseEjectionTime)
	}
	if o.HasMaxEjectionPercent {
		od.MaxEjectionPercent = wrapperspb.UInt32(o.MaxEjectionPercent)
	}
	if proxyless {
		n := o.Consecutive5xx
		if !o.Has5xx || (o.HasGateway && o.ConsecutiveGateway < n) {
			n = o.ConsecutiveGateway
		}
		if n > 0 {
			od.FailurePercentageThreshold = wrapperspb.UInt32(100)
			od.EnforcingFailurePercentage = wrapperspb.UInt32(100)
			od.FailurePercentageRequestVolume = wrapperspb.UInt32(n)
			od.FailurePercentageMinimumHosts = wrapperspb.UInt32(1)
		}
		return od
	}
	if o.Has5xx {
		od.Consecutive_5Xx = wrapperspb.UInt32(o.Consecutive5xx)
		od.EnforcingConsecutive_5Xx = wrapperspb.UInt32(enforce(o.Consecutive5xx))
	} else {
		od.EnforcingConsecutive_5Xx = wrapperspb.UInt32(0)
	}
	if o.HasGateway {
		od.ConsecutiveGatewayFailure = wrapperspb.UInt32(o.ConsecutiveGateway)
		od.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(enforce(o.ConsecutiveGateway))
	}
	return od
}

// enforce turns a threshold of 0 (Istio's "off") into enforcement 0.
func enforce(threshold uint32) uint32 {
	if threshold == 0 {
		return 0
	}
	return 100
}

// inboundCluster forwards to the original destination from 127.0.0.6, which the
// sidecar's iptables rules let through uncaptured (as in Istio).
func inboundCluster(name string) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
		UpstreamBindConfig:   &core.BindConfig{SourceAddress: socketAddress(inboundPassthroughBind, 0).GetSocketAddress()},
		CircuitBreakers: &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
			MaxConnections: wrapperspb.UInt32(math.MaxUint32), MaxPendingRequests: wrapperspb.UInt32(math.MaxUint32),
			MaxRequests: wrapperspb.UInt32(math.MaxUint32), MaxRetries: wrapperspb.UInt32(math.MaxUint32),
		}}},
	}
}

// staticClusters are the clusters every sidecar has besides the services'.
func (r *Resources) staticClusters() []*cluster.Cluster {
	pass := &cluster.Cluster{
		Name:                 PassthroughCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
	}
	inPass := inboundCluster(InboundPassthroughCluster)
	cs := []*cluster.Cluster{pass, inPass, sluiceCluster(SluiceCluster, r.opts.Advertise)}
	if r.opts.CheckAdvertise != "" {
		cs = append(cs, sluiceCluster(SluiceCheckCluster, r.opts.CheckAdvertise))
	}
	return cs
}

// sluiceCluster reaches one of Sluice's ports over HTTP/2, by IP or by DNS name.
func sluiceCluster(name, addr string) *cluster.Cluster {
	host, port := endpointOf(addr)
	c := &cluster.Cluster{
		Name:           name,
		ConnectTimeout: durationpb.New(time.Second),
		LbPolicy:       cluster.Cluster_ROUND_ROBIN,
		// Not Envoy's default of 1,024 calls at once: past it the ext_authz and
		// rate-limit calls fail in Envoy, and the requests pass unchecked.
		CircuitBreakers: &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
			MaxConnections: wrapperspb.UInt32(math.MaxUint32), MaxPendingRequests: wrapperspb.UInt32(math.MaxUint32),
			MaxRequests: wrapperspb.UInt32(math.MaxUint32), MaxRetries: wrapperspb.UInt32(math.MaxUint32),
		}}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			httpProtocolOptionsKey: httpProtocolOptions(true, 0),
		},
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socketAddress(host, port)}},
			}}}},
		},
	}
	if _, err := netip.ParseAddr(host); err == nil {
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}
	} else {
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS}
		c.DnsLookupFamily = cluster.Cluster_V4_PREFERRED
	}
	return c
}
