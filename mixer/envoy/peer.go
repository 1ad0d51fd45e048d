package envoy

import (
	"encoding/base64"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluicemesh/sluice/mixer/registry"
)

// DecodePeerMetadata decodes an x-envoy-peer-metadata header: the base64 encoding of
// a google.protobuf.Struct holding the peer's Istio node metadata.
func DecodePeerMetadata(h, trustDomain string) (*registry.Workload, error) {
	raw, err := base64.StdEncoding.DecodeString(h)
	if err != nil {
		if raw, err = base64.RawStdEncoding.DecodeString(h); err != nil {
			return nil, fmt.Errorf("peer metadata is not base64: %w", err)
		}
	}
	var st structpb.Struct
	if err := proto.Unmarshal(raw, &st); err != nil {
		return nil, fmt.Errorf("peer metadata is not a protobuf Struct: %w", err)
	}
	w := workloadFromStruct(&st)
	if w.Name == "" && w.Instance != "" {
		w.Name = WorkloadFromPod(w.Instance)
	}
	if w.Name == "" {
		return nil, errNoIdentity
	}
	if w.Namespace == "" {
		w.Namespace = registry.Unknown
	}
	w.Derive(trustDomain)
	return w, nil
}

// EncodePeerMetadata is the inverse of DecodePeerMetadata, for simulated proxies.
func EncodePeerMetadata(w *registry.Workload) (string, error) {
	labels := map[string]any{}
	for k, v := range w.Labels {
		labels[k] = v
	}
	fields := map[string]any{
		metaWorkloadName: w.Name,
		metaNamespace:    w.Namespace,
		metaName:         w.Instance,
		metaLabels:       labels,
	}
	if w.ClusterID != "" {
		fields[metaClusterID] = w.ClusterID
	}
	if w.ServiceAccount != "" {
		fields[metaServiceAccount] = w.ServiceAccount
	}
	st, err := structpb.NewStruct(fields)
	if err != nil {
		return "", fmt.Errorf("encode peer metadata: %w", err)
	}
	raw, err := proto.Marshal(st)
	if err != nil {
		return "", fmt.Errorf("encode peer metadata: %w", err)
	}
	return base64.StdEncoding.EncodeToString(raw), nil
}
