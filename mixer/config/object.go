package config

import (
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	networking "istio.io/api/networking/v1"
)

// Family is one of the three kinds of document a config directory holds.
type Family uint8

// Document families (DESIGN.md §5).
const (
	FamilyMixer Family = iota + 1
	FamilyMesh
	FamilyRateLimit
)

func (f Family) String() string {
	switch f {
	case FamilyMixer:
		return "mixer"
	case FamilyMesh:
		return "mesh"
	case FamilyRateLimit:
		return "ratelimit"
	}
	return "unknown"
}

// API groups.
const (
	MixerAPIVersion = "sluice.dev/v1alpha1"
	meshGroup       = "networking.istio.io"
)

// Kinds.
const (
	KindHandler         = "Handler"
	KindInstance        = "Instance"
	KindRule            = "Rule"
	KindWorkloadEntry   = "WorkloadEntry"
	KindServiceEntry    = "ServiceEntry"
	KindVirtualService  = "VirtualService"
	KindDestinationRule = "DestinationRule"
	// KindRateLimit is the kind Sluice gives envoyproxy/ratelimit documents, whose
	// name is their domain.
	KindRateLimit = "RateLimitConfig"
)

// Namespaces.
const (
	DefaultNamespace = "default"
	SystemNamespace  = "sluice-system"
	// DisabledAnnotation on an object that replaces a default removes the default.
	DisabledAnnotation = "sluice.dev/disabled"
)

// Key identifies an object; an object with a default's key replaces the default.
type Key struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

func (k Key) String() string { return k.Kind + " " + k.Namespace + "/" + k.Name }

// Object is one config document.
type Object struct {
	Key
	Family      Family            `json:"-"`
	APIVersion  string            `json:"apiVersion,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// Default marks an object of the embedded defaults.
	Default bool     `json:"default,omitempty"`
	Pos     Position `json:"source"`
	// Spec is the decoded spec: *HandlerSpec, *InstanceSpec, *RuleSpec, an istio.io/api
	// networking message, or *RateLimitConfig.
	Spec any `json:"spec"`
	// node is the spec's YAML, for positioning errors found after decoding.
	node *yaml.Node
	// layer is the index of the layer the object was read from (the directory last).
	layer int
}

// MarshalJSON encodes mesh specs with protojson, the form Istio users know.
func (o *Object) MarshalJSON() ([]byte, error) {
	type plain Object
	if m, ok := o.Spec.(proto.Message); ok {
		js, err := protojson.Marshal(m)
		if err != nil {
			return nil, err
		}
		cp := plain(*o)
		cp.Spec = json.RawMessage(js)
		return json.Marshal(&cp)
	}
	return json.Marshal((*plain)(o))
}

// PosOf returns the position of the spec field at path ("http[0].route[1].weight"),
// or the nearest enclosing field that exists.
func (o *Object) PosOf(path string) Position {
	n := lookupPath(o.node, path)
	if n == nil {
		return o.Pos
	}
	return Position{File: o.Pos.File, Line: n.Line}
}

// Disabled reports whether the object carries sluice.dev/disabled: "true".
func (o *Object) Disabled() bool { return o.Annotations[DisabledAnnotation] == "true" }

// HandlerSpec is the spec of a Handler: a configured adapter.
type HandlerSpec struct {
	Adapter string    `yaml:"adapter" json:"adapter"`
	Params  yaml.Node `yaml:"params" json:"-"`
	// paramsType is the adapter's params type, once the handler is compiled: its
	// fields tagged sluice:"secret" are hidden whatever their names.
	paramsType reflect.Type
}

// InstanceSpec is the spec of an Instance: a template filled by expressions.
type InstanceSpec struct {
	Template string    `yaml:"template" json:"template"`
	Params   yaml.Node `yaml:"params" json:"-"`
}

// MarshalJSON shows the params as data in /api/config, with their secrets hidden
// (see redactSecrets): the admin port is the one every scraper reaches.
func (h *HandlerSpec) MarshalJSON() ([]byte, error) {
	params := nodeData(&h.Params)
	if h.paramsType != nil {
		params = redactTagged(params, h.paramsType)
	}
	return json.Marshal(map[string]any{"adapter": h.Adapter, "params": redactSecrets(params)})
}

// Redacted is what /api/config shows in place of a secret.
const Redacted = "[redacted]"

// secretField matches the names of params that hold secrets in any adapter:
// redisquota's password, and the apiKey, accessKey, privateKey, token, secret,
// credentials, pass or auth fields a plugin's params would have.
var secretField = regexp.MustCompile(`(?i)(password|passwd|secret|token|api_?key|access_?key|private_?key|credential|^pass$|^auth$)`)

// redactSecrets returns params data with the values of secret fields replaced by
// Redacted, and the password of every URL (redis://:pw@host) hidden as url.URL's
// Redacted does. The data is decoded afresh for each view, so it is changed in place.
func redactSecrets(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if secretField.MatchString(k) && x != nil {
				v[k] = Redacted
				continue
			}
			v[k] = redactSecrets(x)
		}
	case []any:
		for i, x := range v {
			v[i] = redactSecrets(x)
		}
	case string:
		return redactURL(v)
	}
	return v
}

// redactTagged replaces by Redacted the values of params data v, decoded into
// type t, that t's fields tagged sluice:"secret" hold (see adapters.Params).
func redactTagged(v any, t reflect.Type) any {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return v
		}
		fields := map[string]reflect.StructField{}
		collectFields(t, fields)
		for k, x := range m {
			f, known := fields[k]
			switch {
			case !known || x == nil:
			case slices.Contains(strings.Split(f.Tag.Get("sluice"), ","), "secret"):
				m[k] = Redacted
			default:
				m[k] = redactTagged(x, f.Type)
			}
		}
	case reflect.Slice, reflect.Array:
		if l, ok := v.([]any); ok {
			for i, x := range l {
				l[i] = redactTagged(x, t.Elem())
			}
		}
	case reflect.Map:
		if m, ok := v.(map[string]any); ok {
			for k, x := range m {
				m[k] = redactTagged(x, t.Elem())
			}
		}
	}
	return v
}

// redactURL hides the password of a URL; other strings are returned as they are.
func redactURL(s string) string {
	if !strings.Contains(s, "://") || !strings.Contains(s, "@") {
		return s
	}
	u, err := url.Parse(s)
	if err != nil {
		// A URL too broken to parse may still hold credentials: hide what could.
		return Redacted
	}
	return u.Redacted()
}

// MarshalJSON shows the params as data in /api/config.
func (i *InstanceSpec) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{"template": i.Template, "params": nodeData(&i.Params)})
}

func nodeData(n *yaml.Node) any {
	if n.Kind == 0 {
		return nil
	}
	v, err := toGeneric(n)
	if err != nil {
		return nil
	}
	return v
}

// RuleSpec is the spec of a Rule.
type RuleSpec struct {
	// Match is a CEL expression; empty matches everything.
	Match   string       `yaml:"match" json:"match,omitempty"`
	Actions []ActionSpec `yaml:"actions" json:"actions"`
}

// ActionSpec sends instances to a handler. Names are NAME (the rule's namespace, then
// sluice-system) or NAMESPACE/NAME.
type ActionSpec struct {
	Handler   string   `yaml:"handler" json:"handler"`
	Instances []string `yaml:"instances" json:"instances"`
}

// meshKinds maps Istio kinds to their spec messages.
var meshKinds = map[string]func() proto.Message{
	KindWorkloadEntry:   func() proto.Message { return &networking.WorkloadEntry{} },
	KindServiceEntry:    func() proto.Message { return &networking.ServiceEntry{} },
	KindVirtualService:  func() proto.Message { return &networking.VirtualService{} },
	KindDestinationRule: func() proto.Message { return &networking.DestinationRule{} },
}

var meshVersions = map[string]bool{"v1": true, "v1beta1": true, "v1alpha3": true}

// metadata is the Kubernetes object metadata Sluice reads; the other fields that
// kubectl prints are accepted and ignored so that exported objects load as they are.
type metadata struct {
	Name              string            `yaml:"name"`
	Namespace         string            `yaml:"namespace"`
	Labels            map[string]string `yaml:"labels"`
	Annotations       map[string]string `yaml:"annotations"`
	GenerateName      yaml.Node         `yaml:"generateName"`
	UID               yaml.Node         `yaml:"uid"`
	ResourceVersion   yaml.Node         `yaml:"resourceVersion"`
	Generation        yaml.Node         `yaml:"generation"`
	CreationTimestamp yaml.Node         `yaml:"creationTimestamp"`
	ManagedFields     yaml.Node         `yaml:"managedFields"`
	OwnerReferences   yaml.Node         `yaml:"ownerReferences"`
	Finalizers        yaml.Node         `yaml:"finalizers"`
	SelfLink          yaml.Node         `yaml:"selfLink"`
}

// document is the top level of a Kubernetes-style object.
type document struct {
	APIVersion string    `yaml:"apiVersion"`
	Kind       string    `yaml:"kind"`
	Metadata   metadata  `yaml:"metadata"`
	Spec       yaml.Node `yaml:"spec"`
	Status     yaml.Node `yaml:"status"`
}

var dnsName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

// parseDocument turns one YAML document into an Object. On an error it returns
// what is known of the document instead.
func parseDocument(file string, root *yaml.Node) (*Object, *failure, error) {
	if root.Kind != yaml.MappingNode {
		return nil, &failure{words: nodeWords(root)}, &Error{Pos: Position{file, root.Line}, Msg: "a config document must be a mapping"}
	}
	if isRateLimitDoc(root) {
		return parseRateLimit(file, root)
	}
	var doc document
	var c collector
	decodeInto(&c, file, root, &doc)
	if len(c.errs) > 0 {
		// A top level that did not decode (a misspelt metadata) would be reported
		// again as missing; the spec is not read either.
		return nil, documentFailure(&doc, root), c.err()
	}
	pos := Position{File: file, Line: root.Line}
	unknown := func(msg string) (*Object, *failure, error) {
		return nil, documentFailure(&doc, root), &Error{Pos: pos, Msg: msg}
	}
	if doc.APIVersion == "" || doc.Kind == "" {
		return unknown("a document needs apiVersion and kind (or domain and descriptors for a rate-limit config)")
	}
	group, version, _ := strings.Cut(doc.APIVersion, "/")
	var family Family
	var spec any
	switch {
	case doc.APIVersion == MixerAPIVersion:
		family = FamilyMixer
		switch doc.Kind {
		case KindHandler:
			spec = &HandlerSpec{}
		case KindInstance:
			spec = &InstanceSpec{}
		case KindRule:
			spec = &RuleSpec{}
		default:
			return unknown(fmt.Sprintf("unknown kind %q for %s (known: Handler, Instance, Rule)", doc.Kind, MixerAPIVersion))
		}
	case group == meshGroup && meshVersions[version]:
		family = FamilyMesh
		newMsg, ok := meshKinds[doc.Kind]
		if !ok {
			return unknown(fmt.Sprintf("kind %q of %s is not supported (supported: %s)", doc.Kind, meshGroup, strings.Join(sortedKeys(meshKinds), ", ")))
		}
		spec = newMsg()
	default:
		return unknown(fmt.Sprintf("unknown apiVersion %q (known: %s, %s/v1)", doc.APIVersion, MixerAPIVersion, meshGroup))
	}
	o := &Object{
		Key:         Key{Kind: doc.Kind, Namespace: doc.Metadata.Namespace, Name: doc.Metadata.Name},
		Family:      family,
		APIVersion:  doc.APIVersion,
		Labels:      doc.Metadata.Labels,
		Annotations: doc.Metadata.Annotations,
		Pos:         pos,
		Spec:        spec,
		node:        &doc.Spec,
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	failed := func() (*Object, *failure, error) {
		return nil, &failure{key: o.Key, known: true, family: family, pos: pos}, c.err()
	}
	if o.Name == "" {
		c.add(pos, "%s has no metadata.name", o.Kind)
	} else if len(o.Name) > 253 || !dnsName.MatchString(o.Name) {
		c.add(pos, "metadata.name %q is not a lower-case DNS name", o.Name)
	}
	if !dnsName.MatchString(o.Namespace) || len(o.Namespace) > 63 {
		c.add(pos, "metadata.namespace %q is not a lower-case DNS label", o.Namespace)
	}
	if doc.Spec.Kind == 0 {
		c.add(pos, "%s %s has no spec", o.Kind, o.Name)
		return failed()
	}
	if msg, ok := spec.(proto.Message); ok {
		c.addErr(pos, decodeProto(file, &doc.Spec, msg))
	} else {
		c.addErr(pos, decodeStrict(file, &doc.Spec, spec))
	}
	if len(c.errs) > 0 {
		return failed()
	}
	return o, nil, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// decodeProto decodes a YAML spec into an Istio message. Unknown fields are reported
// by name at their line first; protojson then checks the values.
//
// The values are checked without the unknown fields, so that both are reported in
// one load; protojson stops at its first error.
func decodeProto(file string, node *yaml.Node, msg proto.Message) error {
	var c collector
	unknown := map[*yaml.Node]bool{}
	checkProtoFields(&c, file, node, msg.ProtoReflect().Descriptor(), "", unknown)
	normalizeDurations(node, msg.ProtoReflect().Descriptor())
	v, err := toGeneric(withoutKeys(node, unknown))
	if err != nil {
		c.addErr(Position{file, node.Line}, yamlError(file, node, err))
		return c.err()
	}
	js, err := json.Marshal(v)
	if err != nil {
		c.add(Position{file, node.Line}, "%s", err.Error())
		return c.err()
	}
	if err := protojson.Unmarshal(js, msg); err != nil {
		text := strings.ReplaceAll(err.Error(), "\u00a0", " ")
		text = jsonOffset.ReplaceAllString(strings.TrimPrefix(text, "proto:"), "")
		line := node.Line
		if m := protoField.FindStringSubmatch(text); m != nil {
			if k := findKey(node, m[1]); k != nil {
				line = k.Line
			}
		}
		c.add(Position{file, line}, "spec: %s", strings.TrimSpace(text))
	}
	return c.err()
}

// withoutKeys returns a copy of n without the mapping entries whose keys are in
// drop, or n itself when there are none. Aliases still point into n.
func withoutKeys(n *yaml.Node, drop map[*yaml.Node]bool) *yaml.Node {
	if n == nil || len(drop) == 0 {
		return n
	}
	cp := *n
	cp.Content = make([]*yaml.Node, 0, len(n.Content))
	for i := 0; i < len(n.Content); i++ {
		if n.Kind == yaml.MappingNode && i+1 < len(n.Content) && i%2 == 0 && drop[n.Content[i]] {
			i++ // and its value
			continue
		}
		cp.Content = append(cp.Content, withoutKeys(n.Content[i], drop))
	}
	return &cp
}

var (
	// jsonOffset is protojson's position in the re-encoded JSON, meaningless to users.
	jsonOffset = regexp.MustCompile(`\(line \d+:\d+\):?`)
	protoField = regexp.MustCompile(`field ([A-Za-z_][A-Za-z0-9_]*)`)
)

// findKey returns the first mapping key named name below n, depth first.
func findKey(n *yaml.Node, name string) *yaml.Node {
	if n == nil {
		return nil
	}
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == name {
				return n.Content[i]
			}
		}
	}
	for _, c := range n.Content {
		if k := findKey(c, name); k != nil {
			return k
		}
	}
	return nil
}

// checkProtoFields reports mapping keys that are not fields of md (by JSON or proto
// name), and adds them to unknown.
func checkProtoFields(c *collector, file string, node *yaml.Node, md protoreflect.MessageDescriptor, path string, unknown map[*yaml.Node]bool) {
	if node == nil || node.Kind != yaml.MappingNode {
		return
	}
	switch md.FullName() {
	case "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.Any",
		"google.protobuf.Duration", "google.protobuf.Timestamp", "google.protobuf.ListValue":
		return
	}
	fields := md.Fields()
	for _, kv := range mappingEntries(node) {
		k, v := kv[0], kv[1]
		fd := fields.ByJSONName(k.Value)
		if fd == nil {
			fd = fields.ByName(protoreflect.Name(k.Value))
		}
		if fd == nil {
			c.add(Position{file, k.Line}, "unknown field %q%s", k.Value, inPath(path))
			unknown[k] = true
			continue
		}
		p := join(path, k.Value)
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				for _, e := range mappingEntries(v) {
					checkProtoFields(c, file, e[1], fd.MapValue().Message(), join(p, e[0].Value), unknown)
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			if fd.IsList() {
				if v.Kind == yaml.SequenceNode {
					for i, el := range v.Content {
						checkProtoFields(c, file, el, fd.Message(), fmt.Sprintf("%s[%d]", p, i), unknown)
					}
				}
			} else {
				checkProtoFields(c, file, v, fd.Message(), p, unknown)
			}
		}
	}
}
