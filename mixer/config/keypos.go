package config

import "strings"

// KeyPos is PosOf, except that a field holding a mapping or a list is positioned at
// its key ("corsPolicy:") rather than at its first entry, for errors about the field
// itself.
func (o *Object) KeyPos(path string) Position {
	i := strings.LastIndexByte(path, '.')
	parent, last := "", path
	if i >= 0 {
		parent, last = path[:i], path[i+1:]
	}
	if last == "" || strings.ContainsRune(last, '[') {
		return o.PosOf(path)
	}
	n := lookupPath(o.node, parent)
	if n == nil {
		return o.PosOf(path)
	}
	for _, kv := range mappingEntries(n) {
		if kv[0].Value == last {
			return Position{File: o.Pos.File, Line: kv[0].Line}
		}
	}
	return o.PosOf(path)
}
