package loadtest

import (
	"fmt"
	"time"

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
		Id:       w.NodeID(),
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

// common fills AccessLogCommon as Envoy does under Istio's access-log config: every
// timing, the wire byte counts, the route, custom tags and dynamic metadata. The
// decoders being compared must both carry all of it, as they would in production.
func common(c *Call, cluster string, down, downLocal, up *corev3.Address, tls *alsdata.TLSProperties) *alsdata.AccessLogCommon {
	d := c.Duration
	at := func(f float64) *durationpb.Duration { return durationpb.New(time.Duration(float64(d) * f)) }
	md, err := structpb.NewStruct(map[string]any{"principal": c.Source.Principal(), "peer": c.Source.Name, "policy": "ALLOW"})
	if err != nil {
		panic(err) // plain strings always encode
	}
	return &alsdata.AccessLogCommon{
		SampleRate:                    1,
		DownstreamRemoteAddress:       down,
		DownstreamLocalAddress:        downLocal,
		DownstreamDirectRemoteAddress: down,
		UpstreamRemoteAddress:         up,
		UpstreamLocalAddress:          socket(c.Source.IP, 51000),
		UpstreamCluster:               cluster,
		StartTime:                     timestamppb.New(c.Start),
		TimeToLastRxByte:              at(0.01),
		TimeToFirstUpstreamTxByte:     at(0.02),
		TimeToLastUpstreamTxByte:      at(0.03),
		TimeToFirstUpstreamRxByte:     at(0.9),
		TimeToLastUpstreamRxByte:      at(0.95),
		TimeToFirstDownstreamTxByte:   at(0.91),
		TimeToLastDownstreamTxByte:    durationpb.New(d),
		Duration:                      durationpb.New(d),
		TlsProperties:                 tls,
		StreamId:                      fmt.Sprintf("%s-%d", c.Source.Name, c.Start.UnixNano()),
		ResponseFlags:                 responseFlags(c.Flags),
		RouteName:                     "default",
		UpstreamRequestAttemptCount:   1,
		AccessLogType:                 alsdata.AccessLogType_DownstreamEnd,
		DownstreamWireBytesSent:       c.RespHeaders + c.RespBody,
		DownstreamWireBytesReceived:   c.ReqHeaders + c.ReqBody,
		UpstreamWireBytesSent:         c.ReqHeaders + c.ReqBody,
		UpstreamWireBytesReceived:     c.RespHeaders + c.RespBody,
		CustomTags:                    map[string]string{"mesh": "cluster.local", "zone": "us-east1-b"},
		Metadata:                      &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.rbac": md}},
	}
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
	trace := fmt.Sprintf("%016x%016x", c.Start.UnixNano(), uint64(c.Source.Port)*7919)
	reqID := fmt.Sprintf("%08x-%04x-4%03x-a%03x-%012x", c.Start.Unix(), c.Start.Nanosecond()&0xffff, c.Dest.Port&0xfff, c.Source.Port&0xfff, c.Start.UnixNano()&0xffffffffffff)
	req := &alsdata.HTTPRequestProperties{
		RequestMethod:       corev3.RequestMethod(corev3.RequestMethod_value[c.Method]),
		Scheme:              "http",
		Authority:           fmt.Sprintf("%s:%d", c.Dest.Service, c.Dest.Port),
		Port:                wrapperspb.UInt32(c.Dest.Port),
		Path:                c.Path,
		UserAgent:           "Go-http-client/1.1",
		ForwardedFor:        c.Source.IP,
		RequestId:           reqID,
		RequestHeadersBytes: c.ReqHeaders,
		RequestBodyBytes:    c.ReqBody,
		RequestHeaders: map[string]string{
			"x-request-id":             reqID,
			"traceparent":              "00-" + trace + "-" + trace[:16] + "-01",
			"x-b3-traceid":             trace,
			"x-b3-spanid":              trace[16:],
			"x-b3-sampled":             "1",
			"x-envoy-peer-metadata-id": c.Source.NodeID(),
			"accept":                   "application/json",
		},
	}
	resp := &alsdata.HTTPResponseProperties{
		ResponseCode:         wrapperspb.UInt32(c.Code),
		ResponseCodeDetails:  "via_upstream",
		ResponseHeadersBytes: c.RespHeaders,
		ResponseBodyBytes:    c.RespBody,
		ResponseHeaders: map[string]string{
			"content-type":                  "application/json",
			"server":                        "istio-envoy",
			"x-envoy-upstream-service-time": fmt.Sprint(c.Duration.Milliseconds()),
			"x-envoy-peer-metadata-id":      c.Dest.NodeID(),
		},
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
