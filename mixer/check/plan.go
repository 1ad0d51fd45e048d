package check

import (
	"encoding/binary"
	"sort"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/dispatch"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/templates"
)

// plan is the check path's view of one config version: the rules that send
// authorization or quota instances, and what the check cache keys on.
type plan struct {
	snap *config.Snapshot
	// gen is the generation of the runtime it was built from (see
	// dispatch.Lease.Generation), whose handlers the targets hold.
	gen   uint64
	rules []rulePlan
	// refs are the attributes whose values decide every policy answer: the cache key.
	refs     []expr.Ref
	hasAuthz bool
	// uncached: the cache is off, or a handler reads an attribute the key cannot
	// name, so no answer may be cached (two requests that differ in it would
	// share one).
	uncached bool
	cache    *cache // nil when the cache is off
	// inProcess: every handler a check can reach decides in memory (see
	// adapters.Factory.InProcess), so checks may run inline on the lean listener.
	inProcess bool
	// allowed is what the config's allowed answers share.
	allowed *allowedAnswers
}

type rulePlan struct {
	name   string
	match  *expr.Expression
	authz  []authzTarget
	quotas []quotaTarget
}

// A target's handler is resolved when the plan is built, from the leased
// runtime: every lease of the plan's generation holds the same handlers, and a
// lookup by name and an interface assertion per check cost about 0.4 µs. err
// is what a check answers when the handler is missing or of the wrong kind.
type authzTarget struct {
	handler string
	inst    string
	value   *expr.Expression
	props   []config.NamedExpr
	h       adapters.AuthorizationHandler
	err     error
}

type quotaTarget struct {
	handler string
	inst    string
	dims    []config.NamedExpr
	h       adapters.QuotaHandler
	err     error
}

// inProcess reports whether every handler a check of snap can reach — the rules'
// authorization and quota handlers and the rate-limit service's quotaHandler —
// decides in memory (adapters.Factory.InProcess).
func inProcess(snap *config.Snapshot, quotaHandler string) bool {
	for _, h := range snap.Handlers {
		if h.Name == quotaHandler && !h.Factory.InProcess {
			return false
		}
	}
	for _, r := range snap.Rules {
		for _, a := range r.Actions {
			for _, inst := range a.Instances {
				if t := inst.Template.Name; (t == templates.Authorization || t == templates.Quota) && !a.Handler.Factory.InProcess {
					return false
				}
			}
		}
	}
	return true
}

// buildPlan compiles the check rules of the leased config.
func (s *Server) buildPlan(l *dispatch.Lease) *plan {
	p := &plan{snap: l.Snapshot(), gen: l.Generation(), uncached: s.opts.CacheSize < 0}
	if !p.uncached {
		p.cache = newCache(s.opts.CacheSize, s.metrics)
	}
	p.inProcess = inProcess(p.snap, s.opts.QuotaHandler)
	refs := map[string]expr.Ref{}
	addRefs := func(e *expr.Expression) {
		if e == nil {
			return
		}
		for _, r := range e.KeyReferences() {
			refs[r.String()] = r
		}
	}
	readers := map[string]bool{}
	for _, r := range p.snap.Rules {
		rp := rulePlan{name: r.Name, match: r.Match}
		for _, a := range r.Actions {
			for _, inst := range a.Instances {
				switch inst.Template.Name {
				case templates.Authorization:
					t := authzTarget{handler: a.Handler.Name, inst: inst.Name, value: inst.Fields["value"], props: inst.Maps["properties"]}
					t.h, t.err = handlerAs[adapters.AuthorizationHandler](l, t.handler, "answer authorization checks")
					addRefs(t.value)
					for _, pe := range t.props {
						addRefs(pe.Expr)
					}
					rp.authz = append(rp.authz, t)
					if !readers[a.Handler.Name] {
						readers[a.Handler.Name] = true
						if !s.addHandlerRefs(l, a.Handler.Name, refs) {
							p.uncached = true
						}
					}
				case templates.Quota:
					t := quotaTarget{handler: a.Handler.Name, inst: inst.Name, dims: inst.Maps["dimensions"]}
					t.h, t.err = handlerAs[adapters.QuotaHandler](l, t.handler, "enforce quotas")
					rp.quotas = append(rp.quotas, t)
				}
			}
		}
		if len(rp.authz) == 0 && len(rp.quotas) == 0 {
			continue
		}
		if len(rp.authz) > 0 {
			p.hasAuthz = true
			addRefs(rp.match)
		}
		p.rules = append(p.rules, rp)
	}
	// A keyed reference is redundant where the whole map is read.
	for k, r := range refs {
		if r.Keyed {
			if _, whole := refs[r.ID.Name()]; whole {
				delete(refs, k)
			}
		}
	}
	for _, r := range refs {
		p.refs = append(p.refs, r)
	}
	sort.Slice(p.refs, func(i, j int) bool { return p.refs[i].String() < p.refs[j].String() })
	p.allowed = s.newAllowedAnswers(l, p)
	return p
}

// addHandlerRefs adds what a handler reads beyond its instances (rbac policies). It
// reports false when the handler reads something the key cannot name.
func (s *Server) addHandlerRefs(l *dispatch.Lease, name string, refs map[string]expr.Ref) bool {
	h, ok := l.Handler(name)
	if !ok {
		return true
	}
	ar, ok := h.(adapters.AttributeReader)
	if !ok {
		return true
	}
	all := true
	for _, a := range ar.ReadsAttributes() {
		if r, ok := s.compiler.ParseRef(a); ok {
			refs[r.String()] = r
		} else {
			s.log.Warn("handler reads an attribute outside the vocabulary; this config's policy answers are not cached", "handler", name, "attribute", a)
			all = false
		}
	}
	return all
}

// cacheKey appends the values of the plan's attributes: every value, or its absence,
// followed by its length, so that distinct value lists never share a key. A key of
// a map that is there tells its absence apart from the map's (has() does). Values
// are read by kind, never boxed: the key is built on every check.
func (p *plan) cacheKey(dst []byte, bag *attribute.Bag) []byte {
	for _, r := range p.refs {
		start := len(dst)
		if !bag.Has(r.ID) {
			dst = append(dst, 0)
		} else if r.Keyed {
			m, _ := bag.Map(r.ID)
			if s, found := m.Get(r.Key); found {
				dst = append(dst, 1)
				dst = append(dst, s...)
			} else {
				dst = append(dst, 2)
			}
		} else {
			dst = append(dst, 1)
			dst = appendValue(dst, bag, r.ID)
		}
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(dst)-start))
	}
	return dst
}

// appendValue appends a set attribute's value: a string as is, a map as its
// sorted pairs, each key and value after its length (so that no two maps share an
// encoding, whatever bytes they hold), any other kind as its numeric slot.
func appendValue(dst []byte, bag *attribute.Bag, id attribute.ID) []byte {
	switch id.Kind() {
	case attribute.String:
		s, _ := bag.String(id)
		return append(dst, s...)
	case attribute.Map:
		m, _ := bag.Map(id)
		keys := make([]string, 0, m.Len())
		m.Range(func(k, _ string) bool {
			keys = append(keys, k)
			return true
		})
		sort.Strings(keys)
		for _, k := range keys {
			val, _ := m.Get(k)
			dst = binary.AppendUvarint(dst, uint64(len(k)))
			dst = append(dst, k...)
			dst = binary.AppendUvarint(dst, uint64(len(val)))
			dst = append(dst, val...)
		}
		return dst
	}
	n, _ := bag.Int(id)
	return binary.LittleEndian.AppendUint64(dst, uint64(n))
}
