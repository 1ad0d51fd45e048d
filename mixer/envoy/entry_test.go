package envoy_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/envoy"
	"github.com/sluicemesh/sluice/mixer/registry"
)

func node(id string, md map[string]any) *envoy.Node {
	st, err := structpb.NewStruct(md)
	if err != nil {
		panic(err) // test metadata is always encodable
	}
	return envoy.NodeFrom(&corev3.Node{Id: id, Metadata: st}, "als", "cluster.local")
}

func productpageNode() *envoy.Node {
	return node("sidecar~10.0.0.1~productpage-v1-abc-def.shop~shop.svc.cluster.local", map[string]any{
		"NAME": "productpage-v1-abc-def", "NAMESPACE": "shop", "WORKLOAD_NAME": "productpage-v1",
		"CLUSTER_ID": "east", "LABELS": map[string]any{"app": "productpage", "version": "v1"},
	})
}

func reviewsNode() *envoy.Node {
	return node("sidecar~10.0.0.2~reviews-v2-abc-def.shop~shop.svc.cluster.local", map[string]any{
		"NAME": "reviews-v2-abc-def", "NAMESPACE": "shop", "WORKLOAD_NAME": "reviews-v2",
		"CLUSTER_ID": "east",
		"LABELS": map[string]any{"app": "reviews", "version": "v2",
			"service.istio.io/canonical-name": "reviews-canon", "service.istio.io/canonical-revision": "r2"},
	})
}

func socket(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func san(uri string) *alsdata.TLSProperties_CertificateProperties {
	return &alsdata.TLSProperties_CertificateProperties{SubjectAltName: []*alsdata.TLSProperties_CertificateProperties_SubjectAltName{
		{San: &alsdata.TLSProperties_CertificateProperties_SubjectAltName_Dns{Dns: "ignored.example"}},
		{San: &alsdata.TLSProperties_CertificateProperties_SubjectAltName_Uri{Uri: uri}},
	}}
}

func testRegistry() *registry.Snapshot {
	r := registry.New("cluster.local")
	r.SetSource("test", []*registry.Workload{
		{Name: "ratings-v1", Namespace: "shop", Instance: "ratings-v1-x", Address: netip.MustParseAddr("10.0.0.3"),
			Labels: map[string]string{"app": "ratings", "version": "v1", "topology.istio.io/cluster": "west"}, ServiceAccount: "ratings"},
		{Name: "productpage-v1", Namespace: "shop", Instance: "productpage-v1-abc-def", Address: netip.MustParseAddr("10.0.0.1"),
			Labels: map[string]string{"app": "productpage", "version": "v1"}},
	})
	return r.Snapshot()
}

func peerOf(t *testing.T, n *envoy.Node) string {
	t.Helper()
	h, err := envoy.EncodePeerMetadata(n.Workload)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func decodeHTTP(t *testing.T, e *alsdata.HTTPAccessLogEntry, n *envoy.Node) (*attribute.Bag, *envoy.Decoder) {
	t.Helper()
	raw, err := proto.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	d := envoy.NewDecoder("cluster.local")
	d.Begin(testRegistry(), time.Unix(1700000000, 0))
	var bag attribute.Bag
	if err := d.DecodeHTTP(raw, n, &bag); err != nil {
		t.Fatalf("DecodeHTTP: %v", err)
	}
	return &bag, d
}

func checkStrings(t *testing.T, bag *attribute.Bag, want map[attribute.ID]string) {
	t.Helper()
	for id, w := range want {
		got, ok := bag.String(id)
		if !ok {
			t.Errorf("%s is not set, want %q", id.Name(), w)
			continue
		}
		if got != w {
			t.Errorf("%s = %q, want %q", id.Name(), got, w)
		}
	}
}

func TestDecodeHTTPOutbound(t *testing.T) {
	pp, rv := productpageNode(), reviewsNode()
	e := &alsdata.HTTPAccessLogEntry{
		ProtocolVersion: alsdata.HTTPAccessLogEntry_HTTP11,
		CommonProperties: &alsdata.AccessLogCommon{
			UpstreamCluster:            "outbound|9080|v2|reviews.shop.svc.cluster.local",
			DownstreamRemoteAddress:    socket("10.0.0.1", 50000),
			UpstreamRemoteAddress:      socket("10.0.0.2", 9080),
			StartTime:                  timestamppb.New(time.Unix(1700000000, 0)),
			TimeToLastDownstreamTxByte: durationpb.New(12500 * time.Microsecond),
			ResponseFlags:              &alsdata.ResponseFlags{UpstreamConnectionFailure: true, NoHealthyUpstream: true},
		},
		Request: &alsdata.HTTPRequestProperties{
			RequestMethod: corev3.RequestMethod_GET, Authority: "reviews:9080", Path: "/reviews/1?x=y",
			RequestHeadersBytes: 100, RequestBodyBytes: 20,
		},
		Response: &alsdata.HTTPResponseProperties{
			ResponseCode: wrapperspb.UInt32(503), ResponseHeadersBytes: 50, ResponseBodyBytes: 7,
			ResponseHeaders: map[string]string{"x-envoy-peer-metadata": peerOf(t, rv)},
		},
	}
	bag, _ := decodeHTTP(t, e, pp)
	checkStrings(t, bag, map[attribute.ID]string{
		attribute.ContextReporterKind:          "outbound",
		attribute.ContextReporterRole:          "source",
		attribute.ContextProtocol:              "http",
		attribute.SourceWorkloadName:           "productpage-v1",
		attribute.SourceWorkloadNamespace:      "shop",
		attribute.SourceApp:                    "productpage",
		attribute.SourceVersion:                "v1",
		attribute.SourceCanonicalService:       "productpage",
		attribute.SourceCanonicalRevision:      "v1",
		attribute.SourceClusterID:              "east",
		attribute.SourcePrincipal:              "unknown",
		attribute.DestinationWorkloadName:      "reviews-v2",
		attribute.DestinationApp:               "reviews",
		attribute.DestinationCanonicalService:  "reviews-canon",
		attribute.DestinationCanonicalRevision: "r2",
		attribute.DestinationPrincipal:         "unknown",
		attribute.DestinationServiceHost:       "reviews.shop.svc.cluster.local",
		attribute.DestinationServiceName:       "reviews",
		attribute.DestinationServiceNamespace:  "shop",
		attribute.DestinationSubset:            "v2",
		attribute.ConnectionSecurityPolicy:     "unknown",
		attribute.ResponseFlags:                "UH,UF",
		attribute.RequestMethod:                "GET",
		attribute.RequestPath:                  "/reviews/1?x=y",
		attribute.RequestURLPath:               "/reviews/1",
		attribute.RequestHTTPVersion:           "HTTP/1.1",
		attribute.ResponseGRPCStatus:           "",
	})
	ints := map[attribute.ID]int64{
		attribute.ResponseCode:      503,
		attribute.RequestTotalSize:  120,
		attribute.RequestSize:       20,
		attribute.ResponseTotalSize: 57,
		attribute.ResponseDuration:  int64(12500 * time.Microsecond),
	}
	for id, w := range ints {
		if got, _ := bag.Int(id); got != w {
			t.Errorf("%s = %d, want %d", id.Name(), got, w)
		}
	}
}

func TestDecodeHTTPInbound(t *testing.T) {
	pp, rv := productpageNode(), reviewsNode()
	tests := []struct {
		name string
		e    *alsdata.HTTPAccessLogEntry
		want map[attribute.ID]string
	}{{
		name: "mTLS with peer metadata, short authority",
		e: &alsdata.HTTPAccessLogEntry{
			CommonProperties: &alsdata.AccessLogCommon{
				UpstreamCluster:         "inbound|9080||",
				DownstreamRemoteAddress: socket("10.0.0.1", 50000),
				DownstreamLocalAddress:  socket("10.0.0.2", 9080),
				TlsProperties: &alsdata.TLSProperties{
					TlsVersion:                 alsdata.TLSProperties_TLSv1_3,
					PeerCertificateProperties:  san("spiffe://cluster.local/ns/shop/sa/productpage"),
					LocalCertificateProperties: san("spiffe://cluster.local/ns/shop/sa/reviews"),
				},
			},
			Request: &alsdata.HTTPRequestProperties{Authority: "reviews:9080", Path: "/",
				RequestHeaders: map[string]string{"x-envoy-peer-metadata": peerOf(t, pp)}},
			Response: &alsdata.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200)},
		},
		want: map[attribute.ID]string{
			attribute.ContextReporterRole:         "destination",
			attribute.SourceWorkloadName:          "productpage-v1",
			attribute.SourcePrincipal:             "spiffe://cluster.local/ns/shop/sa/productpage",
			attribute.DestinationWorkloadName:     "reviews-v2",
			attribute.DestinationPrincipal:        "spiffe://cluster.local/ns/shop/sa/reviews",
			attribute.DestinationServiceHost:      "reviews.shop.svc.cluster.local",
			attribute.DestinationServiceName:      "reviews",
			attribute.DestinationServiceNamespace: "shop",
			attribute.ConnectionSecurityPolicy:    "mutual_tls",
			attribute.ConnectionTLSVersion:        "TLSv1.3",
			attribute.ResponseFlags:               "-",
		},
	}, {
		name: "plain text, source from the registry, old cluster naming",
		e: &alsdata.HTTPAccessLogEntry{
			CommonProperties: &alsdata.AccessLogCommon{
				UpstreamCluster:         "inbound|9080|http|reviews.shop.svc.cluster.local",
				DownstreamRemoteAddress: socket("10.0.0.3", 50000),
			},
			Request:  &alsdata.HTTPRequestProperties{Authority: "ignored:9080"},
			Response: &alsdata.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200)},
		},
		want: map[attribute.ID]string{
			attribute.SourceWorkloadName:       "ratings-v1",
			attribute.SourceClusterID:          "west",
			attribute.SourcePrincipal:          "unknown",
			attribute.DestinationServiceHost:   "reviews.shop.svc.cluster.local",
			attribute.ConnectionSecurityPolicy: "none",
		},
	}, {
		name: "unknown peer: every source field is unknown",
		e: &alsdata.HTTPAccessLogEntry{
			CommonProperties: &alsdata.AccessLogCommon{UpstreamCluster: "inbound|9080||", DownstreamRemoteAddress: socket("192.168.9.9", 1)},
			Request:          &alsdata.HTTPRequestProperties{Authority: "reviews.other.svc.cluster.local:9080"},
		},
		want: map[attribute.ID]string{
			attribute.SourceWorkloadName:          "unknown",
			attribute.SourceWorkloadNamespace:     "unknown",
			attribute.SourceApp:                   "unknown",
			attribute.SourceVersion:               "unknown",
			attribute.SourceCanonicalService:      "unknown",
			attribute.SourceCanonicalRevision:     "unknown",
			attribute.SourceClusterID:             "unknown",
			attribute.DestinationServiceHost:      "reviews.other.svc.cluster.local",
			attribute.DestinationServiceNamespace: "other",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bag, _ := decodeHTTP(t, tt.e, rv)
			checkStrings(t, bag, tt.want)
		})
	}
}

func TestDecodeHTTPProtocolAndCluster(t *testing.T) {
	pp := productpageNode()
	tests := []struct {
		name string
		e    *alsdata.HTTPAccessLogEntry
		want map[attribute.ID]string
	}{{
		name: "gRPC from content-type and trailer",
		e: &alsdata.HTTPAccessLogEntry{
			CommonProperties: &alsdata.AccessLogCommon{UpstreamCluster: "outbound|7070||recs.shop.svc.cluster.local"},
			Request:          &alsdata.HTTPRequestProperties{RequestHeaders: map[string]string{"content-type": "application/grpc+proto"}},
			Response: &alsdata.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200),
				ResponseTrailers: map[string]string{"grpc-status": "14"}},
		},
		want: map[attribute.ID]string{attribute.ContextProtocol: "grpc", attribute.ResponseGRPCStatus: "14"},
	}, {
		name: "gRPC trailers-only response",
		e: &alsdata.HTTPAccessLogEntry{
			CommonProperties: &alsdata.AccessLogCommon{UpstreamCluster: "outbound|7070||recs.shop.svc.cluster.local"},
			Response: &alsdata.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200),
				ResponseHeaders: map[string]string{"grpc-status": "5"}},
		},
		want: map[attribute.ID]string{attribute.ContextProtocol: "grpc", attribute.ResponseGRPCStatus: "5"},
	}, {
		name: "passthrough",
		e: &alsdata.HTTPAccessLogEntry{
			CommonProperties: &alsdata.AccessLogCommon{UpstreamCluster: "PassthroughCluster", UpstreamRemoteAddress: socket("8.8.8.8", 443)},
			Request:          &alsdata.HTTPRequestProperties{Authority: "api.example.com"},
		},
		want: map[attribute.ID]string{
			attribute.ContextReporterRole:         "source",
			attribute.DestinationServiceHost:      "api.example.com",
			attribute.DestinationServiceName:      "PassthroughCluster",
			attribute.DestinationServiceNamespace: "unknown",
			attribute.DestinationWorkloadName:     "unknown",
		},
	}, {
		name: "non-Istio cluster name",
		e: &alsdata.HTTPAccessLogEntry{
			CommonProperties: &alsdata.AccessLogCommon{UpstreamCluster: "backend"},
			Request:          &alsdata.HTTPRequestProperties{Authority: "backend.internal:80"},
		},
		want: map[attribute.ID]string{
			attribute.ContextReporterRole:    "source",
			attribute.DestinationServiceHost: "backend.internal",
			attribute.DestinationServiceName: "backend.internal",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bag, _ := decodeHTTP(t, tt.e, pp)
			checkStrings(t, bag, tt.want)
		})
	}
}

func TestDecodeUnknownEnum(t *testing.T) {
	e := &alsdata.HTTPAccessLogEntry{
		ProtocolVersion: alsdata.HTTPAccessLogEntry_HTTPVersion(77),
		Request:         &alsdata.HTTPRequestProperties{RequestMethod: corev3.RequestMethod(42)},
	}
	bag, d := decodeHTTP(t, e, productpageNode())
	if bag.Has(attribute.RequestMethod) || bag.Has(attribute.RequestHTTPVersion) {
		t.Error("unknown enum values must leave the attribute unset")
	}
	if d.Stats.UnknownEnum != 2 {
		t.Errorf("UnknownEnum = %d, want 2", d.Stats.UnknownEnum)
	}
}

func TestDecodeMalformed(t *testing.T) {
	d := envoy.NewDecoder("cluster.local")
	d.Begin(testRegistry(), time.Now())
	var bag attribute.Bag
	for _, raw := range [][]byte{
		{0x0a, 0x05, 0x01},             // length beyond the end
		{0x0a, 0x02, 0x7a, 0x09},       // common properties with a truncated field
		{0xff, 0xff, 0xff, 0xff, 0xff}, // bad tag
	} {
		if err := d.DecodeHTTP(raw, productpageNode(), &bag); !errors.Is(err, envoy.ErrMalformed) {
			t.Errorf("DecodeHTTP(%x) = %v, want ErrMalformed", raw, err)
		}
	}
}

func TestDecodeTCPEvents(t *testing.T) {
	pp := productpageNode()
	d := envoy.NewDecoder("cluster.local")
	d.Begin(testRegistry(), time.Now())
	entry := func(typ alsdata.AccessLogType, id string, sent, recv uint64) []byte {
		raw, err := proto.Marshal(&alsdata.TCPAccessLogEntry{
			CommonProperties: &alsdata.AccessLogCommon{
				UpstreamCluster: "outbound|27017||mongo.shop.svc.cluster.local", UpstreamRemoteAddress: socket("10.0.0.3", 27017),
				StreamId: id, AccessLogType: typ,
			},
			ConnectionProperties: &alsdata.ConnectionProperties{SentBytes: sent, ReceivedBytes: recv},
		})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	steps := []struct {
		typ         alsdata.AccessLogType
		opensSeen   bool
		id          string
		sent, recv  uint64
		event       string
		dSent, dRcv int64
	}{
		{alsdata.AccessLogType_NotSet, false, "a", 100, 10, "complete", 100, 10},
		{alsdata.AccessLogType_TcpConnectionEnd, false, "b", 50, 5, "complete", 50, 5},
		{alsdata.AccessLogType_TcpUpstreamConnected, true, "c", 0, 0, "open", 0, 0},
		{alsdata.AccessLogType_TcpPeriodic, true, "c", 300, 30, "continue", 300, 30},
		{alsdata.AccessLogType_TcpPeriodic, true, "c", 500, 70, "continue", 200, 40},
		{alsdata.AccessLogType_TcpConnectionEnd, true, "c", 600, 71, "close", 100, 1},
	}
	for i, s := range steps {
		var bag attribute.Bag
		if err := d.DecodeTCP(entry(s.typ, s.id, s.sent, s.recv), pp, s.opensSeen, &bag); err != nil {
			t.Fatal(err)
		}
		checkStrings(t, &bag, map[attribute.ID]string{
			attribute.ContextProtocol: "tcp", attribute.ConnectionEvent: s.event,
			attribute.DestinationWorkloadName: "ratings-v1",
		})
		if got, _ := bag.Int(attribute.ConnectionSentBytes); got != s.dSent {
			t.Errorf("step %d: sent = %d, want %d", i, got, s.dSent)
		}
		if got, _ := bag.Int(attribute.ConnectionReceivedBytes); got != s.dRcv {
			t.Errorf("step %d: received = %d, want %d", i, got, s.dRcv)
		}
	}
}

func TestWorkloadFromPod(t *testing.T) {
	for pod, want := range map[string]string{
		"reviews-v2-5d8f9c7b6-x2k4q": "reviews-v2",
		"ratings":                    "ratings",
		"a-b":                        "a-b",
	} {
		if got := envoy.WorkloadFromPod(pod); got != want {
			t.Errorf("WorkloadFromPod(%q) = %q, want %q", pod, got, want)
		}
	}
}

func TestNodeFromIDOnly(t *testing.T) {
	n := envoy.NodeFrom(&corev3.Node{Id: "sidecar~10.1.1.1~details-v1-6f7b9-zz8k.books~books.svc.cluster.local"}, "", "cluster.local")
	w := n.Workload
	if w.Name != "details-v1" || w.Namespace != "books" || w.Instance != "details-v1-6f7b9-zz8k" {
		t.Errorf("workload from node ID = %+v", w)
	}
	if w.App != "unknown" || w.CanonicalService != "details-v1" || w.CanonicalRevision != "latest" {
		t.Errorf("derived identity = app %q canonical %q/%q", w.App, w.CanonicalService, w.CanonicalRevision)
	}
}

// TestDecodeMergesRepeatedMessages: concatenated encodings merge, as the standard
// decoder merges them (fields of a repeated message field combine, the last wins).
func TestDecodeMergesRepeatedMessages(t *testing.T) {
	a, _ := proto.Marshal(&alsdata.HTTPAccessLogEntry{
		Request:  &alsdata.HTTPRequestProperties{Authority: "a:1", RequestHeadersBytes: 10, RequestBodyBytes: 5},
		Response: &alsdata.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(404)},
	})
	b, _ := proto.Marshal(&alsdata.HTTPAccessLogEntry{
		Request: &alsdata.HTTPRequestProperties{Path: "/x", RequestBodyBytes: 7},
	})
	d := envoy.NewDecoder("cluster.local")
	d.Begin(testRegistry(), time.Now())
	var bag attribute.Bag
	if err := d.DecodeHTTP(append(a, b...), productpageNode(), &bag); err != nil {
		t.Fatal(err)
	}
	checkStrings(t, &bag, map[attribute.ID]string{attribute.RequestHost: "a:1", attribute.RequestPath: "/x"})
	if got, _ := bag.Int(attribute.RequestTotalSize); got != 17 {
		t.Errorf("request size %d, want 17 (headers of the first, body of the second)", got)
	}
	if got, _ := bag.Int(attribute.ResponseCode); got != 404 {
		t.Errorf("response code %d, want 404", got)
	}
}

func TestDecodeTCPServiceFromSNI(t *testing.T) {
	raw, _ := proto.Marshal(&alsdata.TCPAccessLogEntry{CommonProperties: &alsdata.AccessLogCommon{
		UpstreamCluster: "inbound|27017||",
		TlsProperties: &alsdata.TLSProperties{
			TlsSniHostname:            "outbound_.27017_.v1_.mongo.db.svc.cluster.local",
			PeerCertificateProperties: san("spiffe://cluster.local/ns/shop/sa/ratings"),
		},
	}})
	d := envoy.NewDecoder("cluster.local")
	d.Begin(testRegistry(), time.Now())
	var bag attribute.Bag
	if err := d.DecodeTCP(raw, reviewsNode(), false, &bag); err != nil {
		t.Fatal(err)
	}
	checkStrings(t, &bag, map[attribute.ID]string{
		attribute.DestinationServiceHost: "mongo.db.svc.cluster.local", attribute.DestinationServiceNamespace: "db",
		attribute.ConnectionSecurityPolicy: "mutual_tls", attribute.SourcePrincipal: "spiffe://cluster.local/ns/shop/sa/ratings",
	})
}
