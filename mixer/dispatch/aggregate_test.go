package dispatch

import (
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluicemesh/sluice/templates/metric"
)

func TestKeyRoundTrip(t *testing.T) {
	for _, labels := range [][]string{
		{"a", "b", "c"},
		{"", "", ""},
		{"with\x00nul", "x", string([]byte{1, 0, 0, 0})},
		{"ünïcode", "overflow"},
		{strings.Repeat("long", 100), "", strings.Repeat("x", 127), strings.Repeat("y", 128), strings.Repeat("z", 70000)},
	} {
		got := decodeKey(encodeKey(labels), nil)
		if !slices.Equal(got, labels) {
			t.Errorf("round trip of %q gave %q", labels, got)
		}
	}
	// Keys of different label sets differ even where a separator scheme would collide.
	if encodeKey([]string{"a\xff", "b"}) == encodeKey([]string{"a", "\xffb"}) {
		t.Error("distinct label sets share a key")
	}
}

func TestGroupBound(t *testing.T) {
	total := new(atomic.Int64)
	g := newGroupState(total, 3)
	key := func(s string) []byte { return []byte(encodeKey([]string{s})) }
	for i, s := range []string{"a", "b", "c"} {
		sid, folded, _ := g.lookup(key(s), 1)
		if sid != int32(i) || folded {
			t.Fatalf("series %s: sid %d folded %v", s, sid, folded)
		}
	}
	sid, folded, _ := g.lookup(key("d"), 1)
	if !folded || decodeKey(g.keys[sid], nil)[0] != metric.OverflowValue {
		t.Errorf("the fourth series was not folded into the overflow series")
	}
	if again, folded2, _ := g.lookup(key("e"), 1); again != sid || !folded2 {
		t.Error("a second overflowing series got its own slot")
	}
	if sid, folded, _ := g.lookup(key("a"), 1); sid != 0 || folded {
		t.Error("an existing series folded after the bound was reached")
	}
	if total.Load() != 3 {
		t.Errorf("total = %d, want 3 (the overflow series is not counted)", total.Load())
	}
	// Another shard's group shares the bound.
	other := newGroupState(total, 3)
	if _, folded, _ := other.lookup(key("z"), 1); !folded {
		t.Error("the bound is not shared across shards")
	}
}

func TestGroupSanitizes(t *testing.T) {
	g := newGroupState(new(atomic.Int64), 10)
	sid, _, sanitized := g.lookup([]byte(encodeKey([]string{"ok", "bad\xffbytes"})), 2)
	if !sanitized {
		t.Fatal("invalid UTF-8 not reported")
	}
	if got := decodeKey(g.keys[sid], nil); !slices.Equal(got, []string{"ok", "bad\uFFFDbytes"}) {
		t.Errorf("stored labels %q", got)
	}
}

func TestDistributionBuckets(t *testing.T) {
	a := newAggState(nil, metric.Aggregation{Kind: metric.Distribution, Buckets: []float64{1, 5, 10}})
	for _, v := range []float64{0.5, 1, 1.5, 5, 10, 11, 1e9} {
		a.observe(0, v)
	}
	// Prometheus buckets are upper-inclusive: 1 counts in le=1.
	want := []uint64{2, 2, 1, 2}
	if !slices.Equal(a.buckets[:4], want) {
		t.Errorf("buckets %v, want %v", a.buckets[:4], want)
	}
	if a.counts[0] != 7 || a.sums[0] != 0.5+1+1.5+5+10+11+1e9 {
		t.Errorf("count %d sum %v", a.counts[0], a.sums[0])
	}
}

func TestMergeAcrossShards(t *testing.T) {
	total := new(atomic.Int64)
	agg := metric.Aggregation{Kind: metric.Distribution, Buckets: []float64{10}}
	out := map[string]*merged{}
	var order []string
	for shard, obs := range [][]float64{{1, 20}, {5}} {
		g := newGroupState(total, 100)
		a := newAggState(g, agg)
		sid, _, _ := g.lookup([]byte(encodeKey([]string{"same"})), 1)
		for _, v := range obs {
			a.observe(sid, v)
		}
		if shard == 1 {
			sid2, _, _ := g.lookup([]byte(encodeKey([]string{"only-here"})), 1)
			a.observe(sid2, 3)
		}
		a.mergeInto(g, out, &order)
	}
	m := out[encodeKey([]string{"same"})].series
	if m.Count != 3 || m.Sum != 26 || !slices.Equal(m.Buckets, []uint64{2, 1}) {
		t.Errorf("merged %+v", m)
	}
	if len(order) != 2 {
		t.Errorf("%d merged series, want 2", len(order))
	}
}
