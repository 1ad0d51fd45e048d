package loadtest

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluicemesh/sluice/mixer/envoy"
	"github.com/sluicemesh/sluice/mixer/registry"
)

// Node returns the Envoy node a workload's sidecar identifies itself with, with
// Istio's ID format and metadata.
func Node(w *Workload) *corev3.Node {
	labels := map[string]any{}
	for k, v := range w.Labels() {
		labels[k] = v
	}
	md, err := structpb.NewStruct(map[string]any{
		"NAME":            w.Pod(),
		"NAMESPACE":       w.Namespace,
		"WORKLOAD_NAME":   w.Name,
		"CLUSTER_ID":      w.Cluster,
		"MESH_ID":         "cluster.local",
		"SERVICE_ACCOUNT": w.ServiceAccount,
		"LABELS":          labels,
		"INSTANCE_IPS":    w.IP,
	})
	if err != nil {
		panic(err) // the values above are all encodable
	}
	return &corev3.Node{
		Id:       fmt.Sprintf("sidecar~%s~%s.%s~%s.svc.cluster.local", w.IP, w.Pod(), w.Namespace, w.Namespace),
		Cluster:  w.Name + "." + w.Namespace,
		Metadata: md,
	}
}

// PeerMetadata returns the x-envoy-peer-metadata header a workload's sidecar sends.
func PeerMetadata(w *Workload) string {
	if w.peer != "" {
		return w.peer
	}
	s, err := envoy.EncodePeerMetadata(&registry.Workload{
		Name: w.Name, Namespace: w.Namespace, Instance: w.Pod(), Labels: w.Labels(),
		ClusterID: w.Cluster, ServiceAccount: w.ServiceAccount,
	})
	if err != nil {
		panic(err) // the fields above are plain strings
	}
	w.peer = s
	return s
}

func socket(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func common(c *Call, cluster string, down, downLocal, up *corev3.Address, tls *alsdata.TLSProperties) *alsdata.AccessLogCommon {
	cp := &alsdata.AccessLogCommon{
		DownstreamRemoteAddress:    down,
		DownstreamLocalAddress:     downLocal,
		UpstreamRemoteAddress:      up,
		UpstreamCluster:            cluster,
		StartTime:                  timestamppb.New(c.Start),
		TimeToLastDownstreamTxByte: durationpb.New(c.Duration),
		Duration:                   durationpb.New(c.Duration),
		TlsProperties:              tls,
		StreamId:                   fmt.Sprintf("%s-%d", c.Source.Name, c.Start.UnixNano()),
		ResponseFlags:              responseFlags(c.Flags),
	}
	return cp
}

func responseFlags(f string) *alsdata.ResponseFlags {
	switch f {
	case "":
		return nil
	case "UF":
		return &alsdata.ResponseFlags{UpstreamConnectionFailure: true}
	case "UO":
		return &alsdata.ResponseFlags{UpstreamOverflow: true}
	case "UH":
		return &alsdata.ResponseFlags{NoHealthyUpstream: true}
	}
	panic("loadtest: unsupported response flag " + f)
}

func mtls(c *Call) *alsdata.TLSProperties {
	if !c.Route.MTLS {
		return nil
	}
	san := func(uri string) *alsdata.TLSProperties_CertificateProperties {
		return &alsdata.TLSProperties_CertificateProperties{SubjectAltName: []*alsdata.TLSProperties_CertificateProperties_SubjectAltName{
			{San: &alsdata.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: uri}},
		}}
	}
	return &alsdata.TLSProperties{
		TlsVersion: alsdata.TLSProperties_TLSv1_3,
		// Istio's clients name the destination service in the SNI.
		TlsSniHostname:             fmt.Sprintf("outbound_.%d_._.%s", c.Dest.Port, c.Dest.FQDN()),
		LocalCertificateProperties: san(c.Dest.Principal()),
		PeerCertificateProperties:  san(c.Source.Principal()),
	}
}

func (c *Call) outboundCluster() string {
	return fmt.Sprintf("outbound|%d||%s", c.Dest.Port, c.Dest.FQDN())
}

func (c *Call) inboundCluster() string { return fmt.Sprintf("inbound|%d||", c.Dest.Port) }

// HTTPEntry returns the entry the source's sidecar (outbound=true) or the
// destination's sidecar reports for an HTTP or gRPC call.
func (c *Call) HTTPEntry(outbound bool) *alsdata.HTTPAccessLogEntry {
	req := &alsdata.HTTPRequestProperties{
		RequestMethod:       corev3.RequestMethod(corev3.RequestMethod_value[c.Method]),
		Scheme:              "http",
		Authority:           fmt.Sprintf("%s:%d", c.Dest.Service, c.Dest.Port),
		Path:                c.Path,
		UserAgent:           "Go-http-client/1.1",
		RequestId:           fmt.Sprintf("req-%d", c.Start.UnixNano()),
		RequestHeadersBytes: c.ReqHeaders,
		RequestBodyBytes:    c.ReqBody,
		RequestHeaders:      map[string]string{},
	}
	resp := &alsdata.HTTPResponseProperties{
		ResponseCode:         wrapperspb.UInt32(c.Code),
		ResponseHeadersBytes: c.RespHeaders,
		ResponseBodyBytes:    c.RespBody,
		ResponseHeaders:      map[string]string{},
	}
	if c.Protocol == "grpc" {
		req.RequestHeaders["content-type"] = "application/grpc"
		resp.ResponseTrailers = map[string]string{"grpc-status": c.GRPCStatus}
	}
	proto := alsdata.HTTPAccessLogEntry_HTTP11
	if c.Protocol == "grpc" {
		proto = alsdata.HTTPAccessLogEntry_HTTP2
	}
	e := &alsdata.HTTPAccessLogEntry{ProtocolVersion: proto, Request: req, Response: resp}
	if outbound {
		// The destination's sidecar returns its metadata in the response.
		resp.ResponseHeaders["x-envoy-peer-metadata"] = PeerMetadata(c.Dest)
		e.CommonProperties = common(c, c.outboundCluster(),
			socket(c.Source.IP, 40000), nil, socket(c.Dest.IP, c.Dest.Port), nil)
	} else {
		req.RequestHeaders["x-envoy-peer-metadata"] = PeerMetadata(c.Source)
		e.CommonProperties = common(c, c.inboundCluster(),
			socket(c.Source.IP, 40000), socket(c.Dest.IP, c.Dest.Port), socket("127.0.0.6", c.Dest.Port), mtls(c))
	}
	return e
}

// TCPEntry returns the entry a sidecar reports for a TCP connection, logged once at
// its end.
func (c *Call) TCPEntry(outbound bool) *alsdata.TCPAccessLogEntry {
	e := &alsdata.TCPAccessLogEntry{
		ConnectionProperties: &alsdata.ConnectionProperties{ReceivedBytes: c.Received, SentBytes: c.Sent},
	}
	if outbound {
		e.CommonProperties = common(c, c.outboundCluster(),
			socket(c.Source.IP, 40000), nil, socket(c.Dest.IP, c.Dest.Port), nil)
	} else {
		e.CommonProperties = common(c, c.inboundCluster(),
			socket(c.Source.IP, 40000), socket(c.Dest.IP, c.Dest.Port), socket("127.0.0.6", c.Dest.Port), mtls(c))
	}
	return e
}
