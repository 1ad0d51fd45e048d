package loadtest

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sluicemesh/sluice/adapters/quotakit"
)

// Families are the metric families of one scrape, by name.
type Families map[string]*dto.MetricFamily

// Scrape reads a Prometheus text endpoint.
func Scrape(ctx context.Context, url string) (Families, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", url, err)
	}
	return fams, nil
}

// Gather reads g's metrics, as Scrape reads a server's: for tests and
// benchmarks that run a server in process.
func Gather(g prometheus.Gatherer) (Families, error) {
	mfs, err := g.Gather()
	if err != nil {
		return nil, fmt.Errorf("gather: %w", err)
	}
	f := make(Families, len(mfs))
	for _, mf := range mfs {
		f[mf.GetName()] = mf
	}
	return f, nil
}

// FailPolicyDecisions is how many quota instances were decided by a handler's
// fail policy, its backend having failed or been too slow
// (sluice_instances_dropped_total, reasons fail_open and fail_closed). Other
// drops, such as memquota's evictions, were decided by the backend.
func (f Families) FailPolicyDecisions() float64 {
	var n float64
	for _, reason := range []string{quotakit.ReasonFailOpen, quotakit.ReasonFailClosed} {
		n += f.Sum("sluice_instances_dropped_total", map[string]string{"reason": reason})
	}
	return n
}

// Labels returns a metric's labels as a map.
func Labels(m *dto.Metric) map[string]string {
	out := make(map[string]string, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// matches reports whether m carries every label of want.
func matches(m *dto.Metric, want map[string]string) bool {
	got := Labels(m)
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// Sum adds the value (counter, gauge, or histogram or summary count) of every series of a
// family whose labels include want.
func (f Families) Sum(name string, want map[string]string) float64 {
	var sum float64
	for _, m := range f[name].GetMetric() {
		if !matches(m, want) {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.Summary != nil:
			sum += float64(m.GetSummary().GetSampleCount())
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum
}

// Series returns the series of a family whose labels include want.
func (f Families) Series(name string, want map[string]string) []*dto.Metric {
	var out []*dto.Metric
	for _, m := range f[name].GetMetric() {
		if matches(m, want) {
			out = append(out, m)
		}
	}
	return out
}
