package envoy_test

import (
	"bytes"
	"fmt"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/envoy"
	"github.com/sluicemesh/sluice/mixer/registry"
)

// sidecarCheck is an ext_authz request as an Envoy sidecar sends it.
func sidecarCheck(i int) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{
			Address:   envoy.Address("10.0.0.1", 40000+uint32(i)),
			Principal: "spiffe://cluster.local/ns/shop/sa/productpage",
		},
		Destination: &authv3.AttributeContext_Peer{
			Address:   envoy.Address("10.0.0.3", 9080),
			Principal: "spiffe://cluster.local/ns/shop/sa/ratings",
		},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(time.Unix(1764900000, 123456789)),
			Http: &authv3.AttributeContext_HttpRequest{
				Id: strconv.Itoa(i), Method: "GET", Path: "/ratings/7?full=1", Host: "ratings:9080",
				Scheme: "http", Protocol: "HTTP/1.1", Size: 120,
				Headers: map[string]string{
					":authority": "ratings:9080", ":method": "GET", ":path": "/ratings/7?full=1",
					"x-request-id": strconv.Itoa(i), "user-agent": "curl/8.5", "referer": "http://productpage/",
					"accept": "application/json", "x-forwarded-proto": "http", "x-user": "jason",
				},
			},
		},
		ContextExtensions: map[string]string{"route": "ratings-v1"},
		TlsSession:        &authv3.AttributeContext_TLSSession{Sni: "outbound_.9080_._.ratings.shop.svc.cluster.local"},
	}}
}

// checkCases are requests and encodings whose decoding must not depend on the path
// they take: generated messages, and encodings no generator writes but protobuf
// defines (merged messages, switched oneofs, repeated map keys, unexpected types).
func checkCases(t testing.TB) map[string][]byte {
	t.Helper()
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	unknownPeers := sidecarCheck(1)
	unknownPeers.Attributes.Source = &authv3.AttributeContext_Peer{
		Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/sock"}}},
		Labels:  map[string]string{"app": "legacy", "version": "v0"},
	}
	unknownPeers.Attributes.Destination = &authv3.AttributeContext_Peer{
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "192.168.9.9", PortSpecifier: &corev3.SocketAddress_NamedPort{NamedPort: "http"}}}},
		Labels:      map[string]string{"app": "billing", "service.istio.io/canonical-name": "billing"},
		Certificate: "-----BEGIN CERTIFICATE-----",
	}
	headerMap := sidecarCheck(2)
	headerMap.Attributes.Request.Http.Headers = nil
	headerMap.Attributes.Request.Http.Size = -1
	headerMap.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: "Content-Type", Value: "application/grpc+proto"},
		{Key: "X-Token", RawValue: []byte("raw-token")},
		{Key: "x-token", Value: "joined after the first, as Envoy joins a repeated header"},
		{Key: "User-Agent", Value: "grpc-go/1.80"},
		{Key: "x-debug", Value: "1"},
		{Key: "x-empty"},
		{Key: "x-debug"},
		{Key: "X-Debug", RawValue: []byte("0")},
	}}
	manyHeaders := sidecarCheck(3)
	for i := range 60 {
		manyHeaders.Attributes.Request.Http.Headers[fmt.Sprintf("x-h%02d", i)] = strings.Repeat("v", i)
	}
	withPeer := sidecarCheck(4)
	meta, err := envoy.EncodePeerMetadata(&registry.Workload{Name: "reviews-v2", Namespace: "shop", Instance: "reviews-v2-abc",
		Labels: map[string]string{"app": "reviews", "version": "v2"}})
	if err != nil {
		t.Fatal(err)
	}
	withPeer.Attributes.Request.Http.Headers["x-envoy-peer-metadata"] = meta

	// Hand-written encodings.
	s := func(num protowire.Number, v string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), v)
	}
	m := func(num protowire.Number, fields ...[]byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), bytes.Join(fields, nil))
	}
	v := func(num protowire.Number, x uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), x)
	}
	kv := func(num protowire.Number, k, val string) []byte { return m(num, s(1, k), s(2, val)) }
	cat := func(fields ...[]byte) []byte { return bytes.Join(fields, nil) }
	http := func(fields ...[]byte) []byte { return m(1, m(4, m(2, fields...))) } // attributes.request.http
	socket := func(fields ...[]byte) []byte { return m(1, fields...) }

	return map[string][]byte{
		"sidecar":       marshal(sidecarCheck(0)),
		"unknown peers": marshal(unknownPeers),
		"header map":    marshal(headerMap),
		"many headers":  marshal(manyHeaders),
		"peer metadata": marshal(withPeer),
		"no attributes": nil,
		"empty attrs":   m(1),
		"empty http":    http(),
		"attributes merged": cat(
			http(s(2, "GET"), kv(3, "a", "1"), s(5, "one.shop")),
			http(s(4, "/x?y"), kv(3, "a", "2"), kv(3, "b", "3")),
			m(1, m(10, s(1, "ext"))), m(1, kv(10, "k", "v"))),
		"time merged":         cat(m(1, m(4, m(1, v(1, 5), v(2, 7)))), m(1, m(4, m(1, v(2, 9))))),
		"time negative nanos": m(1, m(4, m(1, v(1, 1<<40), v(2, uint64(0xffffffffffffffff))))),
		"socket then pipe":    m(1, m(2, m(1, socket(s(2, "10.0.0.3"), v(3, 80))), m(1, m(2, s(1, "/p"))))),
		"pipe then socket":    m(1, m(2, m(1, m(2, s(1, "/p")), socket(s(2, "10.0.0.3"))))),
		"socket merged":       m(1, m(2, m(1, socket(s(2, "10.0.0.3"))), m(1, socket(v(3, 9080))))),
		"port then name":      m(1, m(1, m(1, socket(s(2, "10.0.0.1"), v(3, 80), s(4, "http"))))),
		"name then port":      m(1, m(1, m(1, socket(s(2, "10.0.0.1"), s(4, "http"), v(3, 81))))),
		"port overflows":      m(1, m(1, m(1, socket(s(2, "10.0.0.1"), v(3, 1<<33|443))))),
		"wrong wire types":    cat(http(v(2, 7), s(9, "12"), s(4, "/ok")), m(1, v(1, 3)), m(1, m(2, v(4, 1)))),
		"map entry partial":   http(m(3, s(2, "no key")), m(3, s(1, "no-value")), m(3, s(1, "k"), s(1, "k2"), s(2, "v"))),
		"principal only":      m(1, m(1, s(4, "spiffe://cluster.local/ns/a/sa/b"))),
		"unknown fields":      cat(v(99, 1), m(1, v(77, 2), m(2, v(55, 3)), m(11, s(1, "meta")))),
		"bad utf8 path":       http(s(4, "/\xff")),
		"bad utf8 header":     http(kv(3, "k", "\xc3")),
		"bad utf8 unread":     http(s(11, "\xff body")),
		"truncated":           http(s(4, "/path"))[:6],
		"size huge":           http(v(9, 1<<63)),
	}
}

// TestCheckFieldsAgree: filled from the wire or from the message proto.Unmarshal
// builds, the fields decode to the same bag, and the wire refuses only what
// proto.Unmarshal refuses.
func TestCheckFieldsAgree(t *testing.T) {
	dec := envoy.NewCheckDecoder(checkRegistry())
	for name, data := range checkCases(t) {
		t.Run(name, func(t *testing.T) { agree(t, dec, data) })
	}
}

// TestCheckFieldsRefuse: the wire path refuses what protobuf refuses in the fields
// it reads.
func TestCheckFieldsRefuse(t *testing.T) {
	cases := checkCases(t)
	for _, name := range []string{"bad utf8 path", "bad utf8 header", "truncated"} {
		var f envoy.CheckFields
		if err := f.Unmarshal(cases[name]); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func checkRegistry() *registry.Registry {
	r := registry.New("cluster.local")
	r.SetSource("test", testRegistry().Workloads())
	return r
}

// agree decodes data both ways and compares.
func agree(t *testing.T, dec *envoy.CheckDecoder, data []byte) {
	t.Helper()
	now := time.Unix(1764900000, 0)
	var req authv3.CheckRequest
	var std, wire envoy.CheckFields
	if !readBoth(t, data, &req, wire.Unmarshal) {
		return
	}
	std.SetRequest(&req)
	if std.HasAttributes() != wire.HasAttributes() || std.NumHeaders() != wire.NumHeaders() {
		t.Fatalf("attributes %v/%v, headers %d/%d (proto/wire)", std.HasAttributes(), wire.HasAttributes(), std.NumHeaders(), wire.NumHeaders())
	}
	var a, b attribute.Bag
	dec.Decode(&std, now, &a)
	dec.Decode(&wire, now, &b)
	if got, want := bagValues(&b), bagValues(&a); !reflect.DeepEqual(got, want) {
		t.Fatalf("wire decoding differs:\n got %v\nwant %v", got, want)
	}
}

// readBoth reads data with proto.Unmarshal into msg and with the wire path, and
// reports whether both accepted it. Where protobuf accepts data the wire path must
// too; where protobuf refuses it, the wire path may accept or refuse (it skips
// fields no check reads).
func readBoth(t *testing.T, data []byte, msg proto.Message, wire func([]byte) error) bool {
	t.Helper()
	stdErr := proto.Unmarshal(data, msg)
	wireErr := wire(data)
	if stdErr == nil && wireErr != nil {
		t.Fatalf("proto.Unmarshal accepts, the wire refuses: %v", wireErr)
	}
	return stdErr == nil && wireErr == nil
}

// bagValues is a bag as comparable Go values, maps as Go maps.
func bagValues(b *attribute.Bag) map[string]any {
	out := map[string]any{}
	b.Range(func(id attribute.ID, v any) bool {
		if m, ok := v.(attribute.StringMap); ok {
			if m.Len() != len(m.Clone()) {
				out[id.Name()+" (repeated keys)"] = m.Len()
			}
			v = m.Clone()
		}
		out[id.Name()] = v
		return true
	})
	return out
}

// FuzzCheckFields: whatever the bytes, the wire path neither panics nor disagrees
// with proto.Unmarshal where that accepts them.
func FuzzCheckFields(f *testing.F) {
	for _, data := range checkCases(f) {
		f.Add(data)
	}
	dec := envoy.NewCheckDecoder(checkRegistry())
	f.Fuzz(func(t *testing.T, data []byte) { agree(t, dec, data) })
}

// BenchmarkCheckDecode compares the two ways to a check's bag: through the message
// grpc-go would build, and straight from the wire.
func BenchmarkCheckDecode(b *testing.B) {
	data, err := proto.Marshal(sidecarCheck(1))
	if err != nil {
		b.Fatal(err)
	}
	dec := envoy.NewCheckDecoder(checkRegistry())
	now := time.Now()
	b.Run("proto", func(b *testing.B) {
		var f envoy.CheckFields
		var bag attribute.Bag
		b.ReportAllocs()
		for b.Loop() {
			var req authv3.CheckRequest
			if err := proto.Unmarshal(data, &req); err != nil {
				b.Fatal(err)
			}
			f.SetRequest(&req)
			bag.Reset()
			dec.Decode(&f, now, &bag)
		}
	})
	b.Run("wire", func(b *testing.B) {
		var f envoy.CheckFields
		var bag attribute.Bag
		b.ReportAllocs()
		for b.Loop() {
			if err := f.Unmarshal(data); err != nil {
				b.Fatal(err)
			}
			bag.Reset()
			dec.Decode(&f, now, &bag)
		}
	})
}

// TestCheckPeerIPUnmapped: an IPv4 peer seen on a dual-stack socket
// (::ffff:10.0.0.1) is source.ip 10.0.0.1, which CEL's ip() parses; IPv6 stays.
func TestCheckPeerIPUnmapped(t *testing.T) {
	dec := envoy.NewCheckDecoder(checkRegistry())
	for _, tc := range []struct{ sent, want string }{
		{"::ffff:10.0.0.1", "10.0.0.1"},
		{"10.0.0.1", "10.0.0.1"},
		{"2001:db8::1", "2001:db8::1"},
	} {
		req := sidecarCheck(1)
		req.Attributes.Source.Address = envoy.Address(tc.sent, 40000)
		data, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		var f envoy.CheckFields
		if err := f.Unmarshal(data); err != nil {
			t.Fatal(err)
		}
		var bag attribute.Bag
		dec.Decode(&f, time.Unix(1764900000, 0), &bag)
		if got, _ := bag.String(attribute.SourceIP); got != tc.want {
			t.Errorf("source.ip for a peer at %s: %q, want %q", tc.sent, got, tc.want)
		}
	}
}

// headerMapRequest is a check whose headers come in header_map, as Envoy sends them
// with encode_raw_headers: a header sent n times is n entries.
func headerMapRequest(hvs ...*corev3.HeaderValue) *authv3.CheckRequest {
	req := sidecarCheck(5)
	req.Attributes.Request.Http.Headers = nil
	req.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: hvs}
	return req
}

// decodeBothWays decodes req from the message (SetRequest) and from its encoding
// (Unmarshal), and returns the request.headers of each and the number of headers
// counted before and after decoding.
func decodeBothWays(t *testing.T, req *authv3.CheckRequest) (headers [2]map[string]string, counts [2][2]int) {
	t.Helper()
	dec := envoy.NewCheckDecoder(checkRegistry())
	fields := fieldsBothWays(t, req)
	for i := range fields {
		counts[i][0] = fields[i].NumHeaders()
		var bag attribute.Bag
		dec.Decode(&fields[i], time.Unix(1764900000, 0), &bag)
		counts[i][1] = fields[i].NumHeaders()
		m, _ := bag.Map(attribute.RequestHeaders)
		headers[i] = m.Clone()
	}
	return headers, counts
}

// bagsBothWays decodes req with dec from the message (SetRequest) and from its
// encoding (Unmarshal), and returns the attributes of each.
func bagsBothWays(t *testing.T, dec *envoy.CheckDecoder, req *authv3.CheckRequest) [2]*attribute.Bag {
	t.Helper()
	fields := fieldsBothWays(t, req)
	var bags [2]*attribute.Bag
	for i := range fields {
		bags[i] = new(attribute.Bag)
		dec.Decode(&fields[i], time.Unix(1764900000, 0), bags[i])
	}
	return bags
}

// fieldsBothWays reads req from the message (SetRequest) and from its encoding
// (Unmarshal), for tests that hold both decoding paths to the same answer.
func fieldsBothWays(t *testing.T, req *authv3.CheckRequest) *[2]envoy.CheckFields {
	t.Helper()
	data, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var fields [2]envoy.CheckFields
	fields[0].SetRequest(req)
	if err := fields[1].Unmarshal(data); err != nil {
		t.Fatal(err)
	}
	return &fields
}

// TestHeaderMapRepeatedHeaders: a header that header_map holds more than once
// has all its values joined with "," in arrival order, as Envoy joins them for
// the headers map, whichever way the request is read: keeping only one of them
// would let a client pass a policy on the header (a DENY of x-debug == "1") by
// sending it twice.
func TestHeaderMapRepeatedHeaders(t *testing.T) {
	hv := func(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, Value: v} }
	raw := func(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, RawValue: []byte(v)} }
	many := []*corev3.HeaderValue{hv("x-debug", "1")}
	manyWant := map[string]string{}
	for i := range 40 { // past the pairs searched in place: the indexed path
		k := fmt.Sprintf("x-h%02d", i)
		many = append(many, hv(k, "a"), raw(strings.ToUpper(k), strconv.Itoa(i)))
		manyWant[k] = "a," + strconv.Itoa(i)
	}
	many = append(many, hv("x-debug", "0"))
	manyWant["x-debug"] = "1,0"
	for _, tc := range []struct {
		name string
		hvs  []*corev3.HeaderValue
		want map[string]string
	}{
		{"sent once", []*corev3.HeaderValue{hv("x-debug", "1"), raw("X-Token", "t")},
			map[string]string{"x-debug": "1", "x-token": "t"}},
		{"sent twice", []*corev3.HeaderValue{hv("x-debug", "1"), hv("x-debug", "0")},
			map[string]string{"x-debug": "1,0"}},
		{"raw values and cases", []*corev3.HeaderValue{raw("X-Debug", "1"), hv("x-debug", "0"), raw("x-DEBUG", "2")},
			map[string]string{"x-debug": "1,0,2"}},
		{"interleaved", []*corev3.HeaderValue{hv("a", "1"), hv("b", "2"), hv("a", "3"), hv("c", "4"), hv("b", "5"), hv("a", "6")},
			map[string]string{"a": "1,3,6", "b": "2,5", "c": "4"}},
		{"empty values", []*corev3.HeaderValue{hv("x-e", ""), hv("x-e", ""), hv("x-f", "1"), hv("x-f", ""), hv("x-g", ""), hv("x-g", "1")},
			map[string]string{"x-e": ",", "x-f": "1,", "x-g": ",1"}},
		{"many headers", many, manyWant},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, counts := decodeBothWays(t, headerMapRequest(tc.hvs...))
			for i, way := range []string{"message", "wire"} {
				if !reflect.DeepEqual(got[i], tc.want) {
					t.Errorf("from the %s: request.headers %v, want %v", way, got[i], tc.want)
				}
				if counts[i] != [2]int{len(tc.hvs), len(tc.hvs)} {
					t.Errorf("from the %s: %v headers before and after decoding, want %d", way, counts[i], len(tc.hvs))
				}
			}
		})
	}
}

// TestNumHeadersCountsHeaderMap: the header bound counts every entry of
// header_map, repeated ones too, as well as the keys of the headers map.
func TestNumHeadersCountsHeaderMap(t *testing.T) {
	req := headerMapRequest(&corev3.HeaderValue{Key: "a", Value: "1"}, &corev3.HeaderValue{Key: "a", Value: "2"}, &corev3.HeaderValue{Key: "b", Value: "3"})
	_, counts := decodeBothWays(t, req)
	if want := [2][2]int{{3, 3}, {3, 3}}; counts != want {
		t.Errorf("header_map of 3 entries: %v headers (message, wire; before, after decoding), want %v", counts, want)
	}
	req.Attributes.Request.Http.Headers = map[string]string{"c": "4", "d": "5"}
	_, counts = decodeBothWays(t, req)
	if want := [2][2]int{{5, 5}, {5, 5}}; counts != want {
		t.Errorf("headers of 2 and header_map of 3: %v headers, want %v", counts, want)
	}
}

// TestHeaderMapJoinAllocations: joining costs an allocation or two, only where a
// header repeats.
func TestHeaderMapJoinAllocations(t *testing.T) {
	dec := envoy.NewCheckDecoder(checkRegistry())
	allocs := func(hvs ...*corev3.HeaderValue) float64 {
		data, err := proto.Marshal(headerMapRequest(hvs...))
		if err != nil {
			t.Fatal(err)
		}
		var f envoy.CheckFields
		var bag attribute.Bag
		now := time.Unix(1764900000, 0)
		return testing.AllocsPerRun(100, func() {
			if err := f.Unmarshal(data); err != nil {
				t.Fatal(err)
			}
			bag.Reset()
			dec.Decode(&f, now, &bag)
		})
	}
	once := allocs(&corev3.HeaderValue{Key: "x-a", Value: "1"}, &corev3.HeaderValue{Key: "x-b", Value: "2"}, &corev3.HeaderValue{Key: "x-c", Value: "3"})
	twice := allocs(&corev3.HeaderValue{Key: "x-a", Value: "1"}, &corev3.HeaderValue{Key: "x-b", Value: "2"}, &corev3.HeaderValue{Key: "x-a", Value: "3"})
	if twice > once+2 {
		t.Errorf("a repeated header costs %v allocations, %v without one", twice, once)
	}
}

// TestManyHeadersHeldBounded: a message of very many tiny headers is refused
// (NumHeaders passes MaxHeaders) without the decoder holding them all: on the wire
// each is a few bytes, decoded some tens.
func TestManyHeadersHeldBounded(t *testing.T) {
	const n = 100_000
	hvs := make([]*corev3.HeaderValue, n)
	headers := make(map[string]string, n)
	for i := range hvs {
		hvs[i] = &corev3.HeaderValue{Key: "a", Value: "b"}
		headers["h"+strconv.Itoa(i)] = "v"
	}
	for name, req := range map[string]*authv3.CheckRequest{
		"header_map": headerMapRequest(hvs...),
		"headers":    sidecarCheck(1),
	} {
		if name == "headers" {
			req.Attributes.Request.Http.Headers = headers
		}
		data, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		var f envoy.CheckFields
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if err := f.Unmarshal(data); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		if got := f.NumHeaders(); got <= envoy.MaxHeaders {
			t.Errorf("%s of %d: NumHeaders %d, want more than %d", name, n, got, envoy.MaxHeaders)
		}
		if held := after.TotalAlloc - before.TotalAlloc; held > 1<<20 {
			t.Errorf("%s of %d entries (%d bytes on the wire): decoding allocated %d bytes", name, n, len(data), held)
		}
	}
}

// TestCheckSourceFollowsPrincipal: a peer with an Istio SPIFFE certificate
// (spiffe://TD/ns/NS/sa/SA) is in namespace NS with service account SA, whatever a
// stale registry entry claims, and an x-envoy-peer-metadata header (a request
// header the client can write) is never the source of a check: otherwise a caller
// from any namespace passes a policy on source.namespace or
// source.service_account by sending the header. A registry entry that agrees with
// the certificate, or a peer without one, keeps the registry's workload.
func TestCheckSourceFollowsPrincipal(t *testing.T) {
	claim := func(w *registry.Workload) string {
		h, err := envoy.EncodePeerMetadata(w)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	opsAdmin := claim(&registry.Workload{Name: "admin-tool", Namespace: "ops", Instance: "admin-tool-x", ServiceAccount: "admin"})
	shopFrontend := claim(&registry.Workload{Name: "frontend", Namespace: "shop", Instance: "frontend-x", ServiceAccount: "frontend"})
	tests := []struct {
		name       string
		ip         string // source address; 10.0.0.1 is productpage-v1 of shop in the registry
		principal  string
		peerHeader string
		// source.namespace, source.workload.namespace, source.workload.name, source.service_account ("" for none)
		ns, workload, sa string
	}{
		{"a header claiming another namespace than the certificate's", "10.9.9.9", "spiffe://cluster.local/ns/evil/sa/attacker", opsAdmin,
			"evil", "unknown", "attacker"},
		{"a header claiming the certificate's namespace but another account", "10.9.9.9", "spiffe://cluster.local/ns/shop/sa/guest", shopFrontend,
			"shop", "unknown", "guest"},
		{"a registry entry the certificate contradicts", "10.0.0.1", "spiffe://cluster.local/ns/evil/sa/attacker", "",
			"evil", "unknown", "attacker"},
		{"a header the certificate contradicts, over a registry entry it agrees with", "10.0.0.1", "spiffe://cluster.local/ns/shop/sa/productpage", opsAdmin,
			"shop", "productpage-v1", "productpage"},
		{"an unknown peer with a certificate", "10.9.9.9", "spiffe://other.domain/ns/shop/sa/frontend", "",
			"shop", "unknown", "frontend"},
		{"a header that agrees with the certificate", "10.9.9.9", "spiffe://cluster.local/ns/shop/sa/frontend", shopFrontend,
			"shop", "unknown", "frontend"},
		{"a registry entry that agrees with the certificate", "10.0.0.1", "spiffe://cluster.local/ns/shop/sa/productpage", "",
			"shop", "productpage-v1", "productpage"},
		{"no certificate: a header is ignored", "10.9.9.9", "", opsAdmin, "unknown", "unknown", ""},
		{"no certificate: a header is ignored for the registry", "10.0.0.1", "", opsAdmin, "shop", "productpage-v1", ""},
		{"no certificate: the registry", "10.0.0.1", "", "", "shop", "productpage-v1", ""},
		{"a principal that is no Istio identity", "10.0.0.1", "spiffe://cluster.local/workload/x", "", "shop", "productpage-v1", ""},
	}
	dec := envoy.NewCheckDecoder(checkRegistry())
	for _, tt := range tests {
		req := sidecarCheck(1)
		req.Attributes.Source.Address = envoy.Address(tt.ip, 40000)
		req.Attributes.Source.Principal = tt.principal
		if tt.peerHeader != "" {
			req.Attributes.Request.Http.Headers["x-envoy-peer-metadata"] = tt.peerHeader
		}
		for i, bag := range bagsBothWays(t, dec, req) {
			ns, _ := bag.String(attribute.SourceNamespace)
			wns, _ := bag.String(attribute.SourceWorkloadNamespace)
			w, _ := bag.String(attribute.SourceWorkloadName)
			sa, _ := bag.String(attribute.SourceServiceAccount)
			if ns != tt.ns || wns != tt.ns || w != tt.workload || sa != tt.sa {
				t.Errorf("%s (decoder %d): source.namespace %q, source.workload.namespace %q, source.workload.name %q, source.service_account %q; want %q, %q, %q, %q",
					tt.name, i, ns, wns, w, sa, tt.ns, tt.ns, tt.workload, tt.sa)
			}
			// Without a certificate the principal is absent, never a value a
			// policy could match or an allow-list hold ("unknown").
			p, ok := bag.String(attribute.SourcePrincipal)
			if p != tt.principal || ok != (tt.principal != "") {
				t.Errorf("%s (decoder %d): source.principal %q (set %v), want %q", tt.name, i, p, ok, tt.principal)
			}
		}
	}
}

// TestCheckDestinationService: a check's destination service comes from its Host,
// but only within the namespace of the workload the request reached (by the
// registry, or by the proxy's own certificate): inbound routes take any Host, so a
// client that could name another namespace, or none, would step out of the scope
// of every rule on destination.service.namespace. Case and a final dot do not make
// another name.
func TestCheckDestinationService(t *testing.T) {
	const ratings = "10.0.0.3" // ratings-v1 of shop in the registry
	tests := []struct {
		name, host, ip, principal string
		// destination.service.host, .name, .namespace
		svcHost, svcName, svcNS string
	}{
		{"a short name, qualified", "ratings:9080", ratings, "", "ratings.shop.svc.cluster.local", "ratings", "shop"},
		{"a full name", "ratings.shop.svc.cluster.local", ratings, "", "ratings.shop.svc.cluster.local", "ratings", "shop"},
		{"upper case", "Ratings.SHOP.svc.cluster.local:9080", ratings, "", "ratings.shop.svc.cluster.local", "ratings", "shop"},
		{"a final dot", "ratings.shop.svc.cluster.local.", ratings, "", "ratings.shop.svc.cluster.local", "ratings", "shop"},
		{"another namespace", "ratings.other.svc.cluster.local", ratings, "", "unknown", "unknown", "shop"},
		{"no namespace", "x.y", ratings, "", "unknown", "unknown", "shop"},
		{"no Host", "", ratings, "", "unknown", "unknown", "shop"},
		{"an unknown workload with a certificate", "ratings", "10.9.9.9", "spiffe://cluster.local/ns/shop/sa/ratings", "ratings.shop.svc.cluster.local", "ratings", "shop"},
		{"an unknown workload with a certificate, another namespace", "admin.ops.svc.cluster.local", "10.9.9.9", "spiffe://cluster.local/ns/shop/sa/ratings", "unknown", "unknown", "shop"},
		{"nothing known of the destination: the Host as it is", "ratings", "10.9.9.9", "", "ratings", "ratings", "unknown"},
		// An address names no service, IPv6 as IPv4: it is not a short name to qualify.
		{"an IPv4 address", "10.0.0.3:9080", ratings, "", "unknown", "unknown", "shop"},
		{"an IPv6 address with a port", "[fd00::3]:9080", ratings, "", "unknown", "unknown", "shop"},
		{"an IPv6 address", "fd00::3", ratings, "", "unknown", "unknown", "shop"},
		{"an IPv6 address, an unknown workload with a certificate", "[fd00::3]", "10.9.9.9", "spiffe://cluster.local/ns/shop/sa/ratings", "unknown", "unknown", "shop"},
	}
	dec := envoy.NewCheckDecoder(checkRegistry())
	for _, tt := range tests {
		req := sidecarCheck(1)
		req.Attributes.Destination.Address = envoy.Address(tt.ip, 9080)
		req.Attributes.Destination.Principal = tt.principal
		req.Attributes.Request.Http.Host = tt.host
		for i, bag := range bagsBothWays(t, dec, req) {
			host, _ := bag.String(attribute.DestinationServiceHost)
			name, _ := bag.String(attribute.DestinationServiceName)
			ns, _ := bag.String(attribute.DestinationServiceNamespace)
			if host != tt.svcHost || name != tt.svcName || ns != tt.svcNS {
				t.Errorf("%s (Host %q, decoder %d): service %q, name %q, namespace %q; want %q, %q, %q", tt.name, tt.host, i, host, name, ns, tt.svcHost, tt.svcName, tt.svcNS)
			}
		}
	}
}

// TestCheckDestinationLabelsAndPrincipal: a destination the registry does not
// know is described by the labels Envoy sends for its proxy and by the proxy's own
// certificate together: the certificate gives the namespace and service account,
// and does not take away the workload, app and labels the labels give.
func TestCheckDestinationLabelsAndPrincipal(t *testing.T) {
	labels := map[string]string{"app": "billing", "version": "v3"}
	tests := []struct {
		name, ip, principal string
		labels              map[string]string
		// destination.workload.name, .namespace, .app, .service_account ("" for none), number of labels
		workload, ns, app, sa string
		nlabels               int
	}{
		{"labels only", "10.9.9.9", "", labels, "billing", "unknown", "billing", "", 2},
		{"labels and a certificate", "10.9.9.9", "spiffe://cluster.local/ns/pay/sa/billing", labels, "billing", "pay", "billing", "billing", 2},
		{"a certificate only", "10.9.9.9", "spiffe://cluster.local/ns/pay/sa/billing", nil, "unknown", "pay", "unknown", "billing", 0},
		{"a registry entry the certificate contradicts, with labels", "10.0.0.3", "spiffe://cluster.local/ns/pay/sa/billing", labels, "unknown", "pay", "unknown", "billing", 0},
		{"a registry entry the certificate agrees with", "10.0.0.3", "spiffe://cluster.local/ns/shop/sa/ratings", labels, "ratings-v1", "shop", "ratings", "ratings", 3},
	}
	dec := envoy.NewCheckDecoder(checkRegistry())
	for _, tt := range tests {
		req := sidecarCheck(1)
		req.Attributes.Destination.Address = envoy.Address(tt.ip, 9080)
		req.Attributes.Destination.Principal = tt.principal
		req.Attributes.Destination.Labels = tt.labels
		for i, bag := range bagsBothWays(t, dec, req) {
			w, _ := bag.String(attribute.DestinationWorkloadName)
			ns, _ := bag.String(attribute.DestinationWorkloadNamespace)
			app, _ := bag.String(attribute.DestinationApp)
			sa, _ := bag.String(attribute.DestinationServiceAccount)
			m, _ := bag.Map(attribute.DestinationLabels)
			if w != tt.workload || ns != tt.ns || app != tt.app || sa != tt.sa || m.Len() != tt.nlabels {
				t.Errorf("%s (decoder %d): destination.workload.name %q, .namespace %q, .app %q, .service_account %q, %d labels; want %q, %q, %q, %q, %d",
					tt.name, i, w, ns, app, sa, m.Len(), tt.workload, tt.ns, tt.app, tt.sa, tt.nlabels)
			}
		}
	}
}

// TestCheckUnreadPartsNotValidated: a part of the message no check reads (here a
// pipe address's path, in invalid UTF-8) that protobuf refuses with the whole
// message is ignored by the wire path (the README says so): a pipe peer has no IP
// either way, and the rest of the peer is read.
func TestCheckUnreadPartsNotValidated(t *testing.T) {
	dec := envoy.NewCheckDecoder(checkRegistry())
	req := sidecarCheck(1)
	pipe := protowire.AppendTag(nil, 1, protowire.BytesType) // Pipe.path
	pipe = protowire.AppendString(pipe, "/run/\xff.sock")
	addr := protowire.AppendTag(nil, 2, protowire.BytesType) // Address.pipe
	addr = protowire.AppendBytes(addr, pipe)
	peer := protowire.AppendTag(nil, 1, protowire.BytesType) // Peer.address
	peer = protowire.AppendBytes(peer, addr)
	peer = protowire.AppendTag(peer, 4, protowire.BytesType) // Peer.principal
	peer = protowire.AppendString(peer, req.Attributes.Source.Principal)
	attrs := protowire.AppendTag(nil, 1, protowire.BytesType) // AttributeContext.source
	attrs = protowire.AppendBytes(attrs, peer)
	data := protowire.AppendTag(nil, 1, protowire.BytesType) // CheckRequest.attributes
	data = protowire.AppendBytes(data, attrs)

	if err := proto.Unmarshal(data, &authv3.CheckRequest{}); err == nil {
		t.Fatal("protobuf accepts a pipe path in invalid UTF-8")
	}
	var f envoy.CheckFields
	if err := f.Unmarshal(data); err != nil {
		t.Fatalf("the wire path refuses: %v", err)
	}
	var bag attribute.Bag
	dec.Decode(&f, time.Unix(1764900000, 0), &bag)
	if ip, ok := bag.String(attribute.SourceIP); ok {
		t.Errorf("source.ip = %q for a pipe peer, want absent", ip)
	}
	if p, _ := bag.String(attribute.SourcePrincipal); p != req.Attributes.Source.Principal {
		t.Errorf("source.principal = %q, want %q", p, req.Attributes.Source.Principal)
	}
}
