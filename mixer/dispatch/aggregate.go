package dispatch

import (
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"github.com/sluicemesh/sluice/templates/metric"
)

// A label group is a distinct list of dimension expressions. Every metric instance with
// that list shares the group's series table, so an entry's label set is computed and
// looked up once however many metrics it feeds (the four Istio HTTP metrics share one).
//
// A series key is the label values, each followed by its length: one byte below 128,
// else four bytes whose last has the high bit set. Decoding from the end is
// unambiguous, and the key is built in a reused buffer so that a lookup of an
// existing series allocates nothing.

// groupState is one shard's series table of a label group.
type groupState struct {
	index map[string]int32
	// keys holds each series' key, sanitised to valid UTF-8.
	keys     []string
	overflow int32
	// total counts the group's series over all shards, for the cardinality bound.
	total *atomic.Int64
	limit int64
}

func newGroupState(total *atomic.Int64, limit int) *groupState {
	return &groupState{index: map[string]int32{}, overflow: -1, total: total, limit: int64(limit)}
}

// appendLabel appends the length of the label value that starts at start.
func appendLabel(key []byte, start int) []byte {
	n := len(key) - start
	if n < 0x80 {
		return append(key, byte(n))
	}
	return append(key, byte(n), byte(n>>8), byte(n>>16), byte(n>>24)&0x7f|0x80)
}

// decodeKey splits a key into its label values (substrings of key).
func decodeKey(key string, dst []string) []string {
	n := len(dst)
	end := len(key)
	for end >= 1 {
		l, w := int(key[end-1]), 1
		if l&0x80 != 0 {
			if end < 4 {
				break
			}
			l, w = int(key[end-4])|int(key[end-3])<<8|int(key[end-2])<<16|int(key[end-1]&0x7f)<<24, 4
		}
		start := end - w - l
		if start < 0 {
			break
		}
		dst = append(dst, key[start:end-w])
		end = start
	}
	// values were collected last-first
	for i, j := n, len(dst)-1; i < j; i, j = i+1, j-1 {
		dst[i], dst[j] = dst[j], dst[i]
	}
	return dst
}

// encodeKey builds a key from label values.
func encodeKey(labels []string) string {
	var b []byte
	for _, l := range labels {
		start := len(b)
		b = append(b, l...)
		b = appendLabel(b, start)
	}
	return string(b)
}

// lookup returns the series of key, creating it within the bound. Beyond the bound it
// returns the overflow series and folded=true. sanitized reports a new series whose
// labels held invalid UTF-8.
func (g *groupState) lookup(key []byte, dims int) (sid int32, folded, sanitized bool) {
	if sid, ok := g.index[string(key)]; ok {
		return sid, sid == g.overflow && g.overflow >= 0, false
	}
	if g.total.Add(1) > g.limit {
		g.total.Add(-1)
		return g.overflowSeries(dims), true, false
	}
	k := string(key)
	stored := k
	if !utf8.ValidString(k) {
		labels := decodeKey(k, nil)
		for i, l := range labels {
			labels[i] = strings.ToValidUTF8(l, "\uFFFD")
		}
		stored = encodeKey(labels)
		sanitized = true
	}
	sid = int32(len(g.keys))
	g.keys = append(g.keys, stored)
	g.index[k] = sid
	return sid, false, sanitized
}

func (g *groupState) overflowSeries(dims int) int32 {
	if g.overflow >= 0 {
		return g.overflow
	}
	labels := make([]string, dims)
	for i := range labels {
		labels[i] = metric.OverflowValue
	}
	k := encodeKey(labels)
	if sid, ok := g.index[k]; ok { // a real series with every label "overflow"
		g.overflow = sid
		return sid
	}
	g.overflow = int32(len(g.keys))
	g.keys = append(g.keys, k)
	g.index[k] = g.overflow
	return g.overflow
}

// aggState is one shard's values of one aggregate, indexed by series.
type aggState struct {
	group   *groupState
	kind    metric.Kind
	bounds  []float64
	counts  []uint64
	sums    []float64
	buckets []uint64 // len(bounds)+1 per series
	// folded counts observations folded into the overflow series.
	folded uint64
}

func newAggState(g *groupState, a metric.Aggregation) *aggState {
	return &aggState{group: g, kind: a.Kind, bounds: a.Buckets}
}

func (a *aggState) grow(sid int32) {
	for int(sid) >= len(a.counts) {
		a.counts = append(a.counts, 0)
		a.sums = append(a.sums, 0)
		if a.kind == metric.Distribution {
			for i := 0; i <= len(a.bounds); i++ {
				a.buckets = append(a.buckets, 0)
			}
		}
	}
}

func (a *aggState) observe(sid int32, v float64) {
	if int(sid) >= len(a.counts) {
		a.grow(sid)
	}
	a.counts[sid]++
	switch a.kind {
	case metric.Counter:
		a.sums[sid] += v
	case metric.Gauge:
		a.sums[sid] = v
	case metric.Distribution:
		a.sums[sid] += v
		// Bucket search: Istio's 19 bounds make a linear scan from the bottom as fast
		// as a binary search for the small values most observations are.
		i := 0
		for i < len(a.bounds) && v > a.bounds[i] {
			i++
		}
		a.buckets[int(sid)*(len(a.bounds)+1)+i]++
	}
}

// merged is one series summed over shards while collecting.
type merged struct {
	series metric.Series
}

// mergeInto adds this shard's series of the aggregate into out, keyed by series key.
func (a *aggState) mergeInto(g *groupState, out map[string]*merged, order *[]string) {
	nb := len(a.bounds) + 1
	for sid, cnt := range a.counts {
		if cnt == 0 {
			continue
		}
		key := g.keys[sid]
		m, ok := out[key]
		if !ok {
			m = &merged{}
			if a.kind == metric.Distribution {
				m.series.Buckets = make([]uint64, nb)
			}
			out[key] = m
			*order = append(*order, key)
		}
		m.series.Count += cnt
		if a.kind == metric.Gauge {
			m.series.Sum = a.sums[sid] // shards do not order their observations; any last value will do
		} else {
			m.series.Sum += a.sums[sid]
		}
		if a.kind == metric.Distribution {
			b := a.buckets[sid*nb : (sid+1)*nb]
			for i, c := range b {
				m.series.Buckets[i] += c
			}
		}
	}
}
