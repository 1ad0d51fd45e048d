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
	b := appendEscaped(buf[:0], name, false)
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
		b = appendEscaped(b, k, false)
		b = append(b, '=')
		b = appendEscaped(b, dims[k], false)
	}
	return b
}

// appendEscaped writes s with some bytes percent-encoded: in instance keys the
// separators and braces (so that values cannot forge a key's structure or a Redis
// hash tag), in the hash tag of a Redis key (tag) the braces. '%' itself is always
// encoded, which keeps the encoding one-to-one.
func appendEscaped(b []byte, s string, tag bool) []byte {
	i := 0
	for i < len(s) && !special(s[i], tag) {
		i++
	}
	if i == len(s) {
		return append(b, s...)
	}
	b = append(b, s[:i]...)
	for ; i < len(s); i++ {
		if c := s[i]; special(c, tag) {
			const hex = "0123456789ABCDEF"
			b = append(b, '%', hex[c>>4], hex[c&15])
		} else {
			b = append(b, c)
		}
	}
	return b
}

func special(c byte, tag bool) bool {
	switch c {
	case '%', '{', '}':
		return true
	case ';', '=':
		return !tag
	}
	return false
}

// AppendClusterKey appends a Redis key for the limit identified by id: prefix, then
// id inside a hash tag, {id}. Redis Cluster hashes only what is inside the first
// braces, so every key of one limit (its windows, its log and counts) lands in one
// slot and one Lua script may touch them all. Braces and '%' in id are
// percent-encoded so that id cannot end the tag early.
func AppendClusterKey(b []byte, prefix, id string) []byte {
	b = append(b, prefix...)
	b = append(b, '{')
	b = appendEscaped(b, id, true)
	return append(b, '}')
}
