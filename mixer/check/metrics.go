package check

import (
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
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
	// detailed bounds the descriptor label values made of request values.
	detailed detailedNames
	// series holds the request counter and latency histogram of each (service,
	// outcome) seen, copied on write: WithLabelValues hashes and validates its
	// labels and takes a lock on every call, about 1 µs of a check's CPU at
	// 10k checks/s. Both labels are the code's constants, so it stays small.
	series   atomic.Pointer[map[seriesKey]checkSeries]
	seriesMu sync.Mutex
}

type seriesKey struct{ service, outcome string }

// checkSeries are the series a check of one service and outcome updates.
type checkSeries struct {
	requests prometheus.Counter
	latency  prometheus.Observer
}

// rateLimitMetric is the metric whose descriptor label detailedNames bounds.
const rateLimitMetric = "sluice_ratelimit_descriptors_total"

// overflowLabel is the descriptor label of what detailedNames folds, as the
// report path names its overflow series.
const overflowLabel = "overflow"

// maxDetailedName bounds the length of a detailed descriptor name: it holds the
// request's values, which a client sends up to the message bound.
const maxDetailedName = 1 << 10

// detailedNames bounds the descriptor names of sluice_ratelimit_descriptors_total
// that come from requests (detailed_metric, as envoyproxy/ratelimit names such
// stats: the request's key_value at every level). Each name is a series kept for
// the life of the process, and a client choosing the values could otherwise add
// them without end. The first max names, each up to maxDetailedName bytes, are
// kept; any other is counted under overflowLabel, and in folded, which
// sluice_series_overflow_total{metric="sluice_ratelimit_descriptors_total"} reports.
type detailedNames struct {
	max    int
	mu     sync.RWMutex
	names  map[string]struct{}
	folded *atomic.Uint64
}

// label is the descriptor label of the detailed name, which the caller does not
// change afterwards.
func (d *detailedNames) label(name string) string {
	if len(name) <= maxDetailedName {
		d.mu.RLock()
		_, ok := d.names[name]
		full := len(d.names) >= d.max
		d.mu.RUnlock()
		if ok {
			return name
		}
		if !full {
			d.mu.Lock()
			if _, ok := d.names[name]; ok || len(d.names) < d.max {
				d.names[name] = struct{}{}
				d.mu.Unlock()
				return name
			}
			d.mu.Unlock()
		}
	}
	d.folded.Add(1)
	return overflowLabel
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	folded := &atomic.Uint64{}
	if s.opts.Dispatcher != nil {
		folded = s.opts.Dispatcher.SeriesOverflow(rateLimitMetric)
	}
	m := &metrics{
		detailed: detailedNames{max: s.opts.MaxDetailedDescriptors, names: map[string]struct{}{}, folded: folded},
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
			Name: rateLimitMetric,
			Help: "Rate-limit descriptors decided, by domain, descriptor (key_value path as envoyproxy/ratelimit names its stats; overflow past the bound on detailed_metric names) and result.",
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
		// A runtime's plan, and its empty cache, is built by its first check: until
		// then the last plan's cache is no longer in use. Plans are keyed by the
		// runtime's generation, not its snapshot, which may be applied again.
		p := s.plan.Load()
		if p == nil || s.opts.Dispatcher == nil {
			return 0
		}
		l := s.opts.Dispatcher.Lease()
		if l == nil {
			return 0
		}
		defer l.Release()
		if p.gen != l.Generation() {
			return 0
		}
		return float64(p.cache.len())
	})
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.handlerErrors, m.ruleErrors, m.rateLimit, m.cacheHits, m.cacheMisses, m.cacheEvictions, m.cacheSkips, size} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register check metrics: %w", err)
		}
	}
	return m, nil
}

// observe counts a check of service that ended in outcome after d.
func (m *metrics) observe(service, outcome string, d time.Duration) {
	k := seriesKey{service, outcome}
	cs, ok := checkSeries{}, false
	if all := m.series.Load(); all != nil {
		cs, ok = (*all)[k]
	}
	if !ok {
		cs = m.addSeries(k)
	}
	cs.requests.Inc()
	cs.latency.Observe(d.Seconds())
}

// addSeries resolves and keeps the series of k.
func (m *metrics) addSeries(k seriesKey) checkSeries {
	m.seriesMu.Lock()
	defer m.seriesMu.Unlock()
	var next map[seriesKey]checkSeries
	if all := m.series.Load(); all != nil {
		if cs, ok := (*all)[k]; ok {
			return cs
		}
		next = maps.Clone(*all)
	} else {
		next = map[seriesKey]checkSeries{}
	}
	cs := checkSeries{
		requests: m.requests.WithLabelValues(k.service, k.outcome),
		latency:  m.latency.WithLabelValues(k.service),
	}
	next[k] = cs
	m.series.Store(&next)
	return cs
}
