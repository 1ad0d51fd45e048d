// Package prometheus is the prometheus adapter: it exposes metric instances, aggregated
// by the core's shards and merged at scrape time, as Prometheus counters, gauges and histograms.
package prometheus

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/templates"
	"github.com/sluicemesh/sluice/templates/metric"
)

// Name is the adapter's name in a Handler's spec.adapter.
const Name = "prometheus"

// Params configure a prometheus handler.
type Params struct {
	// MaxSeriesPerMetric bounds the series of each metric on this replica; beyond it,
	// new label sets fold into one overflow series. Default 100000.
	MaxSeriesPerMetric int `yaml:"maxSeriesPerMetric"`
	// Metrics map metric instances to Prometheus metrics.
	Metrics []MetricParams `yaml:"metrics"`
}

// MetricParams describe one Prometheus metric.
type MetricParams struct {
	// Instance is the metric instance: NAME or NAMESPACE/NAME.
	Instance string `yaml:"instance"`
	// Name is the full Prometheus metric name.
	Name string `yaml:"name"`
	// Kind is COUNTER, GAUGE or DISTRIBUTION (a histogram).
	Kind string `yaml:"kind"`
	Help string `yaml:"help"`
	// Buckets are required for a DISTRIBUTION.
	Buckets *Buckets `yaml:"buckets"`
	// MaxSeries overrides MaxSeriesPerMetric for this metric.
	MaxSeries int `yaml:"maxSeries"`
}

// Buckets give a histogram's upper bounds in one of three ways.
type Buckets struct {
	Explicit    []float64          `yaml:"explicit"`
	Exponential *ExponentialBucket `yaml:"exponential"`
	Linear      *LinearBucket      `yaml:"linear"`
}

// ExponentialBucket yields Count bounds Start, Start*Factor, Start*Factor², …
type ExponentialBucket struct {
	Start  float64 `yaml:"start"`
	Factor float64 `yaml:"factor"`
	Count  int     `yaml:"count"`
}

// LinearBucket yields Count bounds Start, Start+Width, …
type LinearBucket struct {
	Start float64 `yaml:"start"`
	Width float64 `yaml:"width"`
	Count int     `yaml:"count"`
}

var (
	metricName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelName  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

// Validate implements adapters.Params.
func (p *Params) Validate() error {
	if p.MaxSeriesPerMetric < 0 {
		return adapters.Errorf("maxSeriesPerMetric", "must not be negative")
	}
	names := map[string]bool{}
	for i := range p.Metrics {
		m := &p.Metrics[i]
		path := fmt.Sprintf("metrics[%d]", i)
		if m.Instance == "" {
			return adapters.Errorf(path, "instance is required")
		}
		if !metricName.MatchString(m.Name) {
			return adapters.Errorf(path+".name", "%q is not a valid Prometheus metric name", m.Name)
		}
		if names[m.Name] {
			return adapters.Errorf(path+".name", "metric %q is defined twice", m.Name)
		}
		names[m.Name] = true
		kind, err := parseKind(m.Kind)
		if err != nil {
			return adapters.Errorf(path+".kind", "%v", err)
		}
		if m.MaxSeries < 0 {
			return adapters.Errorf(path+".maxSeries", "must not be negative")
		}
		bounds, err := m.Buckets.bounds()
		if err != nil {
			return adapters.Errorf(path+".buckets", "%v", err)
		}
		switch {
		case kind == metric.Distribution && len(bounds) == 0:
			return adapters.Errorf(path, "a DISTRIBUTION needs buckets")
		case kind != metric.Distribution && m.Buckets != nil:
			return adapters.Errorf(path+".buckets", "only a DISTRIBUTION has buckets")
		}
		if err := (metric.Aggregation{Kind: kind, Buckets: bounds}).Validate(); err != nil {
			return adapters.Errorf(path+".buckets", "%v", err)
		}
	}
	return nil
}

func parseKind(s string) (metric.Kind, error) {
	switch strings.ToUpper(s) {
	case "COUNTER":
		return metric.Counter, nil
	case "GAUGE":
		return metric.Gauge, nil
	case "DISTRIBUTION", "HISTOGRAM":
		return metric.Distribution, nil
	}
	return 0, fmt.Errorf("kind %q is not COUNTER, GAUGE or DISTRIBUTION", s)
}

func (b *Buckets) bounds() ([]float64, error) {
	if b == nil {
		return nil, nil
	}
	set := 0
	var out []float64
	if len(b.Explicit) > 0 {
		set++
		out = append(out, b.Explicit...)
	}
	if e := b.Exponential; e != nil {
		set++
		if e.Start <= 0 || e.Factor <= 1 || e.Count < 1 || e.Count > 1000 {
			return nil, fmt.Errorf("exponential buckets need start > 0, factor > 1 and 1 ≤ count ≤ 1000")
		}
		out = prometheus.ExponentialBuckets(e.Start, e.Factor, e.Count)
	}
	if l := b.Linear; l != nil {
		set++
		if l.Width <= 0 || l.Count < 1 || l.Count > 1000 {
			return nil, fmt.Errorf("linear buckets need width > 0 and 1 ≤ count ≤ 1000")
		}
		out = prometheus.LinearBuckets(l.Start, l.Width, l.Count)
	}
	if set != 1 {
		return nil, fmt.Errorf("give exactly one of explicit, exponential or linear")
	}
	return out, nil
}

// Factory returns the prometheus adapter's factory.
func Factory() *adapters.Factory {
	return &adapters.Factory{
		Name:      Name,
		Doc:       "exposes metric instances on the admin port's /metrics",
		Templates: []string{templates.Metric},
		NewParams: func() adapters.Params { return &Params{MaxSeriesPerMetric: metric.DefaultMaxSeries} },
		Bind: func(bd adapters.Binding) (map[string]metric.Aggregation, error) {
			b, err := bind(bd.Params.(*Params), bd.Instances)
			if err != nil {
				return nil, err
			}
			out := map[string]metric.Aggregation{}
			for _, m := range b {
				out[m.inst.Name] = m.agg
			}
			return out, nil
		},
		New: func(_ context.Context, env adapters.Env, p adapters.Params, inst adapters.Instances) (adapters.Handler, error) {
			b, err := bind(p.(*Params), inst)
			if err != nil {
				return nil, err
			}
			return &Handler{env: env, metrics: b}, nil
		},
	}
}

// bound is one Prometheus metric bound to its instance.
type bound struct {
	inst metric.Instance
	agg  metric.Aggregation
	key  metric.Key
	desc *prometheus.Desc
}

// bind pairs every metric instance routed to the handler with its params entry.
func bind(p *Params, inst adapters.Instances) ([]*bound, error) {
	var out []*bound
	for _, mi := range inst.Metrics {
		idx := -1
		for i := range p.Metrics {
			if instanceMatches(p.Metrics[i].Instance, mi.Name) {
				if idx >= 0 {
					return nil, adapters.Errorf(fmt.Sprintf("metrics[%d].instance", i), "instance %s is listed twice", mi.Name)
				}
				idx = i
			}
		}
		if idx < 0 {
			return nil, adapters.Errorf("metrics", "a rule sends metric instance %s to this handler but params.metrics has no entry for it", mi.Name)
		}
		m := p.Metrics[idx]
		for _, d := range mi.Dimensions {
			if !labelName.MatchString(d) || strings.HasPrefix(d, "__") {
				return nil, adapters.Errorf(fmt.Sprintf("metrics[%d]", idx), "dimension %q of instance %s is not a valid Prometheus label name", d, mi.Name)
			}
		}
		kind, _ := parseKind(m.Kind)
		bounds, _ := m.Buckets.bounds()
		maxSeries := m.MaxSeries
		if maxSeries == 0 {
			maxSeries = p.MaxSeriesPerMetric
		}
		agg := metric.Aggregation{Name: m.Name, Kind: kind, Buckets: bounds, MaxSeries: maxSeries}
		help := m.Help
		if help == "" {
			help = "Metric instance " + mi.Name + "."
		}
		out = append(out, &bound{
			inst: mi, agg: agg, key: metric.KeyOf(mi, agg),
			desc: prometheus.NewDesc(m.Name, help, mi.Dimensions, nil),
		})
	}
	return out, nil
}

// instanceMatches compares a params reference (NAME or NAMESPACE/NAME) with a
// qualified instance name.
func instanceMatches(ref, qualified string) bool {
	if strings.Contains(ref, "/") {
		return ref == qualified
	}
	_, name, _ := strings.Cut(qualified, "/")
	return ref == name
}

// Handler is a prometheus handler; it is a prometheus.Collector.
type Handler struct {
	env     adapters.Env
	metrics []*bound
}

// Describe implements prometheus.Collector.
func (h *Handler) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range h.metrics {
		ch <- m.desc
	}
}

// Collect implements prometheus.Collector: it reads every aggregate, merged over shards.
func (h *Handler) Collect(ch chan<- prometheus.Metric) {
	ctx := context.Background()
	for _, m := range h.metrics {
		var err error
		switch m.agg.Kind {
		case metric.Counter, metric.Gauge:
			vt := prometheus.CounterValue
			if m.agg.Kind == metric.Gauge {
				vt = prometheus.GaugeValue
			}
			err = h.env.Metrics.Collect(ctx, m.key, func(s *metric.Series) {
				ch <- prometheus.MustNewConstMetric(m.desc, vt, s.Sum, s.Labels...)
			})
		case metric.Distribution:
			err = h.env.Metrics.Collect(ctx, m.key, func(s *metric.Series) {
				ch <- histogram(m, s)
			})
		}
		if err != nil {
			h.env.Stats.Error("collect")
			ch <- prometheus.NewInvalidMetric(m.desc, err)
		}
	}
}

func histogram(m *bound, s *metric.Series) prometheus.Metric {
	cum := make(map[float64]uint64, len(m.agg.Buckets))
	var acc uint64
	for i, ub := range m.agg.Buckets {
		if i < len(s.Buckets) {
			acc += s.Buckets[i]
		}
		cum[ub] = acc
	}
	sum := s.Sum
	if math.IsNaN(sum) {
		sum = 0
	}
	return prometheus.MustNewConstHistogram(m.desc, s.Count, sum, cum, s.Labels...)
}

// Close implements adapters.Handler; the aggregates belong to the core.
func (h *Handler) Close(context.Context) error { return nil }

// Aggregation implements adapters.MetricHandler.
func (h *Handler) Aggregation(inst metric.Instance) (metric.Aggregation, error) {
	for _, m := range h.metrics {
		if m.inst.Name == inst.Name {
			return m.agg, nil
		}
	}
	return metric.Aggregation{}, fmt.Errorf("instance %s is not bound to this handler", inst.Name)
}
