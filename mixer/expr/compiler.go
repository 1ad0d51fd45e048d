// Package expr compiles CEL expressions over the attribute vocabulary. Plain attribute
// references, constants, map lookups and simple boolean tests take a fast path that never enters CEL.
package expr

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"

	"github.com/sluicemesh/sluice/mixer/attribute"
)

// Type is the static type of an expression's result.
type Type uint8

// Result types.
const (
	TypeDyn Type = iota
	TypeString
	TypeInt
	TypeDouble
	TypeBool
	TypeDuration
	TypeTimestamp
	TypeMap
	TypeList
)

func (t Type) String() string {
	return [...]string{"dyn", "string", "int", "double", "bool", "duration", "timestamp", "map", "list"}[t]
}

// Compiler turns expression text into Expressions. It is safe for concurrent use.
type Compiler struct {
	env   *cel.Env
	vocab *attribute.Vocabulary
}

// NewCompiler builds the CEL environment: every attribute of the vocabulary is a
// variable of its type, plus CEL's string, list, set and network (ip, cidr) extensions.
func NewCompiler(vocab *attribute.Vocabulary) (*Compiler, error) {
	opts := []cel.EnvOption{ext.Strings(), ext.Lists(), ext.Sets(), ext.Network(), cel.OptionalTypes()}
	for _, d := range vocab.Defs() {
		opts = append(opts, cel.Variable(d.Name, celType(d.Kind)))
	}
	env, err := cel.NewEnv(opts...)
	if err != nil {
		return nil, fmt.Errorf("build CEL environment: %w", err)
	}
	return &Compiler{env: env, vocab: vocab}, nil
}

func celType(k attribute.Kind) *cel.Type {
	switch k {
	case attribute.String:
		return cel.StringType
	case attribute.Int64:
		return cel.IntType
	case attribute.Bool:
		return cel.BoolType
	case attribute.Duration:
		return cel.DurationType
	case attribute.Timestamp:
		return cel.TimestampType
	case attribute.Map:
		return cel.MapType(cel.StringType, cel.StringType)
	}
	return cel.DynType
}

func typeOf(t *cel.Type) Type {
	switch t.Kind() {
	case types.StringKind:
		return TypeString
	case types.IntKind, types.UintKind:
		return TypeInt
	case types.DoubleKind:
		return TypeDouble
	case types.BoolKind:
		return TypeBool
	case types.DurationKind:
		return TypeDuration
	case types.TimestampKind:
		return TypeTimestamp
	case types.MapKind:
		return TypeMap
	case types.ListKind:
		return TypeList
	}
	return TypeDyn
}

// Compile parses and type-checks src. The error text is CEL's, on one line.
func (c *Compiler) Compile(src string) (*Expression, error) { return c.compile(src, true) }

// compile lets tests turn the fast path off to compare it with CEL.
func (c *Compiler) compile(src string, fast bool) (*Expression, error) {
	if strings.TrimSpace(src) == "" {
		return nil, fmt.Errorf("empty expression")
	}
	checked, iss := c.env.Compile(src)
	if iss != nil && iss.Err() != nil {
		msgs := make([]string, 0, len(iss.Errors()))
		for _, e := range iss.Errors() {
			msgs = append(msgs, fmt.Sprintf("%s (column %d)", e.Message, e.Location.Column()+1))
		}
		return nil, fmt.Errorf("%s", strings.Join(msgs, "; "))
	}
	native := checked.NativeRep()
	e := &Expression{Source: src, Type: typeOf(checked.OutputType())}
	e.refs = c.references(native)
	var err error
	if e.keyRefs, err = c.keyReferences(native); err != nil {
		return nil, err
	}
	if !fast || !c.fastPath(e, native) {
		opts := []cel.ProgramOption{cel.EvalOptions(cel.OptOptimize)}
		// An expression whose worst case, with values as large as a request can
		// bring, stays within MaxCost needs no tracking, which doubles the time of
		// a small evaluation; any other is stopped at MaxCost as it runs.
		if est, err := c.env.EstimateCost(checked, valueBounds{}); err != nil || est.Max > MaxCost {
			opts = append(opts, cel.CostLimit(MaxCost))
			e.costTracked = true
		}
		prg, err := c.env.Program(checked, opts...)
		if err != nil {
			return nil, fmt.Errorf("plan %q: %w", src, err)
		}
		e.kind = kindCEL
		e.prog = prg
	}
	return e, nil
}

// MustCompile is Compile for expressions known at build time; it panics on error.
func (c *Compiler) MustCompile(src string) *Expression {
	e, err := c.Compile(src)
	if err != nil {
		panic(err)
	}
	return e
}

// references lists the attributes an expression reads, sorted by ID.
func (c *Compiler) references(a *ast.AST) []attribute.ID {
	seen := map[attribute.ID]bool{}
	for _, r := range a.ReferenceMap() {
		if r.Name == "" || len(r.OverloadIDs) > 0 {
			continue
		}
		if id, ok := c.vocab.Lookup(r.Name); ok {
			seen[id] = true
		}
	}
	out := make([]attribute.ID, 0, len(seen))
	for id := range seen {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Ref is an attribute an expression reads: a whole attribute, or one key of a map
// attribute when every use of the map is an index by a constant key.
type Ref struct {
	ID  attribute.ID
	Key string
	// Keyed is set when Key names the one entry read.
	Keyed bool
}

// keyReferences lists the attributes read, narrowing map attributes to the constant
// keys they are indexed by, so that the check cache keys on one header rather than
// on every header (x-request-id differs for every request). A header map read by a
// key with capitals is an error, even where the whole map is read too: Envoy
// lower-cases header names, so such a key never matches, and a DENY policy or a
// rule written with it would never apply.
func (c *Compiler) keyReferences(a *ast.AST) ([]Ref, error) {
	keys := map[attribute.ID]map[string]bool{}
	whole := map[attribute.ID]bool{}
	var visit func(e ast.Expr)
	visit = func(e ast.Expr) {
		switch e.Kind() {
		case ast.IdentKind, ast.SelectKind:
			if id, ok := c.attrRef(a, e); ok {
				if id.Kind() == attribute.Map {
					whole[id] = true
				} else {
					keys[id] = nil
				}
				return
			}
			if e.Kind() == ast.SelectKind {
				sel := e.AsSelect()
				// has(request.headers.x) or request.headers.x: a keyed read.
				if id, ok := c.attrRef(a, sel.Operand()); ok && id.Kind() == attribute.Map {
					if keys[id] == nil {
						keys[id] = map[string]bool{}
					}
					keys[id][sel.FieldName()] = true
					return
				}
				visit(sel.Operand())
			}
		case ast.CallKind:
			call := e.AsCall()
			id, key, ok := c.mapIndex(a, e)
			if !ok {
				id, key, ok = c.mapMembership(a, e)
			}
			if !ok {
				// m[?"k"] and m.?k, the optional index and select, read the one
				// key too (they are not mapIndex: the fast paths would answer
				// the value, not an optional).
				id, key, ok = c.mapKeyCall(a, e, operators.OptIndex, 0, 1)
			}
			if !ok {
				id, key, ok = c.mapKeyCall(a, e, operators.OptSelect, 0, 1)
			}
			if ok {
				if keys[id] == nil {
					keys[id] = map[string]bool{}
				}
				keys[id][key] = true
				return
			}
			if call.IsMemberFunction() {
				visit(call.Target())
			}
			for _, arg := range call.Args() {
				visit(arg)
			}
		case ast.ListKind:
			for _, el := range e.AsList().Elements() {
				visit(el)
			}
		case ast.MapKind:
			for _, en := range e.AsMap().Entries() {
				me := en.AsMapEntry()
				visit(me.Key())
				visit(me.Value())
			}
		case ast.StructKind:
			// google.protobuf.StringValue{value: request.path}: a message literal's
			// fields read what their values read.
			for _, f := range e.AsStruct().Fields() {
				visit(f.AsStructField().Value())
			}
		case ast.ComprehensionKind:
			comp := e.AsComprehension()
			visit(comp.IterRange())
			visit(comp.AccuInit())
			visit(comp.LoopCondition())
			visit(comp.LoopStep())
			visit(comp.Result())
		}
	}
	visit(a.Expr())
	// The walk only narrows: an attribute the checker saw read that the walk did
	// not account for (a kind of node it does not know) is keyed whole, so that a
	// gap in the walk costs cache hits, never a wrong answer.
	for _, id := range c.references(a) {
		if _, ok := keys[id]; !ok && !whole[id] {
			whole[id] = true
		}
	}
	for _, id := range []attribute.ID{attribute.RequestHeaders, attribute.ResponseHeaders, attribute.ResponseTrailers} {
		for _, k := range slices.Sorted(maps.Keys(keys[id])) {
			if lower := strings.ToLower(k); lower != k {
				return nil, fmt.Errorf("header names arrive lower-cased, so %s[%q] never matches: write %q", id.Name(), k, lower)
			}
		}
	}
	var out []Ref
	for id, ks := range keys {
		if whole[id] {
			continue
		}
		if ks == nil {
			out = append(out, Ref{ID: id})
			continue
		}
		for k := range ks {
			out = append(out, Ref{ID: id, Key: k, Keyed: true})
		}
	}
	for id := range whole {
		out = append(out, Ref{ID: id})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ID != out[j].ID {
			return out[i].ID < out[j].ID
		}
		return out[i].Key < out[j].Key
	})
	return out, nil
}

// attrRef returns the attribute an expression node names, if it is a plain reference.
func (c *Compiler) attrRef(a *ast.AST, e ast.Expr) (attribute.ID, bool) {
	if e.Kind() != ast.IdentKind && e.Kind() != ast.SelectKind {
		return 0, false
	}
	r, ok := a.ReferenceMap()[e.ID()]
	if !ok || r.Name == "" || r.Value != nil {
		return 0, false
	}
	return c.vocab.Lookup(r.Name)
}

// fastPath recognises the shapes evaluated without CEL.
func (c *Compiler) fastPath(x *Expression, a *ast.AST) bool {
	root := a.Expr()
	if v, ok := literal(root); ok {
		x.kind, x.constant = kindConst, v
		return true
	}
	if id, ok := c.attrRef(a, root); ok {
		x.kind, x.attr = kindAttr, id
		return true
	}
	if id, key, ok := c.mapIndex(a, root); ok {
		x.kind, x.attr, x.key = kindMapIndex, id, key
		return true
	}
	if x.Type == TypeBool {
		if m, ok := c.matcher(a, root); ok {
			x.kind, x.match = kindMatch, m
			return true
		}
	}
	return false
}

func literal(e ast.Expr) (any, bool) {
	if e.Kind() != ast.LiteralKind {
		return nil, false
	}
	switch v := e.AsLiteral().(type) {
	case types.String:
		return string(v), true
	case types.Int:
		return int64(v), true
	case types.Uint:
		return int64(v), true
	case types.Double:
		return float64(v), true
	case types.Bool:
		return bool(v), true
	}
	return nil, false
}

// mapIndex recognises ATTR["KEY"] for a map attribute and a constant key.
func (c *Compiler) mapIndex(a *ast.AST, e ast.Expr) (attribute.ID, string, bool) {
	return c.mapKeyCall(a, e, operators.Index, 0, 1)
}

// mapMembership recognises "KEY" in ATTR for a map attribute and a constant key:
// like an index, it depends on that one key (and on whether the map is there),
// which the check cache's key tells apart.
func (c *Compiler) mapMembership(a *ast.AST, e ast.Expr) (attribute.ID, string, bool) {
	return c.mapKeyCall(a, e, operators.In, 1, 0)
}

// mapKeyCall recognises a call of the two-argument operator fn whose argument
// mapArg is a map attribute and keyArg a constant string.
func (c *Compiler) mapKeyCall(a *ast.AST, e ast.Expr, fn string, mapArg, keyArg int) (attribute.ID, string, bool) {
	if e.Kind() != ast.CallKind {
		return 0, "", false
	}
	call := e.AsCall()
	if call.FunctionName() != fn || len(call.Args()) != 2 {
		return 0, "", false
	}
	id, ok := c.attrRef(a, call.Args()[mapArg])
	if !ok || id.Kind() != attribute.Map {
		return 0, "", false
	}
	k, ok := literal(call.Args()[keyArg])
	ks, isStr := k.(string)
	if !ok || !isStr {
		return 0, "", false
	}
	return id, ks, true
}

// matcher compiles ==, !=, in, &&, || and ! over attributes and constants.
func (c *Compiler) matcher(a *ast.AST, e ast.Expr) (matcher, bool) {
	if v, ok := literal(e); ok {
		b, isBool := v.(bool)
		return constMatch(b), isBool
	}
	if id, ok := c.attrRef(a, e); ok && id.Kind() == attribute.Bool {
		return boolAttrMatch(id), true
	}
	if e.Kind() != ast.CallKind {
		return nil, false
	}
	call := e.AsCall()
	args := call.Args()
	switch call.FunctionName() {
	case operators.LogicalAnd, operators.LogicalOr:
		if len(args) != 2 {
			return nil, false
		}
		l, ok1 := c.matcher(a, args[0])
		r, ok2 := c.matcher(a, args[1])
		if !ok1 || !ok2 {
			return nil, false
		}
		if call.FunctionName() == operators.LogicalAnd {
			return andMatch{l, r}, true
		}
		return orMatch{l, r}, true
	case operators.LogicalNot:
		if len(args) != 1 {
			return nil, false
		}
		m, ok := c.matcher(a, args[0])
		if !ok {
			return nil, false
		}
		return notMatch{m}, true
	case operators.Equals, operators.NotEquals:
		if len(args) != 2 {
			return nil, false
		}
		ref, val, ok := c.refAndConst(a, args[0], args[1])
		if !ok {
			return nil, false
		}
		m := eqMatch{ref: ref, val: val}
		if call.FunctionName() == operators.NotEquals {
			return notMatch{m}, true
		}
		return m, true
	case operators.In:
		if len(args) != 2 || args[1].Kind() != ast.ListKind {
			return nil, false
		}
		ref, ok := c.operand(a, args[0])
		if !ok {
			return nil, false
		}
		var vals []any
		for _, el := range args[1].AsList().Elements() {
			v, ok := literal(el)
			if !ok || !sameKind(ref, v) {
				return nil, false
			}
			vals = append(vals, v)
		}
		return inMatch{ref: ref, vals: vals}, true
	}
	return nil, false
}

// operand is an attribute or a constant-key map lookup usable in a comparison.
type operand struct {
	attr attribute.ID
	key  string
	isKV bool
}

func (c *Compiler) operand(a *ast.AST, e ast.Expr) (operand, bool) {
	if id, ok := c.attrRef(a, e); ok && id.Kind() != attribute.Map {
		return operand{attr: id}, true
	}
	if id, key, ok := c.mapIndex(a, e); ok {
		return operand{attr: id, key: key, isKV: true}, true
	}
	return operand{}, false
}

func (c *Compiler) refAndConst(a *ast.AST, l, r ast.Expr) (operand, any, bool) {
	if v, ok := literal(r); ok {
		if ref, ok := c.operand(a, l); ok && sameKind(ref, v) {
			return ref, v, true
		}
	}
	if v, ok := literal(l); ok {
		if ref, ok := c.operand(a, r); ok && sameKind(ref, v) {
			return ref, v, true
		}
	}
	return operand{}, nil, false
}

// sameKind reports whether a constant compares with an operand without CEL's
// cross-type numeric rules, which the fast path does not reproduce.
func sameKind(o operand, v any) bool {
	if o.isKV {
		_, ok := v.(string)
		return ok
	}
	switch o.attr.Kind() {
	case attribute.String:
		_, ok := v.(string)
		return ok
	case attribute.Int64:
		_, ok := v.(int64)
		return ok
	case attribute.Bool:
		_, ok := v.(bool)
		return ok
	}
	return false
}

// Bounds on the values of attributes, for estimating an expression's worst cost:
// Envoy takes request headers of 60 KiB by default (96 KiB at most), and the check
// path refuses more than 1,024 headers.
const (
	maxValueSize = 96 << 10
	maxEntries   = 1024
)

// valueBounds sizes attribute values for cost estimates: strings and
// bytes up to maxValueSize, maps and lists up to maxEntries; calls cost as CEL
// reckons them.
type valueBounds struct{}

func (valueBounds) EstimateCallCost(string, string, *cost.AstNode, []cost.AstNode) *cost.CallEstimate {
	return nil
}

func (valueBounds) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	switch n.Type().Kind() {
	case types.StringKind, types.BytesKind:
		return &cost.SizeEstimate{Min: 0, Max: maxValueSize}
	case types.ListKind, types.MapKind:
		return &cost.SizeEstimate{Min: 0, Max: maxEntries}
	}
	return nil
}
