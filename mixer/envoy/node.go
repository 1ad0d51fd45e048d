package envoy

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluicemesh/sluice/mixer/registry"
)

// Istio's node metadata keys.
const (
	metaName           = "NAME"
	metaNamespace      = "NAMESPACE"
	metaWorkloadName   = "WORKLOAD_NAME"
	metaClusterID      = "CLUSTER_ID"
	metaMeshID         = "MESH_ID"
	metaLabels         = "LABELS"
	metaServiceAccount = "SERVICE_ACCOUNT"
	metaInstanceIPs    = "INSTANCE_IPS"
)

// Node is the reporting proxy of a stream: its ID, log name and workload identity.
// It is built once per stream from the first message and never modified.
type Node struct {
	ID       string
	LogName  string
	MeshID   string
	Workload *registry.Workload
}

// DecodeIdentifier decodes a raw Identifier with the standard protobuf decoder; it
// happens once per stream, so its cost does not matter.
func DecodeIdentifier(raw []byte, trustDomain string) (*Node, error) {
	var node corev3.Node
	logName := ""
	for b := raw; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, malformed("identifier", n)
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == identNode || num == identLogName) {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, malformed("identifier", n)
			}
			b = b[n:]
			if num == identNode {
				if err := proto.Unmarshal(v, &node); err != nil {
					return nil, fmt.Errorf("%w: identifier.node: %v", ErrMalformed, err)
				}
			} else {
				logName = string(v)
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return nil, malformed("identifier", n)
		}
		b = b[n:]
	}
	if node.GetId() == "" && node.GetMetadata() == nil {
		return nil, fmt.Errorf("identifier.node has neither id nor metadata")
	}
	return NodeFrom(&node, logName, trustDomain), nil
}

// NodeFrom builds a Node from Envoy's node message.
func NodeFrom(node *corev3.Node, logName, trustDomain string) *Node {
	w := workloadFromStruct(node.GetMetadata())
	// Fall back on the sidecar node ID: TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN.
	if parts := strings.Split(node.GetId(), "~"); len(parts) == 4 {
		pod, ns, _ := strings.Cut(parts[2], ".")
		if w.Instance == "" {
			w.Instance = pod
		}
		if w.Namespace == "" {
			w.Namespace = ns
		}
	}
	if w.Name == "" && w.Instance != "" {
		w.Name = WorkloadFromPod(w.Instance)
	}
	if w.Namespace == "" {
		w.Namespace = registry.Unknown
	}
	if w.Name == "" {
		w.Name = registry.Unknown
	}
	w.Derive(trustDomain)
	meshID := ""
	if v := node.GetMetadata().GetFields()[metaMeshID]; v != nil {
		meshID = v.GetStringValue()
	}
	return &Node{
		ID:       node.GetId(),
		LogName:  logName,
		MeshID:   meshID,
		Workload: w,
	}
}

// workloadFromStruct reads Istio's node (or peer) metadata keys.
func workloadFromStruct(md *structpb.Struct) *registry.Workload {
	f := md.GetFields()
	w := &registry.Workload{
		Name:           f[metaWorkloadName].GetStringValue(),
		Namespace:      f[metaNamespace].GetStringValue(),
		Instance:       f[metaName].GetStringValue(),
		ClusterID:      f[metaClusterID].GetStringValue(),
		ServiceAccount: f[metaServiceAccount].GetStringValue(),
	}
	if l := f[metaLabels].GetStructValue(); l != nil {
		w.Labels = make(map[string]string, len(l.GetFields()))
		for k, v := range l.GetFields() {
			w.Labels[k] = v.GetStringValue()
		}
	}
	return w
}

// WorkloadFromPod guesses a workload name from a pod name the way Kubernetes names
// Deployment pods (NAME-RSHASH-PODHASH): it drops the two generated suffixes.
func WorkloadFromPod(pod string) string {
	parts := strings.Split(pod, "-")
	if len(parts) < 3 {
		return pod
	}
	return strings.Join(parts[:len(parts)-2], "-")
}
