package config

import (
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// failure is a document (or a whole file) that did not parse, and what is known of
// what it would have defined. The later stages run on the objects that did parse,
// and use it to tell the consequences of its errors from mistakes of their own: a
// rule that names a handler that failed to parse is not told the handler does not
// exist, and the default that a failed object would replace is not checked in its
// place.
type failure struct {
	// key is the object's identity when known is set: its document decoded up to
	// its kind, namespace and name. Otherwise key.Kind may still name its kind
	// ("" when unknown too), and words stand in for its name.
	key   Key
	known bool
	// family is 0 when not known.
	family Family
	// words are the names that a document of unknown identity mentions: it may
	// define an object by any of them.
	words map[string]bool
	// anything is a file that could not be read, which may define anything.
	anything bool
	// isDefault and layer are those of the layer the document was read from.
	isDefault bool
	layer     int
	// pos is the document's, when known is set by its parser: a document that
	// failed still clashes with another of its identity (see duplicateFailures).
	pos Position
}

// couldDefine reports whether the failed document may be the object of key k.
func (f *failure) couldDefine(k Key) bool {
	switch {
	case f.anything:
		return true
	case f.known:
		return f.key == k
	case f.key.Kind != "" && f.key.Kind != k.Kind:
		return false
	case f.family != 0 && f.family != kindFamily(k.Kind):
		return false
	case kindFamily(k.Kind) == FamilyMesh && !f.couldBeMesh():
		// Else a mesh object left out for it would make the validators, which
		// run only while no mesh document failed, report what refers to it.
		return false
	}
	return f.words[k.Name]
}

// kindFamily returns the family of a kind, 0 for one that is none.
func kindFamily(kind string) Family {
	switch {
	case kind == KindHandler || kind == KindInstance || kind == KindRule:
		return FamilyMixer
	case kind == KindRateLimit:
		return FamilyRateLimit
	case meshKinds[kind] != nil:
		return FamilyMesh
	}
	return 0
}

// couldBeMesh reports whether the failed document may be a mesh object.
func (f *failure) couldBeMesh() bool {
	if f.anything || f.family == FamilyMesh {
		return true
	}
	if f.family != 0 {
		return false
	}
	if f.words[meshGroup] || meshKinds[f.key.Kind] != nil {
		return true
	}
	for k := range meshKinds {
		if f.words[k] {
			return true
		}
	}
	return false
}

// replaces reports whether the failed document, had it parsed, might have replaced
// or disabled o (a default, or the default of an earlier layer).
func (f *failure) replaces(o *Object) bool {
	if !o.Default || (f.isDefault && f.layer <= o.layer) {
		return false
	}
	return f.couldDefine(o.Key)
}

// failures are the documents of one load that did not parse, with the objects of
// later stages that failed (a handler that did not compile).
type failures struct{ list []*failure }

func (fs *failures) add(f *failure) { fs.list = append(fs.list, f) }

// addKey records an object of known identity that failed.
func (fs *failures) addKey(k Key, family Family) {
	fs.add(&failure{key: k, known: true, family: family})
}

func (fs *failures) couldDefine(k Key) bool {
	for _, f := range fs.list {
		if f.couldDefine(k) {
			return true
		}
	}
	return false
}

// couldResolve reports whether a reference (NAME, looked up in ns then
// sluice-system, or NAMESPACE/NAME) may name an object of kind that failed.
func (fs *failures) couldResolve(kind, ns, ref string) bool {
	if rns, name, ok := strings.Cut(ref, "/"); ok {
		return fs.couldDefine(Key{Kind: kind, Namespace: rns, Name: name})
	}
	return fs.couldDefine(Key{Kind: kind, Namespace: ns, Name: ref}) ||
		fs.couldDefine(Key{Kind: kind, Namespace: SystemNamespace, Name: ref})
}

// couldBeMesh reports whether a failed document may be a mesh object.
func (fs *failures) couldBeMesh() bool {
	for _, f := range fs.list {
		if f.couldBeMesh() {
			return true
		}
	}
	return false
}

// replaced reports whether a failed document may replace or disable o.
func (fs *failures) replaced(o *Object) bool {
	for _, f := range fs.list {
		if f.replaces(o) {
			return true
		}
	}
	return false
}

// wordPattern matches the names a document may use: DNS names, kinds, API groups.
var wordPattern = regexp.MustCompile(`[A-Za-z0-9][A-Za-z0-9._-]*`)

// addWords adds the words of text to set.
func addWords(set map[string]bool, text string) {
	for _, w := range wordPattern.FindAllString(text, -1) {
		set[w] = true
	}
}

// nodeWords returns the words of every scalar (keys included) below n.
func nodeWords(n *yaml.Node) map[string]bool {
	set := map[string]bool{}
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n == nil {
			return
		}
		if n.Kind == yaml.ScalarNode {
			addWords(set, n.Value)
		}
		for _, c := range n.Content { // not Alias: it points into the same document
			walk(c)
		}
	}
	walk(n)
	return set
}

// textWords returns the words of a document that could not be read as YAML.
func textWords(data []byte) map[string]bool {
	set := map[string]bool{}
	addWords(set, string(data))
	return set
}

// documentFailure describes a Kubernetes-style document that failed, from what
// of its top level decoded.
func documentFailure(doc *document, root *yaml.Node) *failure {
	f := &failure{words: nodeWords(root)}
	group, version, _ := strings.Cut(doc.APIVersion, "/")
	switch {
	case doc.APIVersion == MixerAPIVersion:
		f.family = FamilyMixer
		switch doc.Kind {
		case KindHandler, KindInstance, KindRule:
			f.key.Kind = doc.Kind
		}
	case group == meshGroup && meshVersions[version]:
		f.family = FamilyMesh
		if meshKinds[doc.Kind] != nil {
			f.key.Kind = doc.Kind
		}
	}
	return f
}

// duplicateFailures reports the documents that failed but define an object that
// another document of their layer defines too, as layer does for two objects: the
// first read is the definition, each later one is reported against it. Reported now,
// the clash is not found only after the document's own errors are fixed. dupObjects
// are the objects layer reported already.
func duplicateFailures(c *collector, objs []*Object, failed *failures, dupObjects map[*Object]bool) {
	type def struct {
		pos Position
		obj *Object
	}
	type group struct {
		key  Key
		defs []def
	}
	groups := map[Key]map[int]*group{} // by key and layer
	for _, f := range failed.list {
		if !f.known || f.isDefault || f.pos.File == "" {
			continue
		}
		byLayer := groups[f.key]
		if byLayer == nil {
			byLayer = map[int]*group{}
			groups[f.key] = byLayer
		}
		g := byLayer[f.layer]
		if g == nil {
			g = &group{key: f.key}
			byLayer[f.layer] = g
		}
		g.defs = append(g.defs, def{pos: f.pos})
	}
	for _, o := range objs {
		if g := groups[o.Key][o.layer]; g != nil && !o.Default {
			g.defs = append(g.defs, def{pos: o.Pos, obj: o})
		}
	}
	for _, byLayer := range groups {
		for _, g := range byLayer {
			if len(g.defs) < 2 {
				continue
			}
			// A layer's files are read in name order, its documents in file order.
			sort.Slice(g.defs, func(i, j int) bool {
				a, b := g.defs[i].pos, g.defs[j].pos
				if a.File != b.File {
					return a.File < b.File
				}
				return a.Line < b.Line
			})
			first := g.defs[0]
			for _, d := range g.defs[1:] {
				if d.obj != nil && (first.obj != nil || dupObjects[d.obj]) {
					continue // two objects: layer reported it
				}
				if g.key.Kind == KindRateLimit {
					c.add(d.pos, "rate-limit domain %q is already defined at %s", g.key.Name, first.pos)
				} else {
					c.add(d.pos, "%s is already defined at %s", g.key, first.pos)
				}
			}
		}
	}
}
