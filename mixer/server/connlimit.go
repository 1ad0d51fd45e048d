package server

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemesh/sluice/mixer/h2unary"
)

// DefaultMaxConnections is the default of Options.MaxConnections, the check
// listener's.
const DefaultMaxConnections = h2unary.DefaultMaxConnections

// limitListener bounds the connections open at once that it accepted: past max, a
// new connection is closed as soon as it is accepted, and counted. grpc-go has no
// such bound, and each connection holds its goroutines and buffers however long
// it stays, so a client opening connections in a loop would otherwise hold memory
// and file descriptors without end.
type limitListener struct {
	net.Listener
	max int64
	// userTimeout is set as TCP_USER_TIMEOUT on accepted connections, as grpc-go
	// does itself for its keepalive timeout only on a *net.TCPConn, which a
	// wrapped connection no longer is.
	userTimeout time.Duration
	log         *slog.Logger

	active  atomic.Int64
	refused prometheus.Counter
	gauge   prometheus.GaugeFunc
	// lastLog rate-limits the refusal warning (Unix nanoseconds).
	lastLog atomic.Int64
}

// refusalLogEvery is how often at most a refused connection is logged; every one
// is counted.
const refusalLogEvery = time.Minute

func newLimitListener(l net.Listener, max int, userTimeout time.Duration, log *slog.Logger) *limitListener {
	ll := &limitListener{Listener: l, max: int64(max), userTimeout: userTimeout, log: log}
	ll.refused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sluice_grpc_connections_refused_total",
		Help: "Connections to the gRPC port closed as soon as accepted because --max-connections were open.",
	})
	ll.gauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sluice_grpc_connections_active", Help: "Open connections of the gRPC port.",
	}, func() float64 { return float64(ll.active.Load()) })
	return ll
}

// collectors are the listener's metrics.
func (l *limitListener) collectors() []prometheus.Collector {
	return []prometheus.Collector{l.refused, l.gauge}
}

// Accept returns the next connection that fits under the bound.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if n := l.active.Add(1); n > l.max {
			l.active.Add(-1)
			l.refused.Inc() // before Close, so that a client seeing the close sees it counted
			c.Close()
			now := time.Now().UnixNano()
			if last := l.lastLog.Load(); now-last >= int64(refusalLogEvery) && l.lastLog.CompareAndSwap(last, now) {
				l.log.Warn("gRPC port: connection refused, --max-connections are open (counted in sluice_grpc_connections_refused_total; logged once a minute)",
					"max", l.max, "remote", c.RemoteAddr().String())
			}
			continue
		}
		if l.userTimeout > 0 {
			if tc, ok := c.(*net.TCPConn); ok {
				setUserTimeout(tc, l.userTimeout)
			}
		}
		return &limitConn{Conn: c, l: l, ready: newReadyReader(c)}, nil
	}
}

// limitConn gives its place back when it is first closed.
type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
	// ready serves ReadOnReady (Linux), without which grpc-go would pin a read
	// buffer to the connection for life.
	ready *readyReader
}

func (c *limitConn) Close() error {
	c.once.Do(func() { c.l.active.Add(-1) })
	return c.Conn.Close()
}
