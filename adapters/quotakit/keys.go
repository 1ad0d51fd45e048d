package quotakit

import "slices"

// InstanceKey is the rate-limit key of a quota instance: its qualified name and every
// dimension, sorted by name, as name;k1=v1;k2=v2. Each distinct set of dimension
// values has its own count, as in Mixer; the separators are escaped in names and
// values so that distinct instances never share a key.
func InstanceKey(name string, dims map[string]string) string {
	// Built on the stack when it fits, so that the key costs one allocation (the
	// string) rather than two: it is computed for every quota check.
	var buf [256]byte
	b := AppendEscaped(buf[:0], name, &instanceSpecial)
	b = appendDims(b, dims)
	return string(b)
}

func appendDims(b []byte, dims map[string]string) []byte {
	if len(dims) == 0 {
		return b
	}
	var small [8]string
	names := small[:0]
	for k := range dims {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		b = append(b, ';')
		b = AppendEscaped(b, k, &instanceSpecial)
		b = append(b, '=')
		b = AppendEscaped(b, dims[k], &instanceSpecial)
	}
	return b
}

// EscapeSet is the set of bytes AppendEscaped percent-encodes; '%' is always in it,
// which keeps the encoding one-to-one.
type EscapeSet [4]uint64

// NewEscapeSet is the set of chars and '%'.
func NewEscapeSet(chars string) EscapeSet {
	var s EscapeSet
	for _, c := range []byte("%" + chars) {
		s[c>>6] |= 1 << (c & 63)
	}
	return s
}

func (s *EscapeSet) has(c byte) bool { return s[c>>6]&(1<<(c&63)) != 0 }

// The sets of instance keys (their separators and braces, so that values cannot
// forge a key's structure or a Redis hash tag) and of a Redis key's hash tag (its
// braces). Never changed.
var (
	instanceSpecial = NewEscapeSet("{};=")
	tagSpecial      = NewEscapeSet("{}")
)

// AppendEscaped appends s with the bytes of set percent-encoded. Callers that build
// keys of their own (the rate-limit service's) choose their separators.
func AppendEscaped(b []byte, s string, set *EscapeSet) []byte {
	i := 0
	for i < len(s) && !set.has(s[i]) {
		i++
	}
	if i == len(s) {
		return append(b, s...)
	}
	b = append(b, s[:i]...)
	for ; i < len(s); i++ {
		if c := s[i]; set.has(c) {
			const hex = "0123456789ABCDEF"
			b = append(b, '%', hex[c>>4], hex[c&15])
		} else {
			b = append(b, c)
		}
	}
	return b
}

// AppendClusterKey appends a Redis key for the limit identified by id: prefix, then
// id inside a hash tag, {id}. Redis Cluster hashes only what is inside the first
// braces, so every key of one limit (its windows, its log and counts) lands in one
// slot and one Lua script may touch them all. Braces and '%' in id are
// percent-encoded so that id cannot end the tag early.
func AppendClusterKey(b []byte, prefix, id string) []byte {
	b = append(b, prefix...)
	b = append(b, '{')
	b = AppendEscaped(b, id, &tagSpecial)
	return append(b, '}')
}
