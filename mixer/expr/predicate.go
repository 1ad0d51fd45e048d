package expr

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/mixer/attribute"
)

// CompileBool implements adapters.Compiler: a predicate for handler params (rbac).
func (c *Compiler) CompileBool(src string) (adapters.Predicate, error) {
	e, err := c.Compile(src)
	if err != nil {
		return nil, err
	}
	if e.Type != TypeBool && e.Type != TypeDyn {
		return nil, fmt.Errorf("%q is %s, not bool", src, e.Type)
	}
	return &predicate{e: e, vocab: c.vocab}, nil
}

type predicate struct {
	e     *Expression
	vocab *attribute.Vocabulary
}

// Eval implements adapters.Predicate: as the SDK promises, a missing attribute or map
// key makes the predicate false without an error.
func (p *predicate) Eval(attrs adapters.Attributes) (bool, error) {
	ok, err := p.eval(attrs)
	if errors.Is(err, ErrMissing) {
		return false, nil
	}
	return ok, err
}

func (p *predicate) eval(attrs adapters.Attributes) (bool, error) {
	if a, ok := attrs.(*Activation); ok {
		return p.e.EvalBool(a)
	}
	// Attributes from elsewhere (a test, a bridge) are copied into a bag.
	var bag attribute.Bag
	for _, id := range p.e.References() {
		v, ok := attrs.Get(id.Name())
		if !ok {
			continue
		}
		if err := bag.Set(id, v); err != nil {
			return false, err
		}
	}
	a := NewActivation(p.vocab)
	a.Reset(&bag)
	return p.e.EvalBool(a)
}

// Attributes lists what the predicate reads: names, and name["key"] for maps read by
// one constant key (see ParseRef).
func (p *predicate) Attributes() []string {
	out := make([]string, len(p.e.KeyReferences()))
	for i, r := range p.e.KeyReferences() {
		out[i] = r.String()
	}
	return out
}

// ParseRef reads a reference formatted by Ref.String.
func (c *Compiler) ParseRef(s string) (Ref, bool) {
	name, key, keyed := strings.Cut(s, "[")
	id, ok := c.vocab.Lookup(name)
	if !ok {
		return Ref{}, false
	}
	if !keyed {
		return Ref{ID: id}, true
	}
	k, err := strconv.Unquote(strings.TrimSuffix(key, "]"))
	if err != nil || id.Kind() != attribute.Map {
		return Ref{}, false
	}
	return Ref{ID: id, Key: k, Keyed: true}, true
}

// References returns the attribute IDs the predicate reads.
func (p *predicate) References() []attribute.ID { return p.e.References() }

// Get implements adapters.Attributes over the activation's bag; maps are copies.
func (a *Activation) Get(name string) (any, bool) {
	return a.value(name, func(m attribute.StringMap) any { return m.Clone() })
}
