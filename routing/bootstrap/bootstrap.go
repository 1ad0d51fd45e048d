// Package bootstrap writes the Envoy bootstrap of a sidecar that takes all of its
// configuration from Sluice over ADS.
package bootstrap

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// XDSCluster is the bootstrap's name for the cluster that reaches Sluice's xDS port.
const XDSCluster = "sluice-xds"

// Options describe the sidecar.
type Options struct {
	// NodeID is the Envoy node ID, Istio style: sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local.
	NodeID string
	// XDSAddress is Sluice's xDS HOST:PORT.
	XDSAddress string
	// Delta selects incremental xDS.
	Delta bool
	// AdminPort is Envoy's admin port on 127.0.0.1 (0: 15000).
	AdminPort uint32
	// Workload and Labels describe the workload, for the identity Sluice reports
	// (node metadata WORKLOAD_NAME and LABELS).
	Workload string
	Labels   map[string]string
}

// Build returns the bootstrap. Its node metadata carries Istio's keys (NAME,
// NAMESPACE, WORKLOAD_NAME, LABELS) so that access logs identify the workload.
func Build(o Options) (*bootstrapv3.Bootstrap, error) {
	if o.NodeID == "" {
		return nil, fmt.Errorf("a node ID is needed")
	}
	host, portText, err := net.SplitHostPort(o.XDSAddress)
	if err != nil {
		return nil, fmt.Errorf("xDS address %q: %w", o.XDSAddress, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("xDS address %q: bad port", o.XDSAddress)
	}
	if o.AdminPort == 0 {
		o.AdminPort = 15000
	}
	meta := map[string]any{}
	nodeCluster := o.NodeID
	if parts := strings.Split(o.NodeID, "~"); len(parts) == 4 {
		pod, ns, _ := strings.Cut(parts[2], ".")
		meta["NAME"], meta["NAMESPACE"] = pod, ns
		if ip, err := netip.ParseAddr(parts[1]); err == nil {
			meta["INSTANCE_IPS"] = ip.String()
		}
		nodeCluster = first(o.Workload, pod) + "." + ns
	}
	if o.Workload != "" {
		meta["WORKLOAD_NAME"] = o.Workload
	}
	if len(o.Labels) > 0 {
		labels := map[string]any{}
		keys := make([]string, 0, len(o.Labels))
		for k := range o.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			labels[k] = o.Labels[k]
		}
		meta["LABELS"] = labels
	}
	md, err := structpb.NewStruct(meta)
	if err != nil {
		return nil, fmt.Errorf("node metadata: %w", err)
	}
	api := core.ApiConfigSource_GRPC
	if o.Delta {
		api = core.ApiConfigSource_DELTA_GRPC
	}
	ads := &core.ConfigSource{
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
		ResourceApiVersion:    core.ApiVersion_V3,
	}
	xds := &cluster.Cluster{
		Name:           XDSCluster,
		ConnectTimeout: durationpb.New(time.Second),
		// xDS is gRPC: HTTP/2 to Sluice.
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&upstreamhttp.HttpProtocolOptions{
				UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}},
				}},
			}),
		},
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: XDSCluster,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socketAddress(host, uint32(port))}},
			}}}},
		},
	}
	if _, err := netip.ParseAddr(host); err == nil {
		xds.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}
	} else {
		xds.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS}
	}
	b := &bootstrapv3.Bootstrap{
		Node: &core.Node{Id: o.NodeID, Cluster: nodeCluster, Metadata: md},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &core.ApiConfigSource{
				ApiType:             api,
				TransportApiVersion: core.ApiVersion_V3,
				GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
				}}},
				SetNodeOnFirstMessageOnly: true,
			},
			LdsConfig: ads,
			CdsConfig: ads,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*cluster.Cluster{xds}},
		Admin:           &bootstrapv3.Admin{Address: socketAddress("127.0.0.1", o.AdminPort)},
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

func socketAddress(host string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

func mustAny(m *upstreamhttp.HttpProtocolOptions) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("bootstrap: marshal %T: %v", m, err)) // a fixed, valid message
	}
	return a
}
