package expr

import "github.com/sluicemesh/sluice/mixer/attribute"

// tri is a three-valued result that follows CEL's rules for errors in && and ||:
// false && error is false, true || error is true, anything else with an error is an error.
type tri uint8

const (
	triFalse tri = iota
	triTrue
	triErr
)

// matcher is a boolean expression evaluated directly on a Bag.
type matcher interface {
	eval(b *attribute.Bag) tri
}

type constMatch bool

func (c constMatch) eval(*attribute.Bag) tri {
	if c {
		return triTrue
	}
	return triFalse
}

type boolAttrMatch attribute.ID

func (m boolAttrMatch) eval(b *attribute.Bag) tri {
	n, ok := b.Int(attribute.ID(m))
	if !ok {
		return triErr
	}
	if n != 0 {
		return triTrue
	}
	return triFalse
}

type andMatch struct{ l, r matcher }

func (m andMatch) eval(b *attribute.Bag) tri {
	l := m.l.eval(b)
	if l == triFalse {
		return triFalse
	}
	r := m.r.eval(b)
	if r == triFalse {
		return triFalse
	}
	if l == triErr || r == triErr {
		return triErr
	}
	return triTrue
}

type orMatch struct{ l, r matcher }

func (m orMatch) eval(b *attribute.Bag) tri {
	l := m.l.eval(b)
	if l == triTrue {
		return triTrue
	}
	r := m.r.eval(b)
	if r == triTrue {
		return triTrue
	}
	if l == triErr || r == triErr {
		return triErr
	}
	return triFalse
}

type notMatch struct{ m matcher }

func (m notMatch) eval(b *attribute.Bag) tri {
	switch m.m.eval(b) {
	case triTrue:
		return triFalse
	case triFalse:
		return triTrue
	}
	return triErr
}

// load reads an operand; ok is false when it is missing.
func (o operand) load(b *attribute.Bag) (s string, n int64, ok bool) {
	if o.isKV {
		m, present := b.Map(o.attr)
		if !present {
			return "", 0, false
		}
		s, ok = m.Get(o.key)
		return s, 0, ok
	}
	if o.attr.Kind() == attribute.String {
		s, ok = b.String(o.attr)
		return s, 0, ok
	}
	n, ok = b.Int(o.attr)
	return "", n, ok
}

func equal(o operand, s string, n int64, v any) bool {
	switch c := v.(type) {
	case string:
		return s == c
	case int64:
		return n == c
	case bool:
		return (n != 0) == c
	}
	return false
}

type eqMatch struct {
	ref operand
	val any
}

func (m eqMatch) eval(b *attribute.Bag) tri {
	s, n, ok := m.ref.load(b)
	if !ok {
		return triErr
	}
	if equal(m.ref, s, n, m.val) {
		return triTrue
	}
	return triFalse
}

type inMatch struct {
	ref  operand
	vals []any
}

func (m inMatch) eval(b *attribute.Bag) tri {
	s, n, ok := m.ref.load(b)
	if !ok {
		return triErr
	}
	for _, v := range m.vals {
		if equal(m.ref, s, n, v) {
			return triTrue
		}
	}
	return triFalse
}
