package dispatch

import (
	"errors"
	"sync"
	"time"

	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/envoy"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/templates/logentry"
	"github.com/sluicemesh/sluice/templates/metric"
)

// shard is one goroutine that decodes and processes its batches and owns its
// aggregates. mu is taken once per batch, and by collectors reading the aggregates.
type shard struct {
	id int
	d  *Dispatcher
	in chan *Batch

	mu sync.Mutex
	// rt is the runtime the arrays below are arranged for.
	rt     *runtime
	groups map[string]*groupState
	aggs   map[metric.Key]*aggState
	g      []*groupState // by runtime group index
	a      []*aggState   // by runtime aggregate index
	sids   []int32       // series of the current entry per group, -1 before it is computed
	folded []bool
	stats  shardStats

	pending [][]logentry.Entry // per runtime log handler
	dec     *envoy.Decoder
	bag     attribute.Bag
	act     *expr.Activation
	keybuf  []byte
}

// shardStats are counts kept without atomics and read under mu.
type shardStats struct {
	sanitized  uint64
	instErrors map[instError]uint64
	ruleErrors map[string]uint64
}

type instError struct{ instance, reason string }

func newShard(id int, d *Dispatcher) *shard {
	return &shard{
		id:     id,
		d:      d,
		in:     make(chan *Batch, d.opts.QueueSize),
		groups: map[string]*groupState{},
		aggs:   map[metric.Key]*aggState{},
		dec:    envoy.NewDecoder(d.opts.TrustDomain),
		act:    expr.NewActivation(d.vocab),
		keybuf: make([]byte, 0, 1024),
		stats:  shardStats{instErrors: map[instError]uint64{}, ruleErrors: map[string]uint64{}},
	}
}

func (s *shard) run() {
	for b := range s.in {
		if b.barrier != nil {
			s.mu.Lock()
			s.adopt(s.d.rt.Load())
			s.mu.Unlock()
			b.barrier.Done()
			continue
		}
		s.handle(b)
	}
	s.flushLogs(s.rt)
}

func (s *shard) handle(b *Batch) {
	start := time.Now()
	rt := s.d.rt.Load()
	s.mu.Lock()
	if rt != s.rt {
		s.adopt(rt)
	}
	s.dec.Begin(s.d.reg.Snapshot(), b.Received)
	bad := 0
	for i := range b.Entries {
		s.bag.Reset()
		var err error
		if b.Kind == envoy.HTTPEntries {
			err = s.dec.DecodeHTTP(b.Entries[i].Raw, b.Node, &s.bag)
		} else {
			err = s.dec.DecodeTCP(b.Entries[i].Raw, b.Node, b.OpensSeen, &s.bag)
		}
		if err != nil {
			bad++
			continue
		}
		s.process(rt)
	}
	s.mu.Unlock()
	s.flushLogs(rt)
	n := len(b.Entries)
	kind := b.Kind
	s.d.release(b)
	if bad > 0 {
		s.d.metrics.drop(DropMalformed, bad)
	}
	s.d.metrics.processed(kind, n-bad)
	s.d.metrics.batchSeconds.Observe(time.Since(start).Seconds())
}

// adopt arranges the shard's state for rt: aggregates and label groups whose keys
// are unchanged carry over (so counters survive reloads); the rest are dropped.
func (s *shard) adopt(rt *runtime) {
	if rt == nil || rt == s.rt {
		return
	}
	s.flushLogs(s.rt)
	s.rt = rt
	s.dec.Need(rt.needs)
	s.g = make([]*groupState, len(rt.groups))
	keepGroups := map[string]bool{}
	for i, gp := range rt.groups {
		gs := s.groups[gp.fp]
		if gs == nil {
			gs = newGroupState(gp.total, gp.limit)
			s.groups[gp.fp] = gs
		}
		gs.limit = int64(gp.limit)
		s.g[i] = gs
		keepGroups[gp.fp] = true
	}
	s.a = make([]*aggState, len(rt.aggs))
	keepAggs := map[metric.Key]bool{}
	for i, ap := range rt.aggs {
		as := s.aggs[ap.key]
		if as == nil {
			as = newAggState(s.g[ap.group], ap.agg)
			s.aggs[ap.key] = as
		}
		s.a[i] = as
		keepAggs[ap.key] = true
	}
	for k := range s.aggs {
		if !keepAggs[k] {
			delete(s.aggs, k)
		}
	}
	for fp, gs := range s.groups {
		if !keepGroups[fp] {
			n := int64(len(gs.keys))
			if gs.overflow >= 0 {
				n--
			}
			gs.total.Add(-n)
			delete(s.groups, fp)
		}
	}
	s.sids = make([]int32, len(rt.groups))
	s.folded = make([]bool, len(rt.groups))
	s.pending = make([][]logentry.Entry, len(rt.logHandlers))
}

// process runs the rules over the bag.
func (s *shard) process(rt *runtime) {
	s.act.Reset(&s.bag)
	for i := range s.sids {
		s.sids[i] = -1
	}
	for ri := range rt.rules {
		r := &rt.rules[ri]
		if r.match != nil {
			ok, err := r.match.EvalBool(s.act)
			if err != nil && !errors.Is(err, expr.ErrMissing) {
				s.stats.ruleErrors[r.name]++
			}
			if !ok {
				continue
			}
		}
		for _, ai := range r.aggs {
			p := &rt.aggs[ai]
			v, err := p.value.EvalFloat(s.act)
			if err != nil {
				reason := "eval_error"
				if errors.Is(err, expr.ErrMissing) {
					reason = "no_value"
				}
				s.stats.instErrors[instError{p.instance, reason}]++
				continue
			}
			sid := s.series(rt, p.group)
			st := s.a[ai]
			if s.folded[p.group] {
				st.folded++
			}
			st.observe(sid, v)
		}
		for _, lt := range r.logs {
			s.pending[lt.handler] = append(s.pending[lt.handler], s.logEntry(lt.plan))
		}
	}
}

// series returns the current entry's series in group gi, computing it on first use.
func (s *shard) series(rt *runtime, gi int) int32 {
	if sid := s.sids[gi]; sid >= 0 {
		return sid
	}
	gp := &rt.groups[gi]
	key := s.keybuf[:0]
	for i := range gp.dims {
		dim := &gp.dims[i]
		start := len(key)
		if dim.strAttr {
			v, ok := s.bag.String(dim.attr)
			if !ok {
				v = expr.Unknown
			}
			key = append(key, v...)
		} else {
			var err error
			key, err = dim.expr.AppendString(key, s.act)
			if err != nil && !errors.Is(err, expr.ErrMissing) {
				s.stats.instErrors[instError{"dimension " + dim.expr.Source, "eval_error"}]++
			}
		}
		key = appendLabel(key, start)
	}
	s.keybuf = key
	sid, folded, sanitized := s.g[gi].lookup(key, len(gp.dims))
	if sanitized {
		s.stats.sanitized++
	}
	s.sids[gi] = sid
	s.folded[gi] = folded
	return sid
}

// logEntry builds a log entry whose values own their memory.
func (s *shard) logEntry(p *logPlan) logentry.Entry {
	e := logentry.Entry{Instance: p.inst, Severity: "info", Values: make([]any, len(p.vars))}
	if p.severity != nil {
		if v, err := p.severity.Eval(s.act); err == nil {
			if str, ok := v.(string); ok {
				e.Severity = str
			}
		}
	}
	if p.timestamp != nil {
		if v, err := p.timestamp.Eval(s.act); err == nil {
			if t, ok := v.(time.Time); ok {
				e.Timestamp = t
			}
		}
	}
	if e.Timestamp.IsZero() {
		e.Timestamp = time.Now()
	}
	for i, x := range p.vars {
		v, err := x.Eval(s.act)
		if err != nil {
			if !errors.Is(err, expr.ErrMissing) {
				s.stats.instErrors[instError{p.inst.Name, "eval_error"}]++
			}
			continue
		}
		if str, ok := v.(string); ok {
			v = string([]byte(str)) // detach from the receive buffer
		}
		e.Values[i] = v
	}
	return e
}

// flushLogs hands the pending log entries of rt's handlers over.
func (s *shard) flushLogs(rt *runtime) {
	if rt == nil {
		return
	}
	for i, p := range s.pending {
		if len(p) == 0 || i >= len(rt.logHandlers) {
			continue
		}
		rt.logHandlers[i].log.HandleLogs(p)
		clear(p)
		s.pending[i] = p[:0]
	}
}
