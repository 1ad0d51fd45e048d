package xds

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's sluice_xds_* series.
type metrics struct {
	connected *prometheus.GaugeVec
	streams   *prometheus.CounterVec
	responses *prometheus.CounterVec
	acks      *prometheus.CounterVec
	nacks     *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	resources *prometheus.GaugeVec
	pushes    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_xds_connected_clients", Help: "Open xDS streams whose node is known, by generator (envoy, grpc) and protocol (sotw, delta).",
		}, []string{"generator", "protocol"}),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_xds_streams_total", Help: "xDS streams opened, by protocol.",
		}, []string{"protocol"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_xds_responses_total", Help: "xDS responses sent, by type (LDS, RDS, CDS, EDS).",
		}, []string{"type"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_xds_acks_total", Help: "xDS responses accepted by clients, by type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_xds_nacks_total", Help: "xDS responses rejected by clients (NACK), by type; see /api/xds/clients for the errors.",
		}, []string{"type"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_xds_rejected_requests_total", Help: "xDS requests Sluice does not answer, by reason (unknown_type, rest).",
		}, []string{"reason"}),
		resources: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sluice_xds_resources", Help: "Resources served, by generator (envoy, grpc, shared) and type. Envoy listeners exclude the per-node inbound listener.",
		}, []string{"generator", "type"}),
		pushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_xds_pushes_total", Help: "Resource sets pushed to the xDS caches that changed something.",
		}),
	}
	for _, t := range []string{"LDS", "RDS", "CDS", "EDS"} {
		m.responses.WithLabelValues(t)
		m.acks.WithLabelValues(t)
		m.nacks.WithLabelValues(t)
	}
	m.rejected.WithLabelValues("unknown_type")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.connected, m.streams, m.responses, m.acks, m.nacks, m.rejected, m.resources, m.pushes} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register xDS metrics: %w", err)
		}
	}
	return m, nil
}

// cacheLogger passes go-control-plane's logging to slog. Its per-watch messages are
// debug-level chatter; warnings and errors are kept.
type cacheLogger struct{ log *slog.Logger }

func (l *cacheLogger) Debugf(format string, args ...any) { l.at(slog.LevelDebug, format, args) }
func (l *cacheLogger) Infof(format string, args ...any)  { l.at(slog.LevelDebug, format, args) }
func (l *cacheLogger) Warnf(format string, args ...any)  { l.at(slog.LevelWarn, format, args) }
func (l *cacheLogger) Errorf(format string, args ...any) { l.at(slog.LevelError, format, args) }

func (l *cacheLogger) at(level slog.Level, format string, args []any) {
	// Formatting is skipped unless the message is kept: watches log maps.
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	l.log.Log(context.Background(), level, "xds cache: "+fmt.Sprintf(format, args...))
}
