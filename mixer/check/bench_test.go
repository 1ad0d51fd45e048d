package check_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer/h2unary"
)

// BenchmarkCheck: the check path's own work per request, in process, as the lean
// listener calls it (from the encoded request to the encoded answer), on the
// load tool's memquota config and requests. It is the server's CPU per check
// that does not go to the network, the kernel or the scheduler: the share
// Sluice's code can cut.
func BenchmarkCheck(b *testing.B) {
	cfg, err := loadtest.BenchConfig()
	if err != nil {
		b.Fatal(err)
	}
	benchChecks(b, cfg, []benchCase{{"ext_authz", "hit"}, {"ext_authz", "miss"}, {"ratelimit", ""}})
}

// benchCase is one of the load tool's scenarios: a service, and for ext_authz
// whether its policy decisions come from the cache.
type benchCase struct{ svc, cache string }

// benchChecks runs each case's requests through the lean listener's method of a
// check server on cfg.
func benchChecks(b *testing.B, cfg []byte, cases []benchCase) {
	for _, sc := range cases {
		name := sc.svc
		if sc.cache != "" {
			name += "/cache-" + sc.cache
		}
		b.Run(name, func(b *testing.B) {
			bench, err := loadtest.NewBenchScenario(sc.svc, sc.cache)
			if err != nil {
				b.Fatal(err)
			}
			call, metrics, dispMetrics := benchMethod(b, cfg, bench.Method)
			ctx := context.Background()
			// One request buffer and one answer buffer, reused, as the lean
			// listener's connection does.
			req, dst := make([]byte, 0, 1024), make([]byte, 0, 512)
			// Warm the cache and the quota keys, as the load tool's first second does.
			for i := range int64(1000) {
				req = bench.AppendRequest(req[:0], i)
				if _, err := call(ctx, req, append(dst[:0], 0, 0, 0, 0, 0)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			for i := int64(1000); b.Loop(); i++ {
				req = bench.AppendRequest(req[:0], i)
				resp, err := call(ctx, req, append(dst[:0], 0, 0, 0, 0, 0))
				if err != nil {
					b.Fatal(err)
				}
				dst = resp[:0]
			}
			req = bench.AppendRequest(req[:0], 7)
			resp, err := call(ctx, req, append(dst[:0], 0, 0, 0, 0, 0))
			if err == nil {
				err = bench.Check(resp[5:])
			}
			if err != nil {
				b.Fatalf("the last answer: %v", err)
			}
			// The rule matched: the policy was decided, from the cache or not.
			if f := gather(b, metrics); sc.svc == "ext_authz" && f.Sum("sluice_check_cache_hits_total", nil)+f.Sum("sluice_check_cache_misses_total", nil) == 0 {
				b.Fatal("no policy check ran: the benchmark's rule did not match")
			}
			// Every quota was decided by its backend, none by a fail policy: a
			// Redis that could not be reached would otherwise look fast. Keys
			// memquota evicts past its maxKeys (cache misses, a new user each,
			// pass it in a long run) are dropped too, but decided by the backend.
			if n := gather(b, dispMetrics).FailPolicyDecisions(); n > 0 {
				b.Fatalf("%.0f quotas decided by a fail policy (sluice_instances_dropped_total, reasons %s and %s)", n, quotakit.ReasonFailOpen, quotakit.ReasonFailClosed)
			}
		})
	}
}

// benchMethod starts a check server on cfg and returns the lean listener's
// method at path, the server's metrics, and its dispatcher's.
func benchMethod(b *testing.B, cfg []byte, path string) (func(context.Context, []byte, []byte) ([]byte, error), prometheus.Gatherer, prometheus.Gatherer) {
	b.Helper()
	p := newInProcess(b)
	p.apply(b, p.load(b, cfg))
	var found *h2unary.Method
	for _, m := range p.server.Methods() {
		if m.Path == path {
			found = &m
		}
	}
	if found == nil {
		b.Fatalf("no method %s", path)
	}
	return found.Call, p.metrics, p.dispMetrics
}

// gather reads g's metrics, failing tb when it cannot.
func gather(tb testing.TB, g prometheus.Gatherer) loadtest.Families {
	tb.Helper()
	f, err := loadtest.Gather(g)
	if err != nil {
		tb.Fatal(err)
	}
	return f
}
