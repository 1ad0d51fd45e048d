package check

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the check path's sluice_* metrics.
type metrics struct {
	requests       *prometheus.CounterVec
	latency        *prometheus.HistogramVec
	handlerErrors  *prometheus.CounterVec
	ruleErrors     *prometheus.CounterVec
	rateLimit      *prometheus.CounterVec
	cacheHits      prometheus.Counter
	cacheMisses    prometheus.Counter
	cacheEvictions prometheus.Counter
	cacheSkips     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_check_requests_total", Help: "Check requests answered, by service (ext_authz, ratelimit) and outcome.",
		}, []string{"service", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sluice_check_duration_seconds", Help: "Time to answer a check request, by service.",
			Buckets: prometheus.ExponentialBuckets(5e-6, 2, 16),
		}, []string{"service"}),
		handlerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_check_handler_errors_total", Help: "Policy or quota handlers that failed a check (answered UNAVAILABLE), by handler.",
		}, []string{"handler"}),
		ruleErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_check_rule_errors_total", Help: "Checks denied because a rule's match or instance failed with an error other than a missing attribute, by rule.",
		}, []string{"rule"}),
		rateLimit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_ratelimit_descriptors_total",
			Help: "Rate-limit descriptors decided, by domain, descriptor (key_value path as envoyproxy/ratelimit names its stats) and result.",
		}, []string{"domain", "descriptor", "result"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_check_cache_hits_total", Help: "Policy checks answered from the check cache.",
		}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_check_cache_misses_total", Help: "Policy checks not found in the check cache.",
		}),
		cacheEvictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_check_cache_evictions_total", Help: "Check-cache entries evicted to make room.",
		}),
		cacheSkips: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_check_cache_skipped_total", Help: "Policy answers not cached because their key, the values of the attributes the rules read, exceeds 4 KiB.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	size := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sluice_check_cache_entries", Help: "Entries in the check cache.",
	}, func() float64 {
		if p := s.plan.Load(); p != nil {
			return float64(p.cache.len())
		}
		return 0
	})
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.handlerErrors, m.ruleErrors, m.rateLimit, m.cacheHits, m.cacheMisses, m.cacheEvictions, m.cacheSkips, size} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register check metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) observe(service, outcome string, d time.Duration) {
	m.requests.WithLabelValues(service, outcome).Inc()
	m.latency.WithLabelValues(service).Observe(d.Seconds())
}
