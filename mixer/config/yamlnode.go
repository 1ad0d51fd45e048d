package config

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// decodeStrict decodes node into v, rejecting mapping keys that v's type does not
// declare (by yaml tag) and reporting each problem at its own line in file.
func decodeStrict(file string, node *yaml.Node, v any) error {
	var c collector
	decodeInto(&c, file, node, v)
	return c.err()
}

// decodeInto decodes node into v and adds to c every problem, each at its own line:
// the mapping keys that v's type does not declare (by yaml tag), which decoding
// skips, and the values of the wrong type, which it leaves at their zero values
// (fieldTrust tells such fields). It reports whether v holds what decoding made of
// the node; not when the node's structure (an alias cycle, a merge key of a
// scalar) stopped it.
func decodeInto(c *collector, file string, node *yaml.Node, v any) bool {
	decoded, _ := decodeValues(c, file, node, v)
	return decoded
}

// decodeValues is decodeInto, and also reports whether every value written was
// decoded: no type error, nor anything that stopped decoding. Unknown keys, which
// are reported, do not count.
func decodeValues(c *collector, file string, node *yaml.Node, v any) (decoded, clean bool) {
	var kc collector
	checkKnownFields(&kc, file, node, reflect.TypeOf(v), "", map[anchorVisit]bool{})
	c.errs = append(c.errs, kc.errs...)
	if kc.halt {
		return false, false // decoding would fail on it too, and say so without a line
	}
	err := node.Decode(v)
	if err == nil {
		return true, true
	}
	c.addErr(Position{File: file, Line: node.Line}, yamlError(file, node, err))
	var te *yaml.TypeError
	return asTypeError(err, &te), false // yaml.v3 decodes the rest past a type error
}

// fieldTrust tells which fields of a mapping, decoded into a struct, hold what was
// written there, so that a check of a value does not report the consequence of an
// error already reported (see ok).
type fieldTrust struct {
	m      *yaml.Node
	fields map[string]reflect.StructField
	// sound is false when yaml.v3 decoded none of m (a key written twice);
	// unknownKey when m has a key that t does not declare.
	sound, unknownKey bool
}

// trustFields looks at mapping m, decoded into a struct of type t.
func trustFields(m *yaml.Node, t reflect.Type) fieldTrust {
	m = resolveAlias(m)
	if m == nil || m.Kind != yaml.MappingNode {
		return fieldTrust{sound: true}
	}
	ft := fieldTrust{m: m, fields: map[string]reflect.StructField{}}
	collectFields(t, ft.fields)
	ft.sound = mappingSound(m, 0)
	ft.unknownKey = hasUnknownKey(m, ft.fields, 0)
	return ft
}

// ok reports whether the field key holds what was written: not when its value did
// not decode (the field kept its zero value), when the mapping as a whole did not,
// or when key is absent from a mapping that has an unknown key, which may be key
// misspelt.
func (ft fieldTrust) ok(key string) bool {
	if ft.m == nil {
		return true
	}
	if !ft.sound {
		return false
	}
	_, v := nodeEntry(ft.m, key)
	if v == nil {
		return !ft.unknownKey
	}
	f, known := ft.fields[key]
	if !known {
		return true
	}
	return v.Decode(reflect.New(f.Type).Interface()) == nil
}

// maxMergeDepth bounds the walks of merge keys below (cycles are refused before).
const maxMergeDepth = 32

// mappingSound reports whether yaml.v3 decodes mapping m at all: it decodes none of
// a mapping that writes a key twice, nor what a merge key brings from such a one.
func mappingSound(m *yaml.Node, depth int) bool {
	m = resolveAlias(m)
	if m == nil || m.Kind != yaml.MappingNode || depth > maxMergeDepth {
		return true
	}
	if hasDuplicateKey(m) {
		return false
	}
	for _, src := range mergeSources(m) {
		if !mappingSound(src, depth+1) {
			return false
		}
	}
	return true
}

// hasDuplicateKey reports whether mapping m itself writes a key twice, as yaml.v3
// compares them.
func hasDuplicateKey(m *yaml.Node) bool {
	type key struct {
		kind  yaml.Kind
		value string
	}
	seen := make(map[key]bool, len(m.Content)/2)
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := key{m.Content[i].Kind, m.Content[i].Value}
		if seen[k] {
			return true
		}
		seen[k] = true
	}
	return false
}

// hasUnknownKey reports whether mapping m, or one that its merge key brings in,
// has a key that is not one of fields.
func hasUnknownKey(m *yaml.Node, fields map[string]reflect.StructField, depth int) bool {
	m = resolveAlias(m)
	if m == nil || m.Kind != yaml.MappingNode || depth > maxMergeDepth {
		return false
	}
	for _, kv := range mappingEntries(m) {
		if isMergeKey(kv[0]) {
			continue
		}
		if _, ok := fields[kv[0].Value]; !ok {
			return true
		}
	}
	for _, src := range mergeSources(m) {
		if hasUnknownKey(src, fields, depth+1) {
			return true
		}
	}
	return false
}

// mergeSources returns the mappings that the merge keys of m bring in.
func mergeSources(m *yaml.Node) []*yaml.Node {
	var out []*yaml.Node
	for _, kv := range mappingEntries(m) {
		if !isMergeKey(kv[0]) {
			continue
		}
		if v := resolveAlias(kv[1]); v != nil && v.Kind == yaml.SequenceNode {
			out = append(out, v.Content...)
		} else {
			out = append(out, kv[1])
		}
	}
	return out
}

// decodedElements returns, for each element of a slice of structs decoded from seq,
// the index of the element of seq it was decoded from: yaml.v3 leaves out an element
// that is neither a mapping nor null, or that writes a key twice, and the indexes
// then differ. ok is false when that does not come to n elements (the positions
// would be guessed); els is nil when seq is not a list.
func decodedElements(seq *yaml.Node, n int) (els []int, ok bool) {
	seq = resolveAlias(seq)
	if seq == nil || seq.Kind != yaml.SequenceNode {
		return nil, true
	}
	for i, el := range seq.Content {
		r := resolveAlias(el)
		switch {
		case r == nil:
		case r.Kind == yaml.MappingNode && !hasDuplicateKey(r):
			// Only the element's own keys: a merged mapping that fails leaves it in.
			els = append(els, i)
		case r.Kind == yaml.ScalarNode && r.ShortTag() == "!!null":
			els = append(els, i)
		}
	}
	return els, len(els) == n
}

var yamlLine = regexp.MustCompile(`line (\d+): `)

// yamlError turns a yaml.v3 error into positioned Errors; its messages carry "line N".
func yamlError(file string, node *yaml.Node, err error) error {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if ok := asTypeError(err, &te); ok {
		msgs = te.Errors
	}
	var c collector
	var lines lineIndex // built at the first type error: one walk however many errors
	for _, m := range msgs {
		m = strings.TrimPrefix(m, "yaml: ")
		line := 0
		if loc := yamlLine.FindStringSubmatchIndex(m); loc != nil {
			line, _ = strconv.Atoi(m[loc[2]:loc[3]])
			m = m[:loc[0]] + m[loc[1]:]
			// yaml.v3 prints parser errors (unlike scanner errors) with a 0-based line.
			if strings.HasPrefix(m, "did not find expected") {
				line++
			}
		} else if node != nil {
			line = node.Line
		}
		if line > 0 && node != nil {
			if lines == nil && yamlTypeError.MatchString(m) {
				lines = indexLines(node)
			}
			m = typeErrorText(lines, line, m)
		}
		c.add(Position{File: file, Line: line}, "%s", m)
	}
	return c.err()
}

// yamlTypeError is yaml.v3's text for a value of the wrong type (its line removed),
// which names Go types: "cannot unmarshal !!str `ten` into uint32".
var yamlTypeError = regexp.MustCompile("^cannot unmarshal (!![a-z]+)(?: `(.*)`)? into (\\S+)$")

// placedNode is a node with its field path ("descriptors[0].rate_limit.unit").
type placedNode struct {
	node *yaml.Node
	path string
}

// lineIndex holds every node below a document by the line it starts on. A file with
// many wrong values gets one message each; finding each one's field by walking the
// whole tree again would make that quadratic (minutes for 20,000 errors).
type lineIndex map[int][]placedNode

// indexLines walks node once, as decoding does (merged keys included).
func indexLines(node *yaml.Node) lineIndex {
	idx := lineIndex{}
	var walk func(n *yaml.Node, p string)
	walk = func(n *yaml.Node, p string) {
		if n == nil {
			return
		}
		idx[n.Line] = append(idx[n.Line], placedNode{n, p})
		switch n.Kind {
		case yaml.MappingNode:
			for _, kv := range mappingEntries(n) {
				walk(kv[1], join(p, kv[0].Value))
			}
		case yaml.SequenceNode:
			for i, el := range n.Content {
				walk(el, p+"["+strconv.Itoa(i)+"]")
			}
		}
	}
	walk(node, "")
	return idx
}

// typeErrorText rewrites a yaml.v3 type error at line in the terms of the config:
// the field's path, the value as written and what the field takes
// ("requests_per_unit: \"ten\" is not a whole number from 0 to 4294967295").
// Other messages are returned as they are.
func typeErrorText(lines lineIndex, line int, m string) string {
	sm := yamlTypeError.FindStringSubmatch(m)
	if sm == nil {
		return m
	}
	tag, value, goType := sm[1], sm[2], sm[3]
	kind := yaml.ScalarNode
	switch tag {
	case "!!seq":
		kind = yaml.SequenceNode
	case "!!map":
		kind = yaml.MappingNode
	}
	// yaml.v3 cuts a value longer than 10 bytes to its first 7 and "...".
	prefix, cut := strings.CutSuffix(value, "...")
	cut = cut && len(prefix) == 7
	// Every node that fits: written inline, several may share the line (a mapping
	// inside a mapping), and the line cannot tell which one the error is about.
	var paths []string
	var found *yaml.Node
	for _, pn := range lines[line] {
		n := pn.node
		if n.Kind == kind && (kind != yaml.ScalarNode || n.Value == value || cut && strings.HasPrefix(n.Value, prefix)) {
			paths, found = append(paths, pn.path), n
		}
	}
	if len(paths) == 0 {
		return m
	}
	path := paths[0]
	if len(paths) > 1 {
		path = "" // no field rather than the wrong one
	}
	var got string
	switch kind {
	case yaml.SequenceNode:
		got = "a list"
	case yaml.MappingNode:
		got = "a mapping"
	default:
		got = found.Value
		if tag == "!!str" {
			got = strconv.Quote(found.Value)
		}
	}
	out := got + " is not " + goTypeText(goType)
	if path != "" {
		out = path + ": " + out
	}
	return out
}

// goTypeText says what a value of a Go type is written as.
func goTypeText(t string) string {
	t = strings.TrimLeft(t, "*")
	switch {
	case t == "time.Duration":
		return "a duration (a number and a unit: 500ms, 30s, 1m, 1h)"
	case t == "bool":
		return "true or false"
	case t == "string":
		return "a string"
	case strings.HasPrefix(t, "float"):
		return "a number"
	case strings.HasPrefix(t, "uint"):
		bits, err := strconv.Atoi(strings.TrimPrefix(t, "uint"))
		if err != nil {
			bits = 64
		}
		return fmt.Sprintf("a whole number from 0 to %d", uint64(1)<<bits-1)
	case strings.HasPrefix(t, "int"):
		return "a whole number"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	}
	return "a mapping" // a map or a struct
}

func asTypeError(err error, out **yaml.TypeError) bool {
	te, ok := err.(*yaml.TypeError)
	if ok {
		*out = te
	}
	return ok
}

// yamlFieldName returns the key a struct field is decoded from.
func yamlFieldName(f reflect.StructField) (name string, inline bool, skip bool) {
	if f.PkgPath != "" {
		return "", false, true
	}
	tag := f.Tag.Get("yaml")
	if tag == "-" {
		return "", false, true
	}
	parts := strings.Split(tag, ",")
	for _, p := range parts[1:] {
		if p == "inline" {
			inline = true
		}
	}
	name = parts[0]
	if name == "" {
		name = strings.ToLower(f.Name)
	}
	return name, inline, false
}

var nodeType = reflect.TypeOf(yaml.Node{})

// anchorVisit is an anchored node checked as one type.
type anchorVisit struct {
	node *yaml.Node
	t    reflect.Type
}

// checkKnownFields walks node against t and reports unknown mapping keys. It follows
// aliases and merge keys as yaml.v3 decodes them. seen holds each anchored node checked
// (true) or being checked (false) as a type: an anchor is checked once however many
// aliases use it, which bounds the walk where aliases nest (decoding, which comes
// after, limits them itself), and an alias inside the node it stands for, which would
// send the walk round forever, is reported instead.
func checkKnownFields(c *collector, file string, node *yaml.Node, t reflect.Type, path string, seen map[anchorVisit]bool) {
	if node == nil || t == nil {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	use := node
	node = resolveAlias(node)
	if node == nil {
		return
	}
	if t == nodeType || t.Kind() == reflect.Interface {
		return
	}
	if _, ok := reflect.New(t).Interface().(yaml.Unmarshaler); ok {
		return
	}
	if node.Anchor != "" {
		v := anchorVisit{node, t}
		done, ok := seen[v]
		if ok && !done {
			c.add(Position{File: file, Line: use.Line}, "alias *%s is inside the node it stands for", node.Anchor)
			c.halt = true
			return
		}
		if ok {
			return
		}
		seen[v] = false
		defer func() { seen[v] = true }()
	}
	switch t.Kind() {
	case reflect.Struct:
		if node.Kind != yaml.MappingNode {
			return // node.Decode reports the type mismatch
		}
		fields := map[string]reflect.StructField{}
		collectFields(t, fields)
		for i := 0; i+1 < len(node.Content); i += 2 {
			k, val := node.Content[i], node.Content[i+1]
			if isMergeKey(k) {
				checkMerge(c, file, k, val, t, path, seen)
				continue
			}
			f, ok := fields[k.Value]
			if !ok {
				c.add(Position{File: file, Line: k.Line}, "unknown field %q%s (known: %s)", k.Value, inPath(path), knownList(fields))
				continue
			}
			checkKnownFields(c, file, val, f.Type, join(path, k.Value), seen)
		}
	case reflect.Slice, reflect.Array:
		if node.Kind != yaml.SequenceNode {
			return
		}
		for i, el := range node.Content {
			checkKnownFields(c, file, el, t.Elem(), fmt.Sprintf("%s[%d]", path, i), seen)
		}
	case reflect.Map:
		if node.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(node.Content); i += 2 {
			if isMergeKey(node.Content[i]) {
				checkMerge(c, file, node.Content[i], node.Content[i+1], t, path, seen)
				continue
			}
			checkKnownFields(c, file, node.Content[i+1], t.Elem(), join(path, node.Content[i].Value), seen)
		}
	}
}

// checkMerge checks the mappings that a merge key ("<<: *base" or "<<: [*a, *b]") brings
// into a mapping of type t, as part of that mapping. Their values are decoded only
// where the mapping does not set the key itself, but an unknown key is a mistake either way.
func checkMerge(c *collector, file string, key, val *yaml.Node, t reflect.Type, path string, seen map[anchorVisit]bool) {
	maps := []*yaml.Node{val}
	if val.Kind == yaml.SequenceNode {
		maps = val.Content
	}
	for _, m := range maps {
		if r := resolveAlias(m); r == nil || r.Kind != yaml.MappingNode {
			// yaml.v3 would say so too, but without a line.
			c.add(Position{File: file, Line: key.Line}, "merge key %q needs a mapping or a list of mappings", key.Value)
			c.halt = true
			return
		}
	}
	for _, m := range maps {
		checkKnownFields(c, file, m, t, path, seen)
	}
}

// isMergeKey reports whether k is a YAML merge key, by yaml.v3's rule: a plain "<<" or
// one tagged !!merge, but not a quoted one.
func isMergeKey(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && (k.Tag == "" || k.Tag == "!" || k.ShortTag() == "!!merge")
}

// resolveAlias returns the node an alias stands for, or n itself.
func resolveAlias(n *yaml.Node) *yaml.Node {
	if n != nil && n.Kind == yaml.AliasNode {
		return n.Alias
	}
	return n
}

// collectFields maps the YAML keys of struct type t, its inlined structs' too, to
// their fields.
func collectFields(t reflect.Type, out map[string]reflect.StructField) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, inline, skip := yamlFieldName(f)
		if skip {
			continue
		}
		if inline {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				collectFields(ft, out)
			}
			continue
		}
		out[name] = f
	}
}

func knownList(fields map[string]reflect.StructField) string {
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func inPath(path string) string {
	if path == "" {
		return ""
	}
	return " in " + path
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// lookupPath finds the node at a field path like "metrics[2].buckets" below node, for
// positioning errors that adapters report by path, following aliases and merge keys as
// decoding does. It returns the deepest node found.
func lookupPath(node *yaml.Node, path string) *yaml.Node {
	n, _ := walkPath(node, path)
	return n
}

// pathWritten reports whether path names a node that node holds: a field written,
// not one left to its default.
func pathWritten(node *yaml.Node, path string) bool {
	_, whole := walkPath(node, path)
	return whole
}

// walkPath follows path below node as lookupPath describes, and reports whether it
// found every step.
func walkPath(node *yaml.Node, path string) (deepest *yaml.Node, whole bool) {
	cur := node
	for _, seg := range splitPath(path) {
		if cur == nil {
			return nil, false
		}
		if cur.Kind == yaml.DocumentNode && len(cur.Content) > 0 {
			cur = cur.Content[0]
		}
		cur = resolveAlias(cur)
		var next *yaml.Node
		switch {
		case seg.index >= 0 && cur.Kind == yaml.SequenceNode && seg.index < len(cur.Content):
			next = cur.Content[seg.index]
		case seg.index < 0 && cur.Kind == yaml.MappingNode:
			k, v := nodeEntry(cur, seg.key)
			next = v
			if v != nil && v.Kind == yaml.ScalarNode {
				next = k // the key's line reads better for scalars
			}
		}
		if next == nil {
			return cur, false
		}
		cur = next
	}
	return cur, cur != nil
}

type pathSeg struct {
	key   string
	index int
}

func splitPath(path string) []pathSeg {
	var out []pathSeg
	for _, part := range strings.Split(path, ".") {
		if part == "" {
			continue
		}
		for {
			open := strings.IndexByte(part, '[')
			if open < 0 {
				out = append(out, pathSeg{key: part, index: -1})
				break
			}
			if open > 0 {
				out = append(out, pathSeg{key: part[:open], index: -1})
			}
			end := strings.IndexByte(part[open:], ']')
			if end < 0 {
				break
			}
			n, err := strconv.Atoi(part[open+1 : open+end])
			if err == nil {
				out = append(out, pathSeg{index: n})
			}
			part = part[open+end+1:]
			if part == "" {
				break
			}
		}
	}
	return out
}

// mappingEntries returns the key/value pairs of a mapping node in document order.
func mappingEntries(n *yaml.Node) [][2]*yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	out := make([][2]*yaml.Node, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		out = append(out, [2]*yaml.Node{n.Content[i], n.Content[i+1]})
	}
	return out
}

// toGeneric converts a node into plain Go values (for JSON re-encoding).
func toGeneric(n *yaml.Node) (any, error) {
	var v any
	if err := n.Decode(&v); err != nil {
		return nil, err
	}
	return normalize(v), nil
}

// normalize makes yaml's map[string]any / map[any]any JSON-encodable.
func normalize(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			t[k] = normalize(x)
		}
		return t
	case map[any]any:
		m := make(map[string]any, len(t))
		for k, x := range t {
			m[fmt.Sprint(k)] = normalize(x)
		}
		return m
	case []any:
		for i, x := range t {
			t[i] = normalize(x)
		}
		return t
	}
	return v
}
