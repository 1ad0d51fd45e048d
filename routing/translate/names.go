package translate

import (
	"net/netip"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Direction is the first part of an Istio cluster name.
type Direction string

// Directions of traffic through a sidecar.
const (
	Outbound Direction = "outbound"
	Inbound  Direction = "inbound"
)

// Names of the clusters and listeners every sidecar has, as Istio names them.
const (
	PassthroughCluster        = "PassthroughCluster"
	InboundPassthroughCluster = "InboundPassthroughCluster"
	// SluiceCluster reaches Sluice's gRPC port (access logs, and checks when
	// SluiceCheckCluster is absent).
	SluiceCluster = "sluice-grpc"
	// SluiceCheckCluster reaches Sluice's lean check listener (ext_authz, rate
	// limits); it exists when Options.CheckAdvertise is set.
	SluiceCheckCluster     = "sluice-check"
	VirtualOutboundName    = "virtualOutbound"
	VirtualInboundName     = "virtualInbound"
	VirtualOutboundPort    = 15001
	VirtualInboundPort     = 15006
	inboundPassthroughBind = "127.0.0.6"
)

// ClusterName returns Istio's name for a cluster: DIRECTION|PORT|SUBSET|HOST.
func ClusterName(dir Direction, port uint32, subset, host string) string {
	return string(dir) + "|" + strconv.Itoa(int(port)) + "|" + subset + "|" + host
}

// Generator says which kind of client a node is, and so which resources it gets.
type Generator string

// Generators: Envoy sidecars, and proxyless gRPC clients (node metadata GENERATOR:
// grpc, as Istio's proxyless mode sets it).
const (
	GeneratorEnvoy Generator = "envoy"
	GeneratorGRPC  Generator = "grpc"
)

// Node is what Sluice reads from an xDS client's node.
type Node struct {
	ID        string
	Generator Generator
	// Type is the first part of an Istio node ID (sidecar, router), or "".
	Type      string
	IP        netip.Addr
	Pod       string
	Namespace string
}

// ParseNode reads an xDS node. Istio node IDs look like
// sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local; other IDs are
// accepted, with no inbound listener for lack of an address.
func ParseNode(n *core.Node) Node {
	out := Node{ID: n.GetId(), Generator: GeneratorEnvoy}
	if g := n.GetMetadata().GetFields()["GENERATOR"].GetStringValue(); strings.EqualFold(g, "grpc") {
		out.Generator = GeneratorGRPC
	}
	parts := strings.Split(n.GetId(), "~")
	if len(parts) != 4 {
		return out
	}
	out.Type = parts[0]
	if ip, err := netip.ParseAddr(parts[1]); err == nil {
		out.IP = ip.Unmap()
	}
	out.Pod, out.Namespace, _ = strings.Cut(parts[2], ".")
	if ns := n.GetMetadata().GetFields()["NAMESPACE"].GetStringValue(); ns != "" && out.Namespace == "" {
		out.Namespace = ns
	}
	return out
}
