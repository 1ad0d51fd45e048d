package expr

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"

	"github.com/sluicemesh/sluice/mixer/attribute"
)

type evalKind uint8

const (
	kindConst evalKind = iota + 1
	kindAttr
	kindMapIndex
	kindMatch
	kindCEL
)

// ErrMissing is returned when an expression reads an attribute or map key that is
// not present. Dimensions take the value "unknown" on it, matches evaluate to false.
var ErrMissing = errors.New("attribute not present")

// Unknown is the value of a dimension whose expression has no value, as in Istio.
const Unknown = "unknown"

// Expression is a compiled expression. It is immutable and safe for concurrent use;
// evaluation needs an Activation owned by the calling goroutine.
type Expression struct {
	Source string
	Type   Type

	kind     evalKind
	constant any
	attr     attribute.ID
	key      string
	match    matcher
	prog     cel.Program
	refs     []attribute.ID
	keyRefs  []Ref
	// costTracked: the program stops at MaxCost (its worst case may pass it).
	costTracked bool
}

// References returns the attributes the expression reads.
func (e *Expression) References() []attribute.ID { return e.refs }

// KeyReferences returns the attributes the expression reads, map attributes narrowed
// to the constant keys they are read by.
func (e *Expression) KeyReferences() []Ref { return e.keyRefs }

// String formats a reference as name or name["key"].
func (r Ref) String() string {
	if r.Keyed {
		return r.ID.Name() + "[" + strconv.Quote(r.Key) + "]"
	}
	return r.ID.Name()
}

// IsFast reports whether the expression is evaluated without CEL.
func (e *Expression) IsFast() bool { return e.kind != kindCEL }

// Constant returns the expression's value when it is a literal.
func (e *Expression) Constant() (any, bool) { return e.constant, e.kind == kindConst }

// Attribute returns the attribute when the expression is a plain reference.
func (e *Expression) Attribute() (attribute.ID, bool) { return e.attr, e.kind == kindAttr }

// Activation resolves attribute names against one Bag for CEL. One per goroutine;
// point it at a bag with Reset before evaluating.
type Activation struct {
	vocab *attribute.Vocabulary
	bag   *attribute.Bag
}

// NewActivation returns an activation over vocab.
func NewActivation(vocab *attribute.Vocabulary) *Activation { return &Activation{vocab: vocab} }

// Reset points the activation at bag.
func (a *Activation) Reset(bag *attribute.Bag) { a.bag = bag }

// Bag returns the bag the activation reads.
func (a *Activation) Bag() *attribute.Bag { return a.bag }

// value returns the named attribute, with map attributes converted by asMap.
func (a *Activation) value(name string, asMap func(attribute.StringMap) any) (any, bool) {
	id, ok := a.vocab.Lookup(name)
	if !ok {
		return nil, false
	}
	v, ok := a.bag.Value(id)
	if !ok {
		return nil, false
	}
	if m, isMap := v.(attribute.StringMap); isMap {
		return asMap(m), true
	}
	return v, true
}

// ResolveName implements CEL's interpreter.Activation.
func (a *Activation) ResolveName(name string) (any, bool) {
	return a.value(name, func(m attribute.StringMap) any { return &lazyMap{m: m} })
}

// lazyMap is a string map attribute as CEL sees it. A key looked up by a constant
// (request.headers["x-role"], the usual policy) is found in place; the Go map that
// CEL's own map type needs is built only for what reads the whole map (iteration,
// size, equality, conversion), where building it per evaluation cost a policy
// check most of its allocations.
type lazyMap struct {
	m   attribute.StringMap
	all traits.Mapper
}

var _ traits.Mapper = (*lazyMap)(nil)

func (l *lazyMap) full() traits.Mapper {
	if l.all == nil {
		l.all = mapValue(l.m)
	}
	return l.all
}

// FindStringKey is what CEL's interpreter asks a map for a constant string key.
func (l *lazyMap) FindStringKey(key string) (any, bool) {
	v, ok := l.m.Get(key)
	if !ok {
		return nil, false
	}
	return v, true
}

// Find implements traits.Mapper.
func (l *lazyMap) Find(key ref.Val) (ref.Val, bool) {
	if k, ok := key.(types.String); ok {
		v, found := l.m.Get(string(k))
		if !found {
			return nil, false
		}
		return types.String(v), true
	}
	return l.full().Find(key)
}

// Get implements traits.Indexer.
func (l *lazyMap) Get(key ref.Val) ref.Val {
	if v, found := l.Find(key); found {
		return v
	}
	return l.full().Get(key) // CEL's own error for a missing key
}

// Contains implements traits.Container.
func (l *lazyMap) Contains(key ref.Val) ref.Val {
	if k, ok := key.(types.String); ok {
		_, found := l.m.Get(string(k))
		return types.Bool(found)
	}
	return l.full().Contains(key)
}

// Iterator implements traits.Iterable.
func (l *lazyMap) Iterator() traits.Iterator { return l.full().Iterator() }

// Size implements traits.Sizer.
func (l *lazyMap) Size() ref.Val { return l.full().Size() }

// ConvertToNative implements ref.Val.
func (l *lazyMap) ConvertToNative(t reflect.Type) (any, error) { return l.full().ConvertToNative(t) }

// ConvertToType implements ref.Val.
func (l *lazyMap) ConvertToType(t ref.Type) ref.Val { return l.full().ConvertToType(t) }

// Equal implements ref.Val.
func (l *lazyMap) Equal(other ref.Val) ref.Val { return l.full().Equal(other) }

// IsZeroValue implements traits.Zeroer, as CEL's own map does: an empty map is
// the zero value (optional.ofNonZeroValue).
func (l *lazyMap) IsZeroValue() bool { return l.m.Len() == 0 }

// String formats the map as CEL's own map does.
func (l *lazyMap) String() string { return fmt.Sprint(l.full()) }

// Type implements ref.Val.
func (l *lazyMap) Type() ref.Type { return types.MapType }

// Value implements ref.Val.
func (l *lazyMap) Value() any { return l.full().Value() }

// Parent implements CEL's interpreter.Activation.
func (a *Activation) Parent() interpreter.Activation { return nil }

func mapValue(m attribute.StringMap) traits.Mapper {
	gm := make(map[string]string, m.Len())
	m.Range(func(k, v string) bool {
		gm[k] = v
		return true
	})
	return types.NewStringStringMap(types.DefaultTypeAdapter, gm)
}

// Eval returns the value as a Go value (string, int64, float64, bool, time.Duration,
// time.Time, map[string]string or []any).
func (e *Expression) Eval(a *Activation) (any, error) {
	switch e.kind {
	case kindConst:
		return e.constant, nil
	case kindAttr:
		v, ok := a.bag.Value(e.attr)
		if !ok {
			return nil, ErrMissing
		}
		if m, isMap := v.(attribute.StringMap); isMap {
			return m.Clone(), nil
		}
		return v, nil
	case kindMapIndex:
		m, ok := a.bag.Map(e.attr)
		if !ok {
			return nil, ErrMissing
		}
		v, ok := m.Get(e.key)
		if !ok {
			return nil, ErrMissing
		}
		return v, nil
	case kindMatch:
		r := e.match.eval(a.bag)
		if r == triErr {
			return nil, ErrMissing
		}
		return r == triTrue, nil
	}
	out, _, err := e.prog.Eval(a)
	if err != nil {
		return nil, celError(err)
	}
	return native(out)
}

// MaxCost bounds the work of one evaluation, in CEL's cost units (about one per
// operation, more for operations on long strings and lists): the values an
// expression reads come from the peer, and a comprehension over a header split
// into many parts costs what its size makes it. A policy as written in this
// project's examples costs under a hundred; 100,000 is some milliseconds. An
// evaluation over it fails, as any evaluation error does: a rule that cannot be
// evaluated denies.
const MaxCost = 100_000

// celError is err, wrapping ErrMissing when the expression read an attribute or a
// map key that is absent. Other errors, a value of a type no overload takes
// included ("no such overload"), are errors of the expression, not absences.
func celError(err error) error {
	if msg := err.Error(); strings.HasPrefix(msg, "no such attribute") || strings.HasPrefix(msg, "no such key") {
		return fmt.Errorf("%w: %v", ErrMissing, err)
	}
	return err
}

func native(v ref.Val) (any, error) {
	switch t := v.(type) {
	case types.String:
		return string(t), nil
	case types.Int:
		return int64(t), nil
	case types.Uint:
		return int64(t), nil
	case types.Double:
		return float64(t), nil
	case types.Bool:
		return bool(t), nil
	case types.Duration:
		return t.Duration, nil
	case types.Timestamp:
		return t.Time, nil
	case *types.Err:
		return nil, t
	}
	if m, ok := v.(traits.Mapper); ok {
		out := map[string]string{}
		it := m.Iterator()
		for it.HasNext() == types.True {
			k := it.Next()
			out[fmt.Sprint(k.Value())] = fmt.Sprint(m.Get(k).Value())
		}
		return out, nil
	}
	if l, ok := v.(traits.Lister); ok {
		var out []any
		it := l.Iterator()
		for it.HasNext() == types.True {
			x, err := native(it.Next())
			if err != nil {
				return nil, err
			}
			out = append(out, x)
		}
		return out, nil
	}
	return v.Value(), nil
}

// EvalBool evaluates a boolean expression. A missing attribute yields false and ErrMissing.
func (e *Expression) EvalBool(a *Activation) (bool, error) {
	if e.kind == kindMatch {
		switch e.match.eval(a.bag) {
		case triTrue:
			return true, nil
		case triFalse:
			return false, nil
		}
		return false, ErrMissing
	}
	v, err := e.Eval(a)
	if err != nil {
		return false, err
	}
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf("expression %q is %T, not bool", e.Source, v)
	}
	return b, nil
}

// AppendString appends the value formatted as a label value: strings as they are,
// integers in decimal, durations as Go durations, timestamps in RFC 3339. A missing
// value appends Unknown and returns ErrMissing.
func (e *Expression) AppendString(dst []byte, a *Activation) ([]byte, error) {
	switch e.kind {
	case kindConst:
		return appendValue(dst, e.constant), nil
	case kindAttr:
		b := a.bag
		if !b.Has(e.attr) {
			return append(dst, Unknown...), ErrMissing
		}
		switch e.attr.Kind() {
		case attribute.String:
			s, _ := b.String(e.attr)
			return append(dst, s...), nil
		case attribute.Int64:
			n, _ := b.Int(e.attr)
			return strconv.AppendInt(dst, n, 10), nil
		}
		v, _ := b.Value(e.attr)
		return appendValue(dst, v), nil
	case kindMapIndex:
		m, _ := a.bag.Map(e.attr)
		v, ok := m.Get(e.key)
		if !ok {
			return append(dst, Unknown...), ErrMissing
		}
		return append(dst, v...), nil
	}
	v, err := e.Eval(a)
	if err != nil {
		return append(dst, Unknown...), err
	}
	return appendValue(dst, v), nil
}

func appendValue(dst []byte, v any) []byte {
	switch t := v.(type) {
	case string:
		return append(dst, t...)
	case int64:
		return strconv.AppendInt(dst, t, 10)
	case float64:
		return strconv.AppendFloat(dst, t, 'g', -1, 64)
	case bool:
		return strconv.AppendBool(dst, t)
	case time.Duration:
		return append(dst, t.String()...)
	case time.Time:
		return t.UTC().AppendFormat(dst, time.RFC3339Nano)
	}
	return fmt.Append(dst, v)
}

// EvalFloat evaluates a numeric expression as a metric value: integers and doubles as
// they are, durations in milliseconds (Istio's unit), booleans as 0 or 1.
func (e *Expression) EvalFloat(a *Activation) (float64, error) {
	switch e.kind {
	case kindConst:
		return toFloat(e.constant)
	case kindAttr:
		n, ok := a.bag.Int(e.attr)
		if !ok {
			return 0, ErrMissing
		}
		if e.attr.Kind() == attribute.Duration {
			return float64(n) / 1e6, nil
		}
		if e.attr.Kind() == attribute.Timestamp {
			return float64(n) / 1e9, nil
		}
		return float64(n), nil
	}
	v, err := e.Eval(a)
	if err != nil {
		return 0, err
	}
	return toFloat(v)
}

func toFloat(v any) (float64, error) {
	switch t := v.(type) {
	case int64:
		return float64(t), nil
	case float64:
		if math.IsNaN(t) {
			return 0, fmt.Errorf("value is NaN")
		}
		return t, nil
	case bool:
		if t {
			return 1, nil
		}
		return 0, nil
	case time.Duration:
		return float64(t) / 1e6, nil
	case string:
		f, err := strconv.ParseFloat(t, 64)
		if err != nil {
			return 0, fmt.Errorf("value %q is not a number", t)
		}
		return f, nil
	}
	return 0, fmt.Errorf("value of type %T is not a number", v)
}
