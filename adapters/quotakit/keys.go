package quotakit

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"slices"
)

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

// MaxKeyBytes bounds the counting keys a backend keeps (memquota's states, Redis
// keys, the local deny cache). A key holds the values of a request's dimensions or
// descriptors, which a client sends up to the message bound: 100,000 memquota keys
// of 60 KiB values would hold 6 GiB. A longer key is counted under BoundKey's
// digest of it.
const MaxKeyBytes = 512

// BoundKey returns key when it has at most MaxKeyBytes, else a key of MaxKeyBytes
// that stands for it: its start, "%#", and the hex SHA-256 of the whole key. Keys
// built with AppendEscaped never hold a raw "%#", so no such key equals a
// digest's, and two long keys share one only if their SHA-256 collides.
func BoundKey(key string) string {
	if len(key) <= MaxKeyBytes {
		return key
	}
	d := sha256.New()
	_, _ = io.WriteString(d, key)
	b := make([]byte, 0, MaxKeyBytes)
	b = append(b, key[:MaxKeyBytes-2-hex.EncodedLen(sha256.Size)]...)
	b = append(b, "%#"...)
	b = hex.AppendEncode(b, d.Sum(nil))
	return string(b)
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
