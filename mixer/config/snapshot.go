package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/templates"
	"github.com/sluicemesh/sluice/templates/logentry"
	"github.com/sluicemesh/sluice/templates/metric"
)

// Snapshot is one compiled config version. It is immutable once loaded.
type Snapshot struct {
	// Version is assigned when the snapshot is applied; it increases by one per reload.
	Version uint64 `json:"version"`
	// Hash identifies the content of the files it was read from.
	Hash    string    `json:"hash"`
	Objects []*Object `json:"objects"`

	Instances []*Instance `json:"-"`
	Handlers  []*Handler  `json:"-"`
	Rules     []*Rule     `json:"-"`

	// disabled are the objects that disabled a default.
	disabled []*Object
}

// ByKind returns the objects of one kind, sorted by namespace and name.
func (s *Snapshot) ByKind(kind string) []*Object {
	var out []*Object
	for _, o := range s.Objects {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

// RateLimits returns the rate-limit configs by domain.
func (s *Snapshot) RateLimits() map[string]*RateLimitConfig {
	out := map[string]*RateLimitConfig{}
	for _, o := range s.ByKind(KindRateLimit) {
		out[o.Name] = o.Spec.(*RateLimitConfig)
	}
	return out
}

// Instance is a compiled Instance: its template and expressions.
type Instance struct {
	Object   *Object
	Name     string // NAMESPACE/NAME
	Template templates.Descriptor
	// Fields are the single-expression params by name.
	Fields map[string]*expr.Expression
	// Maps are the map params (dimensions, variables) in written order.
	Maps        map[string][]NamedExpr
	Fingerprint string
}

// NamedExpr is one entry of a map param.
type NamedExpr struct {
	Name string
	Expr *expr.Expression
}

// MetricInstance returns the instance as the metric template's handlers see it.
func (i *Instance) MetricInstance() metric.Instance {
	dims := i.Maps["dimensions"]
	names := make([]string, len(dims))
	for k, d := range dims {
		names[k] = d.Name
	}
	return metric.Instance{Name: i.Name, Dimensions: names, Fingerprint: i.Fingerprint}
}

// LogInstance returns the instance as the logentry template's handlers see it.
func (i *Instance) LogInstance() logentry.Instance {
	vars := i.Maps["variables"]
	names := make([]string, len(vars))
	for k, v := range vars {
		names[k] = v.Name
	}
	return logentry.Instance{Name: i.Name, Variables: names}
}

// Handler is a compiled Handler: its adapter, decoded params and bound instances.
type Handler struct {
	Object  *Object
	Name    string // NAMESPACE/NAME
	Factory *adapters.Factory
	Params  adapters.Params
	// Instances are the instances the rules send to this handler, sorted by name.
	Instances []*Instance
	// Aggregations of the bound metric instances, by instance name.
	Aggregations map[string]metric.Aggregation
	// Fingerprint changes when the handler must be rebuilt: its spec or any bound
	// instance changed.
	Fingerprint string
}

// Bound returns the bound instances in the form handlers receive them.
func (h *Handler) Bound() adapters.Instances {
	var out adapters.Instances
	for _, i := range h.Instances {
		switch i.Template.Name {
		case templates.Metric:
			out.Metrics = append(out.Metrics, i.MetricInstance())
		case templates.LogEntry:
			out.Logs = append(out.Logs, i.LogInstance())
		case templates.Authorization:
			out.Authorizations = append(out.Authorizations, i.Name)
		case templates.Quota:
			out.Quotas = append(out.Quotas, i.Name)
			if out.QuotaDimensions == nil {
				out.QuotaDimensions = map[string][]string{}
			}
			dims := []string{}
			for _, d := range i.Maps["dimensions"] {
				dims = append(dims, d.Name)
			}
			out.QuotaDimensions[i.Name] = dims
		}
	}
	return out
}

// Rule is a compiled Rule.
type Rule struct {
	Object *Object
	Name   string
	// Match is nil when the rule matches everything.
	Match   *expr.Expression
	Actions []Action
}

// Action is a resolved rule action.
type Action struct {
	Handler   *Handler
	Instances []*Instance
}

func contentHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

func qualified(ns, name string) string { return ns + "/" + name }

// compile resolves and compiles the mixer family of s. failed holds the documents
// that did not parse, and compile adds the objects that do not compile: a reference
// that may name one of them is not reported again as "not found".
func compile(s *Snapshot, reg *adapters.Registry, comp *expr.Compiler, failed *failures, preflight bool) error {
	var c collector
	instances := map[string]*Instance{}
	handlers := map[string]*Handler{}
	tmpl := map[string]templates.Descriptor{}
	for _, d := range templates.Descriptors() {
		tmpl[d.Name] = d
	}
	for _, o := range s.ByKind(KindInstance) {
		if o.Family != FamilyMixer {
			continue
		}
		inst, err := compileInstance(o, tmpl, comp)
		if err != nil {
			c.addErr(o.Pos, err)
			failed.addKey(o.Key, o.Family)
			continue
		}
		instances[inst.Name] = inst
		s.Instances = append(s.Instances, inst)
	}
	for _, o := range s.ByKind(KindHandler) {
		h, err := compileHandler(o, reg, comp)
		if err != nil {
			c.addErr(o.Pos, err)
			failed.addKey(o.Key, o.Family)
			continue
		}
		handlers[h.Name] = h
		s.Handlers = append(s.Handlers, h)
		if preflight && h.Factory.Preflight != nil {
			c.addErr(o.Pos, preflightError(h, h.Factory.Preflight(h.Params)))
		}
	}
	checkRateLimitHandler(&c, s, handlers, reg)
	bound := map[*Handler]map[*Instance]bool{}
	for _, o := range s.ByKind(KindRule) {
		spec := o.Spec.(*RuleSpec)
		r := &Rule{Object: o, Name: qualified(o.Namespace, o.Name)}
		if strings.TrimSpace(spec.Match) != "" {
			m, err := comp.Compile(spec.Match)
			if err != nil {
				c.add(o.PosOf("match"), "match: %v", err)
			} else if m.Type != expr.TypeBool && m.Type != expr.TypeDyn {
				c.add(o.PosOf("match"), "match must be a bool expression, not %s", m.Type)
			} else {
				r.Match = m
			}
		}
		if len(spec.Actions) == 0 {
			c.add(o.Pos, "rule %s has no actions", r.Name)
		}
		for ai, a := range spec.Actions {
			apath := fmt.Sprintf("actions[%d]", ai)
			h := resolve(handlers, o.Namespace, a.Handler)
			if h == nil {
				if failed.couldResolve(KindHandler, o.Namespace, a.Handler) {
					continue
				}
				c.add(o.PosOf(apath+".handler"), "handler %q not found (looked in %s)", a.Handler, lookedIn(o.Namespace, a.Handler))
				continue
			}
			act := Action{Handler: h}
			if len(a.Instances) == 0 {
				c.add(o.PosOf(apath), "action for handler %q has no instances", a.Handler)
			}
			for ii, name := range a.Instances {
				inst := resolve(instances, o.Namespace, name)
				ipos := o.PosOf(fmt.Sprintf("%s.instances[%d]", apath, ii))
				if inst == nil {
					if failed.couldResolve(KindInstance, o.Namespace, name) {
						continue
					}
					c.add(ipos, "instance %q not found (looked in %s)", name, lookedIn(o.Namespace, name))
					continue
				}
				if !h.Factory.Accepts(inst.Template.Name) {
					c.add(ipos, "handler %s (adapter %s) does not accept template %s of instance %s (it accepts %s)",
						h.Name, h.Factory.Name, inst.Template.Name, inst.Name, strings.Join(h.Factory.Templates, ", "))
					continue
				}
				act.Instances = append(act.Instances, inst)
				if bound[h] == nil {
					bound[h] = map[*Instance]bool{}
				}
				bound[h][inst] = true
			}
			r.Actions = append(r.Actions, act)
		}
		s.Rules = append(s.Rules, r)
	}
	for _, h := range s.Handlers {
		for inst := range bound[h] {
			h.Instances = append(h.Instances, inst)
		}
		sort.Slice(h.Instances, func(i, j int) bool { return h.Instances[i].Name < h.Instances[j].Name })
		if err := bindHandler(h, comp); err != nil {
			c.addErr(h.Object.Pos, err)
		}
	}
	return c.err()
}

// checkRateLimitHandler refuses rate-limit configs that nothing would count: with
// RateLimitHandler disabled, or replaced by an adapter that counts no quotas,
// every request of their domains would fail.
func checkRateLimitHandler(c *collector, s *Snapshot, handlers map[string]*Handler, reg *adapters.Registry) {
	domains := s.ByKind(KindRateLimit)
	if len(domains) == 0 {
		return
	}
	var quotaAdapters []string
	for _, n := range reg.Names() {
		if f, _ := reg.Get(n); f.Accepts(templates.Quota) {
			quotaAdapters = append(quotaAdapters, n)
		}
	}
	uses := fmt.Sprintf("the rate-limit service counts domain %q (%s)", domains[0].Name, domains[0].Pos)
	if len(domains) > 1 {
		uses += fmt.Sprintf(" and %d more", len(domains)-1)
	}
	uses += " with it"
	if h := handlers[RateLimitHandler]; h != nil {
		if !h.Factory.Accepts(templates.Quota) {
			c.add(h.Object.PosOf("adapter"), "handler %s has adapter %s, but %s: it must be a quota adapter (%s)",
				RateLimitHandler, h.Factory.Name, uses, strings.Join(quotaAdapters, ", "))
		}
		return
	}
	for _, o := range s.disabled {
		if o.Kind == KindHandler && qualified(o.Namespace, o.Name) == RateLimitHandler {
			c.add(o.Pos, "handler %s is disabled, but %s: replace it with a %s handler instead",
				RateLimitHandler, uses, strings.Join(quotaAdapters, " or "))
		}
	}
}

func lookedIn(ns, ref string) string {
	if strings.Contains(ref, "/") {
		return ref
	}
	if ns == SystemNamespace {
		return SystemNamespace
	}
	return ns + " and " + SystemNamespace
}

// resolve finds NAME in ns, then in sluice-system, or NAMESPACE/NAME exactly.
func resolve[T any](m map[string]*T, ns, ref string) *T {
	if strings.Contains(ref, "/") {
		return m[ref]
	}
	if v, ok := m[qualified(ns, ref)]; ok {
		return v
	}
	return m[qualified(SystemNamespace, ref)]
}

func compileInstance(o *Object, tmpl map[string]templates.Descriptor, comp *expr.Compiler) (*Instance, error) {
	spec := o.Spec.(*InstanceSpec)
	var c collector
	d, ok := tmpl[spec.Template]
	if !ok {
		names := make([]string, 0, len(tmpl))
		for n := range tmpl {
			names = append(names, n)
		}
		sort.Strings(names)
		c.add(o.PosOf("template"), "unknown template %q (known: %s)", spec.Template, strings.Join(names, ", "))
		return nil, c.err()
	}
	inst := &Instance{
		Object: o, Name: qualified(o.Namespace, o.Name), Template: d,
		Fields: map[string]*expr.Expression{}, Maps: map[string][]NamedExpr{},
	}
	fp := sha256.New()
	fmt.Fprintf(fp, "%s|%s|", inst.Name, d.Name)
	params := &spec.Params
	if params.Kind != 0 && params.Kind != yaml.MappingNode {
		c.add(Position{o.Pos.File, params.Line}, "params must be a mapping")
		return nil, c.err()
	}
	seen := map[string]bool{}
	file := o.Pos.File
	for _, kv := range mappingEntries(params) {
		k, v := kv[0], kv[1]
		p, ok := d.Param(k.Value)
		if !ok {
			c.add(Position{file, k.Line}, "template %s has no param %q", d.Name, k.Value)
			continue
		}
		seen[p.Name] = true
		if p.Map {
			if v.Kind != yaml.MappingNode {
				c.add(Position{file, v.Line}, "%s must be a mapping of names to expressions", p.Name)
				continue
			}
			names := map[string]bool{}
			for _, e := range mappingEntries(v) {
				if names[e[0].Value] {
					c.add(Position{file, e[0].Line}, "%s.%s is given twice", p.Name, e[0].Value)
					continue
				}
				names[e[0].Value] = true
				x, err := compileParam(comp, p, e[1])
				if err != nil {
					c.add(Position{file, e[1].Line}, "%s.%s: %v", p.Name, e[0].Value, err)
					continue
				}
				inst.Maps[p.Name] = append(inst.Maps[p.Name], NamedExpr{Name: e[0].Value, Expr: x})
				fmt.Fprintf(fp, "%s.%s=%s|", p.Name, e[0].Value, x.Source)
			}
			continue
		}
		x, err := compileParam(comp, p, v)
		if err != nil {
			c.add(Position{file, v.Line}, "%s: %v", p.Name, err)
			continue
		}
		inst.Fields[p.Name] = x
		fmt.Fprintf(fp, "%s=%s|", p.Name, x.Source)
	}
	for _, p := range d.Params {
		if seen[p.Name] {
			continue
		}
		switch {
		case p.Required:
			c.add(o.PosOf("params"), "template %s needs param %q", d.Name, p.Name)
		case p.Default != "" && !p.Map:
			x, err := comp.Compile(p.Default)
			if err != nil {
				return nil, fmt.Errorf("default of %s.%s: %w", d.Name, p.Name, err)
			}
			inst.Fields[p.Name] = x
			fmt.Fprintf(fp, "%s=%s|", p.Name, x.Source)
		}
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	inst.Fingerprint = hex.EncodeToString(fp.Sum(nil)[:8])
	return inst, nil
}

func compileParam(comp *expr.Compiler, p templates.Param, n *yaml.Node) (*expr.Expression, error) {
	if n.Kind != yaml.ScalarNode {
		return nil, fmt.Errorf("must be an expression string")
	}
	x, err := comp.Compile(n.Value)
	if err != nil {
		return nil, err
	}
	if !typeFits(p.Type, x.Type) {
		return nil, fmt.Errorf("%q is %s; %s needs %s", n.Value, x.Type, p.Name, p.Type)
	}
	return x, nil
}

func typeFits(want templates.ValueType, got expr.Type) bool {
	if got == expr.TypeDyn {
		return true
	}
	switch want {
	case templates.Numeric:
		return got == expr.TypeInt || got == expr.TypeDouble || got == expr.TypeDuration || got == expr.TypeBool
	case templates.String:
		return got == expr.TypeString
	case templates.Timestamp:
		return got == expr.TypeTimestamp
	case templates.Any:
		return got != expr.TypeMap && got != expr.TypeList
	}
	return false
}

func compileHandler(o *Object, reg *adapters.Registry, comp *expr.Compiler) (*Handler, error) {
	spec := o.Spec.(*HandlerSpec)
	f, ok := reg.Get(spec.Adapter)
	if !ok {
		return nil, &Error{Pos: o.PosOf("adapter"), Msg: fmt.Sprintf("unknown adapter %q (known: %s)", spec.Adapter, reg)}
	}
	params := f.NewParams()
	spec.paramsType = reflect.TypeOf(params)
	var c collector // the unknown keys of params, if that is all that is wrong
	if spec.Params.Kind != 0 {
		if _, clean := decodeValues(&c, o.Pos.File, &spec.Params, params); !clean {
			// A value that did not decode was left at its zero value: the adapter's
			// checks would report that as a mistake of its own.
			return nil, c.err()
		}
	}
	if fp, ok := params.(adapters.FileParams); ok && !o.Default {
		// A relative path names a file beside the config file; the defaults'
		// files are embedded, with nothing beside them.
		fp.ResolveFiles(filepath.Dir(o.Pos.File))
	}
	report := func(err error) {
		if err != nil && len(c.errs) > 0 {
			err = aboutWritten(&spec.Params, err)
		}
		if err != nil {
			c.addErr(o.PosOf("params"), paramsError(o, err))
		}
	}
	report(params.Validate())
	if ep, ok := params.(adapters.ExprParams); ok && comp != nil {
		report(ep.ValidateExprs(comp))
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	return &Handler{Object: o, Name: qualified(o.Namespace, o.Name), Factory: f, Params: params}, nil
}

// aboutWritten keeps of an adapter's validation errors those about fields
// written in params. When params has an unknown key, an error about a field
// left out, or about params as a whole, may be that key's consequence (the
// field misspelt), and the unknown key is reported already.
func aboutWritten(params *yaml.Node, err error) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var kept []error
		for _, e := range j.Unwrap() {
			if e != nil {
				if e = aboutWritten(params, e); e != nil {
					kept = append(kept, e)
				}
			}
		}
		return errors.Join(kept...)
	}
	var fe *adapters.FieldError
	if errors.As(err, &fe) && pathWritten(params, fe.Path) {
		return err
	}
	return nil
}

// paramsError positions an adapter's validation error at the field it names. An
// adapter reports several problems at once as errors.Join of them: each is
// positioned on its own.
func paramsError(o *Object, err error) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var l ErrorList
		for _, e := range j.Unwrap() {
			if e != nil {
				l = append(l, Errors(paramsError(o, e))...)
			}
		}
		if len(l) > 0 {
			return l
		}
	}
	var fe *adapters.FieldError
	if errors.As(err, &fe) {
		n := lookupPath(&o.Spec.(*HandlerSpec).Params, fe.Path)
		pos := o.PosOf("params")
		if n != nil {
			pos.Line = n.Line
		}
		return &Error{Pos: pos, Msg: fmt.Sprintf("params.%s: %v", fe.Path, fe.Err)}
	}
	return &Error{Pos: o.PosOf("params"), Msg: "params: " + err.Error()}
}

// preflightError positions the errors of a handler's Preflight as paramsError
// does, naming the handler: a list file's own errors carry the file's line too.
func preflightError(h *Handler, err error) error {
	if err == nil {
		return nil
	}
	l := Errors(paramsError(h.Object, err))
	for _, e := range l {
		e.Msg = "handler " + h.Name + ": " + e.Msg
	}
	return l
}

// bindHandler asks the adapter to accept the bound instances and fingerprints the result.
func bindHandler(h *Handler, comp adapters.Compiler) error {
	bound := h.Bound()
	if h.Factory.Bind != nil {
		aggs, err := h.Factory.Bind(adapters.Binding{Params: h.Params, Instances: bound, Compiler: comp})
		if err != nil {
			return paramsError(h.Object, err)
		}
		h.Aggregations = aggs
	}
	for _, m := range bound.Metrics {
		agg, ok := h.Aggregations[m.Name]
		if !ok {
			return &Error{Pos: h.Object.Pos, Msg: fmt.Sprintf("adapter %s gave no aggregation for metric instance %s", h.Factory.Name, m.Name)}
		}
		if err := agg.Validate(); err != nil {
			return &Error{Pos: h.Object.Pos, Msg: fmt.Sprintf("aggregation of %s: %v", m.Name, err)}
		}
	}
	fp := sha256.New()
	fmt.Fprintf(fp, "%s|%s|", h.Name, h.Factory.Name)
	params, err := yaml.Marshal(&h.Object.Spec.(*HandlerSpec).Params)
	if err == nil {
		fp.Write(params)
	}
	for _, i := range h.Instances {
		fmt.Fprintf(fp, "|%s", i.Fingerprint)
	}
	h.Fingerprint = hex.EncodeToString(fp.Sum(nil)[:8])
	return nil
}

// MeshSpec returns the typed spec of a mesh object.
func MeshSpec[T proto.Message](o *Object) (T, bool) {
	t, ok := o.Spec.(T)
	return t, ok
}
