package dispatch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/templates"
	"github.com/sluicemesh/sluice/templates/logentry"
	"github.com/sluicemesh/sluice/templates/metric"
)

// runtime is one config version made executable: compiled rules, live handlers and
// the plan the shards follow. It is immutable once built.
type runtime struct {
	snap     *config.Snapshot
	gen      uint64 // see Lease.Generation
	rules    []rulePlan
	groups   []groupPlan
	aggs     []aggPlan
	handlers []*liveHandler
	// logHandlers index the handlers that receive logs; shards keep one pending
	// slice per entry of it.
	logHandlers []*liveHandler
	collectors  *prometheus.Registry
	byName      map[string]*liveHandler
	// needs are the attributes the runtime's expressions read; decoders skip the rest.
	needs attribute.Set
	// leases counts check-path calls holding this runtime; a reload closes the
	// handlers it replaces only once the count is zero.
	leases atomic.Int64
}

type rulePlan struct {
	name  string
	match *expr.Expression
	aggs  []int
	logs  []logTarget
}

type groupPlan struct {
	fp    string
	dims  []dimPlan
	limit int
	total *atomic.Int64
}

// dimPlan is one dimension: string attributes, most of them, are read directly.
type dimPlan struct {
	expr    *expr.Expression
	attr    attribute.ID
	strAttr bool
}

type aggPlan struct {
	key      metric.Key
	group    int
	value    *expr.Expression
	agg      metric.Aggregation
	instance string
}

type logTarget struct {
	plan    *logPlan
	handler int // index into runtime.logHandlers
}

type logPlan struct {
	inst      *logentry.Instance
	severity  *expr.Expression
	timestamp *expr.Expression
	vars      []*expr.Expression
}

// liveHandler is a running handler with the config it was built from.
type liveHandler struct {
	cfg *config.Handler
	h   adapters.Handler
	log adapters.LogHandler
}

// buildRuntime turns a snapshot into a runtime, reusing the live handlers of prev whose
// fingerprint is unchanged. On error every handler it created is closed again.
func (d *Dispatcher) buildRuntime(ctx context.Context, snap *config.Snapshot, prev *runtime) (rt *runtime, created []*liveHandler, err error) {
	rt = &runtime{snap: snap, collectors: prometheus.NewRegistry()}
	reuse := map[string]*liveHandler{}
	if prev != nil {
		for _, h := range prev.handlers {
			reuse[h.cfg.Fingerprint] = h
		}
	}
	defer func() {
		if err != nil {
			for _, h := range created {
				_ = h.h.Close(ctx)
			}
			created = nil
		}
	}()
	byName := map[string]*liveHandler{}
	for _, hc := range snap.Handlers {
		lh, ok := reuse[hc.Fingerprint]
		if ok {
			lh = &liveHandler{cfg: hc, h: lh.h, log: lh.log}
		} else {
			env := adapters.Env{
				Name:     hc.Name,
				Logger:   d.log.With("handler", hc.Name, "adapter", hc.Factory.Name),
				Stats:    d.metrics.adapterStats(hc.Name, hc.Factory.Name),
				Metrics:  d,
				Compiler: d.opts.Compiler,
				Now:      d.opts.Now,
			}
			h, err := hc.Factory.New(ctx, env, hc.Params, hc.Bound())
			if err != nil {
				return nil, created, &config.Error{Pos: hc.Object.Pos, Msg: fmt.Sprintf("start handler %s: %v", hc.Name, err)}
			}
			lh = &liveHandler{cfg: hc, h: h}
			lh.log, _ = h.(adapters.LogHandler)
			created = append(created, lh)
		}
		if c, ok := lh.h.(prometheus.Collector); ok {
			if err := rt.collectors.Register(c); err != nil {
				return nil, created, &config.Error{Pos: hc.Object.Pos, Msg: fmt.Sprintf("handler %s: register metrics: %v", hc.Name, err)}
			}
		}
		rt.handlers = append(rt.handlers, lh)
		byName[hc.Name] = lh
		rt.byName = byName
		if lh.log != nil {
			rt.logHandlers = append(rt.logHandlers, lh)
		}
	}
	logIndex := map[*liveHandler]int{}
	for i, lh := range rt.logHandlers {
		logIndex[lh] = i
	}
	groupIndex := map[string]int{}
	aggIndex := map[metric.Key]int{}
	logPlans := map[string]*logPlan{}
	for _, r := range snap.Rules {
		rp := rulePlan{name: r.Name, match: r.Match}
		seenAgg := map[int]bool{}
		for _, a := range r.Actions {
			lh := byName[a.Handler.Name]
			for _, inst := range a.Instances {
				switch inst.Template.Name {
				case templates.Metric:
					i, err := d.planMetric(rt, inst, a.Handler, groupIndex, aggIndex)
					if err != nil {
						return nil, created, err
					}
					if !seenAgg[i] {
						seenAgg[i] = true
						rp.aggs = append(rp.aggs, i)
					}
				case templates.LogEntry:
					lp := logPlans[inst.Name]
					if lp == nil {
						li := inst.LogInstance()
						lp = &logPlan{inst: &li, severity: inst.Fields["severity"], timestamp: inst.Fields["timestamp"]}
						for _, v := range inst.Maps["variables"] {
							lp.vars = append(lp.vars, v.Expr)
						}
						logPlans[inst.Name] = lp
					}
					if lh.log == nil {
						return nil, created, fmt.Errorf("handler %s does not accept log entries", lh.cfg.Name)
					}
					rp.logs = append(rp.logs, logTarget{plan: lp, handler: logIndex[lh]})
				}
			}
		}
		rt.rules = append(rt.rules, rp)
	}
	rt.needs = rt.referenced(logPlans)
	return rt, created, nil
}

// referenced collects the attributes every expression of the runtime reads.
func (rt *runtime) referenced(logs map[string]*logPlan) attribute.Set {
	var set attribute.Set
	add := func(e *expr.Expression) {
		if e == nil {
			return
		}
		for _, id := range e.References() {
			set.Add(id)
		}
	}
	for _, r := range rt.rules {
		add(r.match)
	}
	for _, g := range rt.groups {
		for _, d := range g.dims {
			add(d.expr)
		}
	}
	for _, a := range rt.aggs {
		add(a.value)
	}
	for _, lp := range logs {
		add(lp.severity)
		add(lp.timestamp)
		for _, v := range lp.vars {
			add(v)
		}
	}
	return set
}

// planMetric adds the aggregate of inst for handler h, and its label group, to rt.
func (d *Dispatcher) planMetric(rt *runtime, inst *config.Instance, h *config.Handler, groupIndex map[string]int, aggIndex map[metric.Key]int) (int, error) {
	agg, ok := h.Aggregations[inst.Name]
	if !ok {
		return 0, fmt.Errorf("handler %s has no aggregation for %s", h.Name, inst.Name)
	}
	key := metric.KeyOf(inst.MetricInstance(), agg)
	if i, ok := aggIndex[key]; ok {
		return i, nil
	}
	dims := inst.Maps["dimensions"]
	fp := sha256.New()
	for _, dm := range dims {
		fmt.Fprintf(fp, "%s=%s\x00", dm.Name, dm.Expr.Source)
	}
	gfp := hex.EncodeToString(fp.Sum(nil)[:8])
	gi, ok := groupIndex[gfp]
	if !ok {
		gi = len(rt.groups)
		groupIndex[gfp] = gi
		exprs := make([]dimPlan, len(dims))
		for i, dm := range dims {
			exprs[i].expr = dm.Expr
			if id, ok := dm.Expr.Attribute(); ok && id.Kind() == attribute.String {
				exprs[i].attr, exprs[i].strAttr = id, true
			}
		}
		rt.groups = append(rt.groups, groupPlan{fp: gfp, dims: exprs, limit: agg.Limit(), total: d.groupTotal(gfp)})
	}
	if l := agg.Limit(); l < rt.groups[gi].limit {
		rt.groups[gi].limit = l
	}
	value := inst.Fields["value"]
	if value == nil {
		return 0, errors.New("metric instance " + inst.Name + " has no value")
	}
	rt.aggs = append(rt.aggs, aggPlan{key: key, group: gi, value: value, agg: agg, instance: inst.Name})
	aggIndex[key] = len(rt.aggs) - 1
	return len(rt.aggs) - 1, nil
}

// groupTotal returns the replica-wide series counter of a label group; it outlives
// config versions so that the bound holds across reloads.
func (d *Dispatcher) groupTotal(fp string) *atomic.Int64 {
	d.totalsMu.Lock()
	defer d.totalsMu.Unlock()
	t, ok := d.totals[fp]
	if !ok {
		t = new(atomic.Int64)
		d.totals[fp] = t
	}
	return t
}
