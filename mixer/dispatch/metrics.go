package dispatch

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/mixer/envoy"
)

// selfMetrics are the report path's sluice_* metrics. Counters touched once per batch
// or per error are client_golang vectors; per-entry counts live in the shards and are
// read under their locks at scrape time.
type selfMetrics struct {
	d *Dispatcher

	receivedVec  *prometheus.CounterVec
	processedVec *prometheus.CounterVec
	droppedVec   *prometheus.CounterVec
	batchSeconds prometheus.Histogram
	adapterErrs  *prometheus.CounterVec
	instDropped  *prometheus.CounterVec

	queueDepth    *prometheus.Desc
	series        *prometheus.Desc
	overflow      *prometheus.Desc
	decodeWarn    *prometheus.Desc
	instErrors    *prometheus.Desc
	ruleErrors    *prometheus.Desc
	sanitizedDesc *prometheus.Desc
}

func newSelfMetrics(d *Dispatcher) *selfMetrics {
	return &selfMetrics{
		d: d,
		receivedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_entries_received_total", Help: "Access-log entries received, by protocol (http, tcp).",
		}, []string{"protocol"}),
		processedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_entries_processed_total", Help: "Access-log entries decoded and run through the rules, by protocol.",
		}, []string{"protocol"}),
		droppedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_entries_dropped_total", Help: "Access-log entries accepted but not processed, by reason.",
		}, []string{"reason"}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sluice_batch_processing_seconds", Help: "Time a shard spends on one batch: decode, rules and aggregation.",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 12),
		}),
		adapterErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_adapter_errors_total", Help: "Failed adapter operations, by handler, adapter and reason.",
		}, []string{"handler", "adapter", "reason"}),
		instDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_instances_dropped_total", Help: "Instances a handler accepted but could not deliver, by handler, adapter and reason.",
		}, []string{"handler", "adapter", "reason"}),
		queueDepth: prometheus.NewDesc("sluice_shard_queue_depth",
			"Batches waiting in a shard's queue.", []string{"shard"}, nil),
		series: prometheus.NewDesc("sluice_series",
			"Series of a metric on this replica (summed over shards).", []string{"metric"}, nil),
		overflow: prometheus.NewDesc("sluice_series_overflow_total",
			"Observations folded into a metric's overflow series because its series bound was reached.", []string{"metric"}, nil),
		decodeWarn: prometheus.NewDesc("sluice_decode_warnings_total",
			"Entries decoded with a problem that did not stop them, by reason.", []string{"reason"}, nil),
		instErrors: prometheus.NewDesc("sluice_instance_errors_total",
			"Instance values that could not be computed (the observation is skipped), by instance and reason.", []string{"instance", "reason"}, nil),
		ruleErrors: prometheus.NewDesc("sluice_rule_errors_total",
			"Rule matches that failed with an error (the rule did not apply), by rule.", []string{"rule"}, nil),
		sanitizedDesc: prometheus.NewDesc("sluice_labels_sanitized_total",
			"New series whose label values held invalid UTF-8, replaced by U+FFFD.", nil, nil),
	}
}

func kindLabel(k envoy.EntryKind) string { return k.String() }

func (m *selfMetrics) received(k envoy.EntryKind, n int) {
	m.receivedVec.WithLabelValues(kindLabel(k)).Add(float64(n))
}

func (m *selfMetrics) processed(k envoy.EntryKind, n int) {
	m.processedVec.WithLabelValues(kindLabel(k)).Add(float64(n))
}

func (m *selfMetrics) drop(reason string, n int) {
	if n > 0 {
		m.droppedVec.WithLabelValues(reason).Add(float64(n))
	}
}

// Describe implements prometheus.Collector.
func (m *selfMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.receivedVec.Describe(ch)
	m.processedVec.Describe(ch)
	m.droppedVec.Describe(ch)
	m.batchSeconds.Describe(ch)
	m.adapterErrs.Describe(ch)
	m.instDropped.Describe(ch)
	for _, d := range []*prometheus.Desc{m.queueDepth, m.series, m.overflow, m.decodeWarn, m.instErrors, m.ruleErrors, m.sanitizedDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *selfMetrics) Collect(ch chan<- prometheus.Metric) {
	m.receivedVec.Collect(ch)
	m.processedVec.Collect(ch)
	m.droppedVec.Collect(ch)
	m.batchSeconds.Collect(ch)
	m.adapterErrs.Collect(ch)
	m.instDropped.Collect(ch)

	var unknownEnum, badPeer, connFull, sanitized uint64
	overflow := map[string]uint64{}
	instErrs := map[instError]uint64{}
	ruleErrs := map[string]uint64{}
	for _, s := range m.d.shards {
		ch <- prometheus.MustNewConstMetric(m.queueDepth, prometheus.GaugeValue, float64(len(s.in)), strconv.Itoa(s.id))
		s.mu.Lock()
		unknownEnum += s.dec.Stats.UnknownEnum
		badPeer += s.dec.Stats.BadPeerMetadata
		connFull += s.dec.Stats.ConnTrackFull
		sanitized += s.stats.sanitized
		for k, v := range s.stats.instErrors {
			instErrs[k] += v
		}
		for k, v := range s.stats.ruleErrors {
			ruleErrs[k] += v
		}
		if s.rt != nil {
			for i, ap := range s.rt.aggs {
				overflow[ap.agg.Name] += s.a[i].folded
			}
		}
		s.mu.Unlock()
	}
	ch <- prometheus.MustNewConstMetric(m.decodeWarn, prometheus.CounterValue, float64(unknownEnum), "unknown_enum")
	ch <- prometheus.MustNewConstMetric(m.decodeWarn, prometheus.CounterValue, float64(badPeer), "bad_peer_metadata")
	ch <- prometheus.MustNewConstMetric(m.decodeWarn, prometheus.CounterValue, float64(connFull), "connection_table_full")
	ch <- prometheus.MustNewConstMetric(m.sanitizedDesc, prometheus.CounterValue, float64(sanitized))
	for k, v := range instErrs {
		ch <- prometheus.MustNewConstMetric(m.instErrors, prometheus.CounterValue, float64(v), k.instance, k.reason)
	}
	for k, v := range ruleErrs {
		ch <- prometheus.MustNewConstMetric(m.ruleErrors, prometheus.CounterValue, float64(v), k)
	}
	if rt := m.d.rt.Load(); rt != nil {
		seen := map[string]bool{}
		for _, ap := range rt.aggs {
			if _, ok := overflow[ap.agg.Name]; !ok {
				overflow[ap.agg.Name] = 0
			}
			if seen[ap.agg.Name] {
				continue
			}
			seen[ap.agg.Name] = true
			ch <- prometheus.MustNewConstMetric(m.series, prometheus.GaugeValue, float64(rt.groups[ap.group].total.Load()), ap.agg.Name)
		}
	}
	m.d.foldedMu.Lock()
	for name, c := range m.d.folded {
		overflow[name] += c.Load()
	}
	m.d.foldedMu.Unlock()
	for name, v := range overflow {
		ch <- prometheus.MustNewConstMetric(m.overflow, prometheus.CounterValue, float64(v), name)
	}
}

// SeriesOverflow returns the count of observations folded into the overflow series
// of metric, a metric another component keeps and bounds (the check path's
// sluice_ratelimit_descriptors_total), which sluice_series_overflow_total{metric}
// reports beside the report path's. It is the same counter for every call with
// one metric.
func (d *Dispatcher) SeriesOverflow(metric string) *atomic.Uint64 {
	d.foldedMu.Lock()
	defer d.foldedMu.Unlock()
	c := d.folded[metric]
	if c == nil {
		if d.folded == nil {
			d.folded = map[string]*atomic.Uint64{}
		}
		c = &atomic.Uint64{}
		d.folded[metric] = c
	}
	return c
}

// adapterStats binds the adapter counters to one handler.
func (m *selfMetrics) adapterStats(handler, adapter string) adapters.Stats {
	return &handlerStats{m: m, handler: handler, adapter: adapter}
}

type handlerStats struct {
	m                *selfMetrics
	handler, adapter string
}

func (h *handlerStats) Error(reason string) {
	h.m.adapterErrs.WithLabelValues(h.handler, h.adapter, reason).Inc()
}

func (h *handlerStats) Dropped(n int, reason string) {
	if n > 0 {
		h.m.instDropped.WithLabelValues(h.handler, h.adapter, reason).Add(float64(n))
	}
}
