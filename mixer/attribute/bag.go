package attribute

import (
	"time"
)

// KV is one entry of a StringMap.
type KV struct {
	Key, Value string
}

// StringMap is a read-only string map attribute: either a short list of pairs
// (logged headers, usually referencing the receive buffer) or a shared Go map (labels).
// The zero value is empty.
type StringMap struct {
	pairs []KV
	m     map[string]string
}

// MapOf wraps a Go map; the map must not be modified afterwards.
func MapOf(m map[string]string) StringMap { return StringMap{m: m} }

// PairsOf wraps a list of pairs; as in a protobuf map, the last pair of a key wins.
func PairsOf(p []KV) StringMap { return StringMap{pairs: p} }

// Get returns the value stored under key.
func (s StringMap) Get(key string) (string, bool) {
	if s.m != nil {
		v, ok := s.m[key]
		return v, ok
	}
	for i := len(s.pairs) - 1; i >= 0; i-- {
		if s.pairs[i].Key == key {
			return s.pairs[i].Value, true
		}
	}
	return "", false
}

// Len returns the number of entries.
func (s StringMap) Len() int {
	if s.m != nil {
		return len(s.m)
	}
	return len(s.pairs)
}

// Range calls fn for each entry until it returns false.
func (s StringMap) Range(fn func(k, v string) bool) {
	if s.m != nil {
		for k, v := range s.m {
			if !fn(k, v) {
				return
			}
		}
		return
	}
	for _, p := range s.pairs {
		if !fn(p.Key, p.Value) {
			return
		}
	}
}

// Clone returns a Go map copy whose strings no longer reference any receive buffer.
func (s StringMap) Clone() map[string]string {
	out := make(map[string]string, s.Len())
	s.Range(func(k, v string) bool {
		out[clone(k)] = clone(v)
		return true
	})
	return out
}

func clone(s string) string { return string([]byte(s)) }

const presentWords = (int(Count) + 63) / 64

// Bag is one request's attributes: typed slots for the vocabulary and a presence set.
// A Bag is reused: Reset clears it without releasing its header storage. Strings in a
// Bag may reference the receive buffer of the message they were decoded from; anything
// that keeps a value past the processing of its batch must copy it.
type Bag struct {
	present [presentWords]uint64
	s       [numStrings]string
	n       [numNumeric]int64
	m       [numMaps]StringMap
	// hdr holds the backing storage of the header maps, reused across Resets.
	hdr [3][]KV
}

// Reset clears every attribute.
func (b *Bag) Reset() {
	b.present = [presentWords]uint64{}
	for i := range b.hdr {
		b.hdr[i] = b.hdr[i][:0]
	}
}

// Has reports whether id is set.
func (b *Bag) Has(id ID) bool { return b.present[id>>6]&(1<<(id&63)) != 0 }

func (b *Bag) mark(id ID) { b.present[id>>6] |= 1 << (id & 63) }

// Unset removes id.
func (b *Bag) Unset(id ID) { b.present[id>>6] &^= 1 << (id & 63) }

// SetString sets a string attribute.
func (b *Bag) SetString(id ID, v string) {
	b.s[id] = v
	b.mark(id)
}

// String returns a string attribute.
func (b *Bag) String(id ID) (string, bool) {
	if !b.Has(id) {
		return "", false
	}
	return b.s[id], true
}

// StringOr returns a string attribute, or def when it is not set.
func (b *Bag) StringOr(id ID, def string) string {
	if !b.Has(id) {
		return def
	}
	return b.s[id]
}

// SetInt sets an Int64 attribute.
func (b *Bag) SetInt(id ID, v int64) {
	b.n[id-numStrings] = v
	b.mark(id)
}

// SetBool sets a Bool attribute.
func (b *Bag) SetBool(id ID, v bool) {
	var n int64
	if v {
		n = 1
	}
	b.SetInt(id, n)
}

// SetDuration sets a Duration attribute.
func (b *Bag) SetDuration(id ID, d time.Duration) { b.SetInt(id, int64(d)) }

// SetTime sets a Timestamp attribute.
func (b *Bag) SetTime(id ID, t time.Time) { b.SetInt(id, t.UnixNano()) }

// SetTimeNanos sets a Timestamp attribute from Unix nanoseconds.
func (b *Bag) SetTimeNanos(id ID, unixNanos int64) { b.SetInt(id, unixNanos) }

// Int returns the raw numeric slot of an Int64, Bool, Duration or Timestamp attribute.
func (b *Bag) Int(id ID) (int64, bool) {
	if !b.Has(id) {
		return 0, false
	}
	return b.n[id-numStrings], true
}

// Map returns a map attribute.
func (b *Bag) Map(id ID) (StringMap, bool) {
	if !b.Has(id) {
		return StringMap{}, false
	}
	return b.m[id-numEnd], true
}

// SetMap sets a map attribute.
func (b *Bag) SetMap(id ID, m StringMap) {
	b.m[id-numEnd] = m
	b.mark(id)
}

// headerSlot maps the header attributes to their reusable storage.
func headerSlot(id ID) int {
	switch id {
	case RequestHeaders:
		return 0
	case ResponseHeaders:
		return 1
	case ResponseTrailers:
		return 2
	}
	return -1
}

// AddHeader appends a pair to one of the header maps (request.headers,
// response.headers, response.trailers), reusing the Bag's storage.
func (b *Bag) AddHeader(id ID, k, v string) {
	i := headerSlot(id)
	if i < 0 {
		panic("attribute: AddHeader on " + id.Name())
	}
	b.hdr[i] = append(b.hdr[i], KV{k, v})
	b.m[id-numEnd] = StringMap{pairs: b.hdr[i]}
	b.mark(id)
}

// Value returns the attribute as a Go value: string, int64, bool, time.Duration,
// time.Time or StringMap.
func (b *Bag) Value(id ID) (any, bool) {
	if !b.Has(id) {
		return nil, false
	}
	switch id.Kind() {
	case String:
		return b.s[id], true
	case Int64:
		return b.n[id-numStrings], true
	case Bool:
		return b.n[id-numStrings] != 0, true
	case Duration:
		return time.Duration(b.n[id-numStrings]), true
	case Timestamp:
		return time.Unix(0, b.n[id-numStrings]).UTC(), true
	case Map:
		return b.m[id-numEnd], true
	}
	return nil, false
}

// Range calls fn for every attribute that is set, in ID order.
func (b *Bag) Range(fn func(id ID, v any) bool) {
	for id := ID(0); id < Count; id++ {
		if v, ok := b.Value(id); ok && !fn(id, v) {
			return
		}
	}
}

// Set is a set of attributes, such as those a config's expressions read.
type Set [presentWords]uint64

// AllAttributes is the set of every attribute.
func AllAttributes() Set {
	var s Set
	for id := ID(0); id < Count; id++ {
		s.Add(id)
	}
	return s
}

// Add puts id in the set.
func (s *Set) Add(id ID) { s[id>>6] |= 1 << (id & 63) }

// Has reports whether id is in the set.
func (s *Set) Has(id ID) bool { return s[id>>6]&(1<<(id&63)) != 0 }
