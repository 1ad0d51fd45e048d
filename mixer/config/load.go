// Package config reads a config directory layered over the embedded defaults, validates
// every document with file:line errors, and compiles it into an immutable Snapshot.
package config

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/mixer/expr"
)

//go:embed defaults/*.yaml
var embeddedDefaults embed.FS

// Defaults returns the embedded default config.
func Defaults() fs.FS {
	sub, err := fs.Sub(embeddedDefaults, "defaults")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	return sub
}

// Layer is a set of config files read in order: the defaults, then optional extra
// layers (the demo's workloads), then the user's directory.
type Layer struct {
	// Name prefixes file names in positions ("embedded:defaults").
	Name string
	FS   fs.FS
	// Default marks objects that user objects may replace or disable.
	Default bool
}

// Validator checks a compiled snapshot for one concern (for example the routing
// core's checks of mesh objects). It returns an ErrorList for positioned problems.
// It runs even when mixer objects failed to parse or compile (the snapshot then
// lacks them, and is not applied), but not while a document that may be a mesh
// object failed to parse: what refers to it would be reported as wrong.
type Validator interface {
	Validate(s *Snapshot) error
}

// ValidatorFunc adapts a function to Validator.
type ValidatorFunc func(s *Snapshot) error

// Validate implements Validator.
func (f ValidatorFunc) Validate(s *Snapshot) error { return f(s) }

// Loader reads and compiles config.
type Loader struct {
	// Dir is the user's config directory; empty means the defaults only.
	Dir string
	// Layers are read before Dir; nil means the embedded defaults alone.
	Layers     []Layer
	Adapters   *adapters.Registry
	Compiler   *expr.Compiler
	Validators []Validator
	// Preflight also runs each handler's Preflight (a list's file read and parsed)
	// and reports its errors with the rest: what sluice validate does, so that one
	// run shows them. serve meets them when it starts the handlers.
	Preflight bool
}

// DefaultLayers returns the embedded defaults as the only layer.
func DefaultLayers() []Layer {
	return []Layer{{Name: "embedded:defaults", FS: Defaults(), Default: true}}
}

// Load reads every layer and the directory and compiles them. The error is an
// ErrorList of every problem found: those of every document, and those of the later
// stages (layering, compiling, the validators) over the documents that parsed. A
// later stage does not report what follows from a document that failed (see
// failure); the validators, which see only the snapshot, do not run while a
// document that may be a mesh object failed.
func (l *Loader) Load() (*Snapshot, error) {
	layers := l.Layers
	if layers == nil {
		layers = DefaultLayers()
	}
	var c collector
	var objs []*Object
	var failed failures
	var raw bytes.Buffer
	read := func(index int, o []*Object, f []*failure) {
		for _, x := range o {
			x.layer = index
		}
		for _, x := range f {
			x.layer = index
			failed.add(x)
		}
		objs = append(objs, o...)
	}
	for i, layer := range layers {
		o, f, err := readFS(layer.FS, layer.Name, layer.Default, &raw)
		c.addErr(Position{File: layer.Name}, err)
		read(i, o, f)
	}
	if l.Dir != "" {
		o, f, err := readDir(l.Dir, &raw)
		c.addErr(Position{File: l.Dir}, err)
		read(len(layers), o, f)
	}
	merged, disabled, err := layer(objs, &failed)
	c.addErr(Position{}, err)
	s := &Snapshot{Objects: merged, Hash: contentHash(raw.Bytes()), disabled: disabled}
	c.addErr(Position{}, compile(s, l.Adapters, l.Compiler, &failed, l.Preflight))
	if !failed.couldBeMesh() {
		for _, v := range l.Validators {
			c.addErr(Position{}, v.Validate(s))
		}
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	return s, nil
}

// IsConfigFile reports whether a directory entry name is read as config.
func IsConfigFile(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	ext := strings.ToLower(path.Ext(name))
	return ext == ".yaml" || ext == ".yml"
}

// readDir reads the config files of dir: the objects that parsed, and what is known
// of the documents that did not.
func readDir(dir string, raw *bytes.Buffer) ([]*Object, []*failure, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, []*failure{{anything: true}}, fmt.Errorf("read config directory: %w", err)
	}
	var c collector
	var out []*Object
	var failed []*failure
	for _, e := range entries {
		if !IsConfigFile(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		info, err := os.Stat(p) // follows symlinks, as Kubernetes ConfigMap mounts use them
		if err != nil {
			c.add(Position{File: p}, "%v", err)
			failed = append(failed, &failure{anything: true})
			continue
		}
		if info.IsDir() {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			c.add(Position{File: p}, "%v", err)
			failed = append(failed, &failure{anything: true})
			continue
		}
		raw.WriteString(p)
		raw.Write(data)
		objs, f, err := parseFile(p, data)
		c.addErr(Position{File: p}, err)
		out = append(out, objs...)
		failed = append(failed, f...)
	}
	return out, failed, c.err()
}

func readFS(fsys fs.FS, name string, isDefault bool, raw *bytes.Buffer) ([]*Object, []*failure, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, []*failure{{anything: true, isDefault: isDefault}}, fmt.Errorf("read %s: %w", name, err)
	}
	var c collector
	var out []*Object
	var failed []*failure
	for _, e := range entries {
		if e.IsDir() || !IsConfigFile(e.Name()) {
			continue
		}
		file := name + "/" + e.Name()
		data, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			c.add(Position{File: file}, "read %s: %v", file, err)
			failed = append(failed, &failure{anything: true, isDefault: isDefault})
			continue
		}
		raw.WriteString(file)
		raw.Write(data)
		objs, f, err := parseFile(file, data)
		c.addErr(Position{File: file}, err)
		for _, o := range objs {
			o.Default = isDefault
		}
		for _, x := range f {
			x.isDefault = isDefault
		}
		out = append(out, objs...)
		failed = append(failed, f...)
	}
	return out, failed, c.err()
}

// ParseFile parses every document of a multi-document YAML file.
func ParseFile(file string, data []byte) ([]*Object, error) {
	objs, _, err := parseFile(file, data)
	return objs, err
}

// parseFile is ParseFile that also returns what is known of the documents that did
// not parse. A YAML syntax error ends yaml.v3's reading of a file, so the file is
// then read again one document at a time: the documents after a broken one are
// still read and checked.
func parseFile(file string, data []byte) ([]*Object, []*failure, error) {
	objs, failed, broken, err := parseDocuments(file, data, 0)
	if !broken {
		return objs, failed, err
	}
	var c collector
	var docObjs []*Object
	var docFailed []*failure
	found := false
	for _, d := range splitDocuments(data) {
		o, f, b, err := parseDocuments(file, d.data, d.line-1)
		c.addErr(Position{File: file, Line: d.line}, err)
		docObjs = append(docObjs, o...)
		docFailed = append(docFailed, f...)
		found = found || b
	}
	if !found {
		// Read one at a time, the documents hold no syntax error: the stream's
		// is in how they follow each other, and stands.
		return objs, failed, err
	}
	return docObjs, docFailed, c.err()
}

// parseDocuments parses the documents of data, whose first line is line offset+1 of
// file. broken reports a YAML syntax error, after which nothing more is read.
func parseDocuments(file string, data []byte, offset int) (objs []*Object, failed []*failure, broken bool, err error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var c collector
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// The decoder cannot resynchronise after a syntax error. What the
			// unread part defines is not known: it may define any name it mentions.
			for _, e := range Errors(yamlError(file, nil, err)) {
				if e.Pos.Line > 0 {
					e.Pos.Line += offset
				}
				c.errs = append(c.errs, e)
			}
			failed = append(failed, &failure{words: textWords(data)})
			broken = true
			break
		}
		shiftLines(&doc, offset)
		if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
			continue
		}
		root := doc.Content[0]
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			continue // an empty document between separators
		}
		o, f, err := parseDocument(file, root)
		if err != nil {
			c.addErr(Position{File: file, Line: root.Line}, err)
			if f != nil {
				failed = append(failed, f)
			}
			continue
		}
		objs = append(objs, o)
	}
	return objs, failed, broken, c.err()
}

// shiftLines adds offset to the line of every node of a document.
func shiftLines(n *yaml.Node, offset int) {
	if offset == 0 || n == nil {
		return
	}
	n.Line += offset
	for _, c := range n.Content { // not Alias: it points into the same document
		shiftLines(c, offset)
	}
}

// documentText is one YAML document of a file: its text and its first line.
type documentText struct {
	line int
	data []byte
}

// splitDocuments splits a YAML stream into its documents at the markers that begin
// one ("---") and end one ("..."). A marker at the start of a line cannot be part
// of a document's content (not even of a quoted or block scalar: YAML forbids it
// there), so each document can be read on its own, as it would be in the stream.
// Blank, comment and directive lines before a "---" stay with the document it begins.
func splitDocuments(data []byte) []documentText {
	var out []documentText
	cur := documentText{line: 1}
	content := false
	flush := func(next int) {
		if len(cur.data) > 0 {
			out = append(out, cur)
		}
		cur = documentText{line: next}
		content = false
	}
	line := 1
	for rest := data; len(rest) > 0; line++ {
		l := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			l = rest[:i+1]
		}
		rest = rest[len(l):]
		switch {
		case isMarker(l, "---"):
			if content {
				flush(line)
			}
			cur.data = append(cur.data, l...)
			content = true
		case isMarker(l, "..."):
			cur.data = append(cur.data, l...)
			flush(line + 1)
		default:
			cur.data = append(cur.data, l...)
			t := bytes.TrimSpace(l)
			if len(t) > 0 && t[0] != '#' && l[0] != '%' {
				content = true
			}
		}
	}
	flush(line)
	return out
}

// isMarker reports whether line is the document marker m ("---" or "...") followed
// by a blank or its end.
func isMarker(line []byte, m string) bool {
	if !bytes.HasPrefix(line, []byte(m)) {
		return false
	}
	rest := line[len(m):]
	return len(rest) == 0 || rest[0] == ' ' || rest[0] == '\t' || rest[0] == '\r' || rest[0] == '\n'
}

// layer applies replacement and disabling: a user object with a default's key replaces
// it, or removes it when annotated sluice.dev/disabled: "true"; a default of a later
// layer replaces one of an earlier layer (as --redis-addr replaces the quota backend).
// It also returns the objects that disabled one. Of two objects with one key, the
// first read is kept (and the other reported), so that the later stages still check
// it. An object that a document that failed may replace or disable is left out, and
// added to failed: whether it would be there is not known.
func layer(objs []*Object, failed *failures) (out, disabled []*Object, err error) {
	var c collector
	byKey := map[Key]*Object{}
	domains := map[string]*Object{}
	dups := map[*Object]bool{}
	for _, o := range objs {
		if o.Family == FamilyRateLimit {
			if prev, dup := domains[o.Name]; dup && prev.Default == o.Default && prev.layer == o.layer {
				c.add(o.Pos, "rate-limit domain %q is already defined at %s", o.Name, prev.Pos)
				dups[o] = true
				continue
			}
			domains[o.Name] = o
		}
		prev, exists := byKey[o.Key]
		switch {
		case !exists:
			byKey[o.Key] = o
		case prev.Default && !o.Default, prev.Default && o.Default && o.layer > prev.layer:
			byKey[o.Key] = o
		case o.Family != FamilyRateLimit:
			c.add(o.Pos, "%s is already defined at %s", o.Key, prev.Pos)
			dups[o] = true
		}
	}
	duplicateFailures(&c, objs, failed, dups)
	out = make([]*Object, 0, len(byKey))
	for _, o := range byKey {
		if failed.replaced(o) {
			failed.addKey(o.Key, o.Family)
			continue
		}
		if o.Disabled() {
			disabled = append(disabled, o)
			continue
		}
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Key, out[j].Key
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	return out, disabled, c.err()
}
