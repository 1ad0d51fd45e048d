package check

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// TestObserve checks that checks observed from many goroutines, with the series
// of each (service, outcome) resolved once and kept, land in their own series.
func TestObserve(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg, &Server{})
	if err != nil {
		t.Fatal(err)
	}
	calls := []struct {
		service, outcome string
		n                int
	}{
		{"ext_authz", "allowed", 300},
		{"ext_authz", "denied", 20},
		{"ext_authz", "quota_exceeded", 7},
		{"ratelimit", "ok", 150},
		{"ratelimit", "over_limit", 3},
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for _, c := range calls {
				for i := range c.n {
					if i%4 == g {
						m.observe(c.service, c.outcome, time.Millisecond)
					}
				}
			}
		})
	}
	wg.Wait()
	perService := map[string]int{}
	for _, c := range calls {
		if got := testutil.ToFloat64(m.requests.WithLabelValues(c.service, c.outcome)); got != float64(c.n) {
			t.Errorf("sluice_check_requests_total{service=%q,outcome=%q} = %v, want %d", c.service, c.outcome, got, c.n)
		}
		perService[c.service] += c.n
	}
	if n := testutil.CollectAndCount(m.requests); n != len(calls) {
		t.Errorf("%d request series, want %d", n, len(calls))
	}
	for service, want := range perService {
		var got dto.Metric
		if err := m.latency.WithLabelValues(service).(prometheus.Histogram).Write(&got); err != nil {
			t.Fatal(err)
		}
		if c := got.GetHistogram().GetSampleCount(); c != uint64(want) {
			t.Errorf("sluice_check_duration_seconds{service=%q} count = %d, want %d", service, c, want)
		}
	}
}
