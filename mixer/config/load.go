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
}

// DefaultLayers returns the embedded defaults as the only layer.
func DefaultLayers() []Layer {
	return []Layer{{Name: "embedded:defaults", FS: Defaults(), Default: true}}
}

// Load reads every layer and the directory and compiles them. The error is an
// ErrorList of every problem found.
func (l *Loader) Load() (*Snapshot, error) {
	layers := l.Layers
	if layers == nil {
		layers = DefaultLayers()
	}
	var c collector
	var objs []*Object
	var raw bytes.Buffer
	for i, layer := range layers {
		o, err := readFS(layer.FS, layer.Name, layer.Default, &raw)
		c.addErr(Position{File: layer.Name}, err)
		for _, x := range o {
			x.layer = i
		}
		objs = append(objs, o...)
	}
	if l.Dir != "" {
		o, err := readDir(l.Dir, &raw)
		if err != nil {
			c.addErr(Position{File: l.Dir}, err)
		}
		for _, x := range o {
			x.layer = len(layers)
		}
		objs = append(objs, o...)
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	merged, disabled, err := layer(objs)
	if err != nil {
		return nil, err
	}
	s := &Snapshot{Objects: merged, Hash: contentHash(raw.Bytes()), disabled: disabled}
	if err := compile(s, l.Adapters, l.Compiler); err != nil {
		return nil, err
	}
	for _, v := range l.Validators {
		if err := v.Validate(s); err != nil {
			c.addErr(Position{}, err)
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

func readDir(dir string, raw *bytes.Buffer) ([]*Object, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read config directory: %w", err)
	}
	var c collector
	var out []*Object
	for _, e := range entries {
		if !IsConfigFile(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		info, err := os.Stat(p) // follows symlinks, as Kubernetes ConfigMap mounts use them
		if err != nil {
			c.add(Position{File: p}, "%v", err)
			continue
		}
		if info.IsDir() {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			c.add(Position{File: p}, "%v", err)
			continue
		}
		raw.WriteString(p)
		raw.Write(data)
		objs, err := ParseFile(p, data)
		c.addErr(Position{File: p}, err)
		out = append(out, objs...)
	}
	return out, c.err()
}

func readFS(fsys fs.FS, name string, isDefault bool, raw *bytes.Buffer) ([]*Object, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	var c collector
	var out []*Object
	for _, e := range entries {
		if e.IsDir() || !IsConfigFile(e.Name()) {
			continue
		}
		data, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("read %s/%s: %w", name, e.Name(), err)
		}
		file := name + "/" + e.Name()
		raw.WriteString(file)
		raw.Write(data)
		objs, err := ParseFile(file, data)
		c.addErr(Position{File: file}, err)
		for _, o := range objs {
			o.Default = isDefault
		}
		out = append(out, objs...)
	}
	return out, c.err()
}

// ParseFile parses every document of a multi-document YAML file.
func ParseFile(file string, data []byte) ([]*Object, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var c collector
	var out []*Object
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			c.addErr(Position{File: file}, yamlError(file, nil, err))
			break // the decoder cannot resynchronise after a syntax error
		}
		if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
			continue
		}
		root := doc.Content[0]
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			continue // an empty document between separators
		}
		o, err := parseDocument(file, root)
		if err != nil {
			c.addErr(Position{File: file, Line: root.Line}, err)
			continue
		}
		out = append(out, o)
	}
	return out, c.err()
}

// layer applies replacement and disabling: a user object with a default's key replaces
// it, or removes it when annotated sluice.dev/disabled: "true"; a default of a later
// layer replaces one of an earlier layer (as --redis-addr replaces the quota backend).
// It also returns the objects that disabled one.
func layer(objs []*Object) (out, disabled []*Object, err error) {
	var c collector
	byKey := map[Key]*Object{}
	domains := map[string]*Object{}
	for _, o := range objs {
		if o.Family == FamilyRateLimit {
			if prev, dup := domains[o.Name]; dup && prev.Default == o.Default && prev.layer == o.layer {
				c.add(o.Pos, "rate-limit domain %q is already defined at %s", o.Name, prev.Pos)
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
		}
	}
	if err := c.err(); err != nil {
		return nil, nil, err
	}
	out = make([]*Object, 0, len(byKey))
	for _, o := range byKey {
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
	return out, disabled, nil
}
