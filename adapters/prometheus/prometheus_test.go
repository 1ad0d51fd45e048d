package prometheus

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/adaptertest"
	"github.com/sluicemesh/sluice/templates/metric"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		p    Params
		path string // the FieldError path, "" when valid
	}{
		{"valid counter", Params{Metrics: []MetricParams{{Instance: "a", Name: "a_total", Kind: "COUNTER"}}}, ""},
		{"valid exponential", Params{Metrics: []MetricParams{{Instance: "a", Name: "a", Kind: "DISTRIBUTION",
			Buckets: &Buckets{Exponential: &ExponentialBucket{Start: 1, Factor: 2, Count: 5}}}}}, ""},
		{"valid linear", Params{Metrics: []MetricParams{{Instance: "a", Name: "a", Kind: "histogram",
			Buckets: &Buckets{Linear: &LinearBucket{Start: 0, Width: 10, Count: 3}}}}}, ""},
		{"no instance", Params{Metrics: []MetricParams{{Name: "a", Kind: "COUNTER"}}}, "metrics[0]"},
		{"bad name", Params{Metrics: []MetricParams{{Instance: "a", Name: "1a", Kind: "COUNTER"}}}, "metrics[0].name"},
		{"duplicate name", Params{Metrics: []MetricParams{{Instance: "a", Name: "a", Kind: "COUNTER"}, {Instance: "b", Name: "a", Kind: "GAUGE"}}}, "metrics[1].name"},
		{"bad kind", Params{Metrics: []MetricParams{{Instance: "a", Name: "a", Kind: "SUMMARY"}}}, "metrics[0].kind"},
		{"no buckets", Params{Metrics: []MetricParams{{Instance: "a", Name: "a", Kind: "DISTRIBUTION"}}}, "metrics[0]"},
		{"buckets on a counter", Params{Metrics: []MetricParams{{Instance: "a", Name: "a", Kind: "COUNTER", Buckets: &Buckets{Explicit: []float64{1}}}}}, "metrics[0].buckets"},
		{"two bucket kinds", Params{Metrics: []MetricParams{{Instance: "a", Name: "a", Kind: "DISTRIBUTION",
			Buckets: &Buckets{Explicit: []float64{1}, Linear: &LinearBucket{Width: 1, Count: 1}}}}}, "metrics[0].buckets"},
		{"decreasing buckets", Params{Metrics: []MetricParams{{Instance: "a", Name: "a", Kind: "DISTRIBUTION", Buckets: &Buckets{Explicit: []float64{5, 1}}}}}, "metrics[0].buckets"},
		{"negative bound", Params{MaxSeriesPerMetric: -1}, "maxSeriesPerMetric"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			adaptertest.WantFieldError(t, tt.p.Validate(), tt.path)
		})
	}
}

// staticSource serves fixed aggregates, standing in for the dispatcher's shards.
type staticSource map[metric.Key][]metric.Series

func (s staticSource) Collect(_ context.Context, k metric.Key, fn func(*metric.Series)) error {
	for i := range s[k] {
		fn(&s[k][i])
	}
	return nil
}

type noStats struct{}

func (noStats) Error(string)        {}
func (noStats) Dropped(int, string) {}

func TestCollect(t *testing.T) {
	p := &Params{MaxSeriesPerMetric: 10, Metrics: []MetricParams{
		{Instance: "requests", Name: "reqs_total", Kind: "COUNTER", Help: "Requests."},
		{Instance: "ns/latency", Name: "latency_ms", Kind: "DISTRIBUTION", Help: "Latency.", Buckets: &Buckets{Explicit: []float64{1, 10}}},
	}}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	inst := adapters.Instances{Metrics: []metric.Instance{
		{Name: "ns/requests", Dimensions: []string{"code"}, Fingerprint: "f1"},
		{Name: "ns/latency", Dimensions: []string{"code"}, Fingerprint: "f2"},
	}}
	aggs, err := Factory().Bind(adapters.Binding{Params: p, Instances: inst})
	if err != nil {
		t.Fatal(err)
	}
	src := staticSource{
		metric.KeyOf(inst.Metrics[0], aggs["ns/requests"]): {{Labels: []string{"200"}, Count: 3, Sum: 3}},
		metric.KeyOf(inst.Metrics[1], aggs["ns/latency"]):  {{Labels: []string{"200"}, Count: 3, Sum: 16, Buckets: []uint64{1, 1, 1}}},
	}
	h, err := Factory().New(context.Background(), adapters.Env{Metrics: src, Stats: noStats{}}, p, inst)
	if err != nil {
		t.Fatal(err)
	}
	want := `
# HELP latency_ms Latency.
# TYPE latency_ms histogram
latency_ms_bucket{code="200",le="1"} 1
latency_ms_bucket{code="200",le="10"} 2
latency_ms_bucket{code="200",le="+Inf"} 3
latency_ms_sum{code="200"} 16
latency_ms_count{code="200"} 3
# HELP reqs_total Requests.
# TYPE reqs_total counter
reqs_total{code="200"} 3
`
	if err := testutil.CollectAndCompare(h.(*Handler), strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if aggs["ns/requests"].MaxSeries != 10 {
		t.Errorf("maxSeriesPerMetric not applied: %+v", aggs["ns/requests"])
	}
}

func TestBindErrors(t *testing.T) {
	p := &Params{Metrics: []MetricParams{{Instance: "a", Name: "a_total", Kind: "COUNTER"}}}
	for name, inst := range map[string]metric.Instance{
		"unlisted instance": {Name: "ns/b", Dimensions: []string{"x"}},
		"bad label name":    {Name: "ns/a", Dimensions: []string{"bad-label"}},
		"reserved label":    {Name: "ns/a", Dimensions: []string{"__name"}},
	} {
		if _, err := Factory().Bind(adapters.Binding{Params: p, Instances: adapters.Instances{Metrics: []metric.Instance{inst}}}); err == nil {
			t.Errorf("%s: bound without error", name)
		}
	}
}
