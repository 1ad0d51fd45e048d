package envoy_test

import (
	"reflect"
	"testing"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluicemesh/sluice/mixer/envoy"
)

// sidecarRateLimit is a rate-limit request as the routing core's generated
// sidecars send it: the destination service, and it with the caller's address.
func sidecarRateLimit() *rlsv3.RateLimitRequest {
	svc := &rlcommon.RateLimitDescriptor_Entry{Key: "destination_service", Value: "ratings.shop.svc.cluster.local"}
	return &rlsv3.RateLimitRequest{Domain: "sluice", Descriptors: []*rlcommon.RateLimitDescriptor{
		{Entries: []*rlcommon.RateLimitDescriptor_Entry{svc}},
		{Entries: []*rlcommon.RateLimitDescriptor_Entry{svc, {Key: "remote_address", Value: "10.0.0.1"}}},
	}}
}

// rateLimitCases are requests and encodings whose reading must not depend on the
// path they take, as for checkCases.
func rateLimitCases(t testing.TB) map[string][]byte {
	t.Helper()
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	bytesField := func(b []byte, num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), v)
	}
	varintField := func(b []byte, num protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), v)
	}
	entry := func(k, v string) []byte { return bytesField(bytesField(nil, 1, []byte(k)), 2, []byte(v)) }

	full := &rlsv3.RateLimitRequest{Domain: "shop", HitsAddend: 3, Descriptors: []*rlcommon.RateLimitDescriptor{
		{
			Entries:        []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: "jason"}, {Key: "path"}},
			Limit:          &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 42, Unit: typev3.RateLimitUnit_MINUTE},
			HitsAddend:     wrapperspb.UInt64(0),
			IsNegativeHits: true,
		},
		{},
		{HitsAddend: wrapperspb.UInt64(1 << 40)},
	}}
	// A descriptor whose limit and hits_addend come twice (they merge), whose
	// entries are interleaved with them, and whose entry repeats its key field.
	merged := bytesField(nil, 1, entry("a", "1"))
	merged = bytesField(merged, 2, varintField(nil, 1, 10))
	merged = bytesField(merged, 1, bytesField(entry("b", "2"), 1, []byte("b2")))
	merged = bytesField(merged, 2, varintField(nil, 2, uint64(typev3.RateLimitUnit_HOUR)))
	merged = bytesField(merged, 3, varintField(nil, 1, 7))
	merged = bytesField(merged, 3, nil)
	merged = varintField(merged, 4, 1)
	merged = varintField(merged, 4, 0)
	mergedReq := bytesField(nil, 1, []byte("first"))
	mergedReq = bytesField(mergedReq, 2, merged)
	mergedReq = bytesField(mergedReq, 1, []byte("last domain wins"))
	mergedReq = varintField(mergedReq, 3, 1<<33+5) // a uint32 keeps the low bits

	// Fields of unexpected wire types are unknown fields; so are fields no
	// version defines.
	odd := varintField(nil, 1, 7)                                        // domain as a varint
	odd = bytesField(odd, 3, []byte("x"))                                // hits_addend as bytes
	odd = bytesField(odd, 2, varintField(bytesField(nil, 4, nil), 1, 9)) // is_negative_hits as bytes, entries as a varint
	odd = protowire.AppendBytes(protowire.AppendTag(odd, 2, protowire.BytesType),
		bytesField(nil, 2, varintField(bytesField(nil, 1, []byte("x")), 2, 1<<40))) // requests_per_unit as bytes, unit past int32
	odd = protowire.AppendFixed64(protowire.AppendTag(odd, 99, protowire.Fixed64Type), 1)
	odd = bytesField(odd, 2, bytesField(nil, 3, protowire.AppendFixed32(protowire.AppendTag(nil, 1, protowire.Fixed32Type), 4)))

	return map[string][]byte{
		"sidecar":          marshal(sidecarRateLimit()),
		"every field":      marshal(full),
		"empty":            nil,
		"domain only":      marshal(&rlsv3.RateLimitRequest{Domain: "d"}),
		"merged":           mergedReq,
		"odd types":        odd,
		"negative unit":    bytesField(nil, 2, bytesField(nil, 2, varintField(nil, 2, ^uint64(0)))),
		"bad utf8 domain":  bytesField(nil, 1, []byte{0xff}),
		"bad utf8 value":   bytesField(nil, 2, bytesField(nil, 1, entry("k", "\xc3"))),
		"truncated":        marshal(full)[:20],
		"truncated entry":  bytesField(nil, 2, []byte{0x0a, 0x05, 0x0a}),
		"truncated limit":  bytesField(nil, 2, bytesField(nil, 2, []byte{0x08})),
		"truncated addend": bytesField(nil, 2, bytesField(nil, 3, []byte{0x08, 0x80})),
	}
}

func TestRateLimitFieldsAgree(t *testing.T) {
	cases := rateLimitCases(t)
	for name, data := range cases {
		t.Run(name, func(t *testing.T) { agreeRateLimit(t, data) })
	}
	// The cases are only compared where protobuf accepts them.
	for _, name := range []string{"sidecar", "every field", "merged", "odd types", "negative unit"} {
		if err := proto.Unmarshal(cases[name], &rlsv3.RateLimitRequest{}); err != nil {
			t.Errorf("%s: proto.Unmarshal refuses it: %v", name, err)
		}
	}
}

// TestRateLimitFieldsRefuse: the wire path refuses what protobuf refuses.
func TestRateLimitFieldsRefuse(t *testing.T) {
	cases := rateLimitCases(t)
	for _, name := range []string{"bad utf8 domain", "bad utf8 value", "truncated", "truncated entry", "truncated limit", "truncated addend"} {
		var f envoy.RateLimitFields
		if err := f.Unmarshal(cases[name]); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestRateLimitFieldsReuse: filling fields again forgets the previous request and
// leaves the descriptors read before intact.
func TestRateLimitFieldsReuse(t *testing.T) {
	cases := rateLimitCases(t)
	var f envoy.RateLimitFields
	if err := f.Unmarshal(cases["every field"]); err != nil {
		t.Fatal(err)
	}
	if err := f.Unmarshal(cases["sidecar"]); err != nil {
		t.Fatal(err)
	}
	var fresh envoy.RateLimitFields
	fresh.SetRequest(sidecarRateLimit())
	if !reflect.DeepEqual(f.Descriptors, fresh.Descriptors) || f.Domain != fresh.Domain || f.HitsAddend != 0 {
		t.Errorf("reused fields hold %+v, want %+v", f, fresh)
	}
}

// agreeRateLimit reads data both ways and compares.
func agreeRateLimit(t *testing.T, data []byte) {
	t.Helper()
	var req rlsv3.RateLimitRequest
	var std, wire envoy.RateLimitFields
	if !readBoth(t, data, &req, wire.Unmarshal) {
		return
	}
	std.SetRequest(&req)
	if wire.Domain != std.Domain || wire.HitsAddend != std.HitsAddend || len(wire.Descriptors) != len(std.Descriptors) {
		t.Fatalf("wire %+v, proto %+v", wire, std)
	}
	for i := range std.Descriptors {
		w, s := wire.Descriptors[i], std.Descriptors[i]
		if len(w.Entries) == 0 && len(s.Entries) == 0 {
			w.Entries, s.Entries = nil, nil
		}
		if !reflect.DeepEqual(w, s) {
			t.Errorf("descriptor %d: wire %+v, proto %+v", i, w, s)
		}
	}
}

// FuzzRateLimitFields checks that the wire path reads what proto.Unmarshal reads,
// for any input protobuf accepts.
func FuzzRateLimitFields(f *testing.F) {
	for _, data := range rateLimitCases(f) {
		f.Add(data)
	}
	f.Fuzz(agreeRateLimit)
}

// BenchmarkRateLimitRead compares the two ways to a rate-limit request's fields.
func BenchmarkRateLimitRead(b *testing.B) {
	data, err := proto.Marshal(sidecarRateLimit())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("proto", func(b *testing.B) {
		var f envoy.RateLimitFields
		b.ReportAllocs()
		for b.Loop() {
			var req rlsv3.RateLimitRequest
			if err := proto.Unmarshal(data, &req); err != nil {
				b.Fatal(err)
			}
			f.SetRequest(&req)
		}
	})
	b.Run("wire", func(b *testing.B) {
		var f envoy.RateLimitFields
		b.ReportAllocs()
		for b.Loop() {
			if err := f.Unmarshal(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
