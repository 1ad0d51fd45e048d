// Package connlimit bounds the connections a listener holds open at once: past the
// bound a new connection is closed as soon as it is accepted, and counted.
package connlimit

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMax is the bound Sluice's listeners use unless told otherwise.
const DefaultMax = 16384

// refusalLogEvery is how often at most a refused connection is logged; every one
// is counted.
const refusalLogEvery = time.Minute

// Options configure a Listener.
type Options struct {
	// Max is the most connections open at once; it must be at least 1.
	Max int
	// Name labels the listener's metrics (listener="grpc") and log lines.
	Name string
	// UserTimeout, when set, is set as TCP_USER_TIMEOUT on accepted connections:
	// grpc-go sets its keepalive timeout so only on a *net.TCPConn, which a
	// connection of this listener is not.
	UserTimeout time.Duration
	Logger      *slog.Logger
}

// Listener is a net.Listener whose open connections are bounded. grpc-go has no
// such bound, and each connection holds goroutines and buffers however long it
// stays, so a client opening connections in a loop would otherwise hold memory and
// file descriptors without end. A connection's place is given back when it is
// closed, even if its server still runs calls it started (h2unary, which holds a
// place until they return, bounds its connections itself).
type Listener struct {
	net.Listener
	opts Options

	active  atomic.Int64
	refused prometheus.Counter
	gauge   prometheus.GaugeFunc
	// lastLog rate-limits the refusal warning (Unix nanoseconds).
	lastLog atomic.Int64
}

// New bounds the connections of l.
func New(l net.Listener, opts Options) (*Listener, error) {
	if opts.Max < 1 {
		return nil, errors.New("connlimit: Max must be at least 1")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ll := &Listener{Listener: l, opts: opts}
	labels := prometheus.Labels{"listener": opts.Name}
	ll.refused = prometheus.NewCounter(prometheus.CounterOpts{
		Name:        "sluice_connections_refused_total",
		Help:        "Connections closed as soon as accepted because --max-connections connections were open already.",
		ConstLabels: labels,
	})
	ll.gauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sluice_connections_active", Help: "Open connections of the listener.", ConstLabels: labels,
	}, func() float64 { return float64(ll.active.Load()) })
	return ll, nil
}

// Listen listens on the TCP address addr, bounds its connections and registers
// the listener's metrics on reg, unless reg is nil.
func Listen(addr string, opts Options, reg prometheus.Registerer) (*Listener, error) {
	raw, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l, err := New(raw, opts)
	if err == nil && reg != nil {
		if err = reg.Register(l); err != nil {
			err = fmt.Errorf("register connection metrics: %w", err)
		}
	}
	if err != nil {
		raw.Close()
		return nil, err
	}
	return l, nil
}

// Describe implements prometheus.Collector.
func (l *Listener) Describe(ch chan<- *prometheus.Desc) {
	l.refused.Describe(ch)
	l.gauge.Describe(ch)
}

// Collect implements prometheus.Collector.
func (l *Listener) Collect(ch chan<- prometheus.Metric) {
	l.refused.Collect(ch)
	l.gauge.Collect(ch)
}

// Active returns the connections open now.
func (l *Listener) Active() int { return int(l.active.Load()) }

// Accept returns the next connection that fits under the bound.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if !l.take() {
			l.refused.Inc() // before Close, so that a client seeing the close sees it counted
			c.Close()
			now := time.Now().UnixNano()
			if last := l.lastLog.Load(); now-last >= int64(refusalLogEvery) && l.lastLog.CompareAndSwap(last, now) {
				l.opts.Logger.Warn("connection refused: the listener's bound is reached (counted in sluice_connections_refused_total; logged once a minute)",
					"listener", l.opts.Name, "max", l.opts.Max, "remote", c.RemoteAddr().String())
			}
			continue
		}
		if l.opts.UserTimeout > 0 {
			if tc, ok := c.(*net.TCPConn); ok {
				setUserTimeout(tc, l.opts.UserTimeout)
			}
		}
		return &conn{Conn: c, l: l, ready: newReadyReader(c)}, nil
	}
}

// take takes a place under the bound, if one is free.
func (l *Listener) take() bool {
	for {
		n := l.active.Load()
		if n >= int64(l.opts.Max) {
			return false
		}
		if l.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// conn gives its place back when it is first closed.
type conn struct {
	net.Conn
	l    *Listener
	once sync.Once
	// ready serves ReadOnReady (Linux), without which grpc-go would pin a read
	// buffer to the connection for life.
	ready *readyReader
}

func (c *conn) Close() error {
	c.once.Do(func() { c.l.active.Add(-1) })
	return c.Conn.Close()
}
