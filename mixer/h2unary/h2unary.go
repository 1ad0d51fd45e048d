// Package h2unary serves unary gRPC methods over HTTP/2 written by hand: one reader
// per connection, calls run on it (a burst's on its coroutines) or on goroutines,
// answers batched into few writes.
//
// It exists for the check path. On the 2-core reference machine a do-nothing grpc-go
// server spends ~100 µs of CPU per unary call, nearly all of it transport (goroutine
// hand-offs, a writer goroutine, per-stream bookkeeping); the same do-nothing server
// written this way spends ~45–65 µs, and fewer thread wake-ups shorten the tail
// (sluice-loadtest check --backend noop,noop-h2). It does not do streams,
// compression, interceptors or reflection: methods that need them stay on grpc-go.
package h2unary

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sluicemesh/sluice/mixer/connlimit"
)

// Method is one unary method: its full path and the function answering it.
type Method struct {
	// Path is "/package.Service/Method".
	Path string
	// Call decodes msg (the request message, without gRPC's prefix) and answers it:
	// it appends the answer message, encoded, to dst and returns the extended
	// slice. An error carrying a gRPC status (status.Error) is sent as that
	// status; any other error as UNKNOWN. msg is the call's until it returns:
	// values decoded from it may view it without a copy while the call runs, but
	// the listener reuses msg's buffer for a later request, so what the call keeps
	// beyond its return (a metric label, a cache entry) must be a copy.
	// dst is not the call's either: the listener reuses it once the answer is
	// written, so the call must not keep it.
	Call func(ctx context.Context, msg, dst []byte) ([]byte, error)
	// Inline, when set and true at a call, runs the call on the connection's reader
	// instead of a goroutine of its own: no wake-up, no hand-off, answers of one
	// read batched into one write — but the connection reads nothing until the call
	// returns, so it must only say true for calls that never block. An inline call's
	// context carries no deadline: the client's is checked before the call starts.
	Inline func() bool
	// OnReader, when set and true at a call that is not inline, runs the call on
	// the connection's reader too. A call that waits briefly on a backend (a Redis
	// round trip) then costs no hand-off: waking another thread for a goroutine
	// and putting the reader's to sleep cost more CPU on a small VM than the rest
	// of such a call. A call read alone runs on the reader itself. The calls of a
	// burst (requests read together) each run on a coroutine of the reader
	// (package burst): a backend that parks its work there (burst.Park) gets the
	// work of all of them in one call once the burst is read, and they finish
	// when it returns; a backend that does not park runs them one after the
	// other, so it must wait only briefly. A call's context is only for the
	// call's own goroutine: Park, from a goroutine the call started, would
	// resume the wrong one. Meanwhile the connection reads nothing: a request
	// arriving waits for the call, and a RST_STREAM, or the client closing the
	// connection, is seen only after it (the call is not cancelled by them, nor
	// counted as reset_by_client). So that a slow backend does not hold
	// readers, a call (or a burst's flush) on a reader that takes longer than
	// readerCallSlow, or calls that take longer than readerMeanSlow on average,
	// stop the listener doing this for a while (see readerPause): calls then run
	// on goroutines. The call's context carries its deadline, as a goroutine's
	// does, and a Shutdown that runs out of time cancels it.
	OnReader func() bool
}

// A call run on a reader (Method.OnReader), or a burst's flush, that takes longer
// than readerCallSlow pauses calls on readers, and so do calls whose running mean
// (weight 1/readerMeanWeight per call) passes readerMeanSlow: a backend that
// answers in a few milliseconds every time holds each request arriving meanwhile
// that long, while a host stall of the same length now and then moves the mean
// little. A pause lasts readerPauseMin after one that began readerPauseReset or
// more before, and twice the last pause (up to readerPauseMax) after one that
// began sooner. Calls that were running when a pause began (one stall slows
// every call in flight) do not lengthen it, and the mean starts over with each
// pause, so that after a pause a slow backend is seen anew. A host that stalls
// now and then (a VM descheduled for 10 ms or more) pauses them briefly; a
// backend that stays slow, or is slow at times, has them paused for seconds, up
// to readerPauseMax between slow calls on a reader. The pauses help when the
// host stalls too: with them off, a noisy spell's worst runs were worse (see
// docs/performance-journal.md, 2026-12-08).
const (
	readerCallSlow   = 10 * time.Millisecond
	readerMeanSlow   = 2 * time.Millisecond
	readerMeanWeight = 64
	readerPauseMin   = 50 * time.Millisecond
	readerPauseMax   = 5 * time.Second
	readerPauseReset = 10 * time.Second
)

// readerPause decides when calls may run on readers (Method.OnReader).
type readerPause struct {
	until atomic.Int64 // Unix nanoseconds: calls run on readers from then on
	// began is when the last pause began (Unix nanoseconds): calls that started
	// before it were slowed by what began it, and neither lengthen it nor count
	// in the mean that follows it.
	began atomic.Int64
	// mean is the running mean of the durations of calls that started since the
	// last pause, in nanoseconds. It is updated without a lock, by one
	// compare-and-swap: a call that loses a race drops its sample rather than
	// retry, and never writes over a reset.
	mean atomic.Int64

	// pauses counts the pauses by cause (PauseSlowCall, PauseSlowAverage); nil
	// counts nothing.
	pauses *prometheus.CounterVec

	mu   sync.Mutex
	last time.Duration // the last pause
	// slowAfter, meanSlow, min, max and resetAfter are readerCallSlow,
	// readerMeanSlow, readerPauseMin, readerPauseMax and readerPauseReset (other
	// values in tests).
	slowAfter, meanSlow, min, max, resetAfter time.Duration
}

// Causes of a pause of calls on readers, the cause label of
// sluice_h2unary_reader_pauses_total.
const (
	PauseSlowCall    = "slow_call"    // one call took longer than readerCallSlow
	PauseSlowAverage = "slow_average" // the mean passed readerMeanSlow
)

// newReaderPause returns the pause of a listener, counting its pauses in pauses
// (nil: not counted).
func newReaderPause(pauses *prometheus.CounterVec) readerPause {
	return readerPause{pauses: pauses, slowAfter: readerCallSlow, meanSlow: readerMeanSlow, min: readerPauseMin, max: readerPauseMax, resetAfter: readerPauseReset}
}

// allows reports whether a call may run on a reader at now.
func (p *readerPause) allows(now time.Time) bool { return now.UnixNano() >= p.until.Load() }

// ended takes note of a call on a reader that ran from start to end, and pauses
// calls on readers if it was slow, or if calls have been on average.
func (p *readerPause) ended(start, end time.Time) {
	if start.UnixNano() < p.began.Load() {
		return // slowed by what began the current pause
	}
	d := int64(end.Sub(start))
	m := p.mean.Load()
	next := m + (d-m)/readerMeanWeight
	if !p.mean.CompareAndSwap(m, next) {
		next = p.mean.Load() // a concurrent call's sample, or a reset, won
	}
	if d <= int64(p.slowAfter) && next <= int64(p.meanSlow) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	began := p.began.Load()
	if start.UnixNano() < began {
		return // a concurrent call began a pause meanwhile
	}
	pause := p.min
	if began != 0 && end.UnixNano()-began < int64(p.resetAfter) {
		pause = min(2*p.last, p.max)
	}
	p.last = pause
	p.began.Store(end.UnixNano())
	p.mean.Store(0)
	p.until.Store(end.Add(pause).UnixNano())
	if p.pauses != nil {
		cause := PauseSlowAverage
		if d > int64(p.slowAfter) {
			cause = PauseSlowCall
		}
		p.pauses.WithLabelValues(cause).Inc()
	}
}

// Unary adapts a typed handler, such as a generated service method, to a Method.
func Unary[Req any, PReq interface {
	*Req
	proto.Message
}, Resp proto.Message](path string, h func(context.Context, PReq) (Resp, error)) Method {
	return Method{Path: path, Call: func(ctx context.Context, msg, dst []byte) ([]byte, error) {
		req := PReq(new(Req))
		if err := proto.Unmarshal(msg, req); err != nil {
			return nil, status.Errorf(codes.Internal, "decode %s request: %v", path, err)
		}
		resp, err := h(ctx, req)
		if err != nil {
			return nil, err
		}
		return AppendMessage(dst, resp)
	}}
}

// AppendMessage appends m's encoding to dst, for a Call; a failure is INTERNAL.
func AppendMessage(dst []byte, m proto.Message) ([]byte, error) {
	out, err := proto.MarshalOptions{}.MarshalAppend(dst, m)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode answer: %v", err)
	}
	return out, nil
}

// Options configure a Server.
type Options struct {
	Methods []Method
	// MaxRecvMsgSize bounds one request message; 0 means 4 MiB. Larger requests
	// are answered RESOURCE_EXHAUSTED.
	MaxRecvMsgSize int
	// MaxConcurrentStreams bounds the calls in flight per connection; 0 means 1024.
	MaxConcurrentStreams uint32
	// MaxConnections bounds the connections open at once; 0 means
	// connlimit.DefaultMax. A connection past it is closed as soon as it is
	// accepted (ReasonConnLimit), and a closed one keeps its place until its
	// calls have returned.
	MaxConnections int
	// TLS, when set, is served on every connection (with ALPN h2).
	TLS    *tls.Config
	Logger *slog.Logger
	// Metrics receives sluice_h2unary_* metrics; nil registers none.
	Metrics prometheus.Registerer
}

// Reasons of sluice_h2unary_errors_total.
const (
	ReasonProtocol      = "protocol_error"  // the connection broke HTTP/2's rules; it was closed
	ReasonTooLarge      = "too_large"       // a request over MaxRecvMsgSize
	ReasonUnknownMethod = "unknown_method"  // a path no Method serves
	ReasonBadRequest    = "bad_request"     // not a gRPC request, a compressed or malformed message
	ReasonRefused       = "refused"         // over MaxConcurrentStreams, or after GOAWAY
	ReasonReset         = "reset_by_client" // the client cancelled a call before its answer
	ReasonStream        = "stream_error"    // a stream broke HTTP/2's rules (flow control, a reused ID); it was reset
)

// More reasons of sluice_h2unary_errors_total: calls accepted and not answered,
// and connections not served.
const (
	// ReasonDeadline: a call whose grpc-timeout ran out before it could start,
	// answered DEADLINE_EXCEEDED.
	ReasonDeadline = "deadline_exceeded"
	// ReasonConnClosed: a call not answered yet (running, uploading, or its answer
	// waiting for window) when its connection closed: the client left or broke
	// HTTP/2's rules, a write failed, or Shutdown's wait ran out.
	ReasonConnClosed = "connection_closed"
	// ReasonWriteTimeout: a client that took nothing written to it for
	// writeTimeout; its connection was closed with the answers queued for it.
	ReasonWriteTimeout = "write_timeout"
	// ReasonTLS: a connection whose TLS handshake failed; it was closed.
	ReasonTLS = "tls_handshake"
	// ReasonAccept: accepting a connection failed (out of file descriptors and
	// the like): the listener pauses before it accepts again.
	ReasonAccept = "accept_error"
	// ReasonConnLimit: a connection closed as soon as accepted, MaxConnections
	// being open.
	ReasonConnLimit = "connection_limit"
)

// Server is a lean unary gRPC server.
type Server struct {
	opts    Options
	log     *slog.Logger
	methods map[string]*Method
	errs    *prometheus.CounterVec
	conns   prometheus.Gauge
	// calls counts the calls started, by where they ran: inlineCalls on the
	// connection's reader, readerCalls too (calls that may wait, run on a reader
	// with nothing else to read), goCalls on goroutines of their own.
	calls                             *prometheus.CounterVec
	inlineCalls, readerCalls, goCalls prometheus.Counter
	burstCalls                        prometheus.Counter
	// readerPause pauses calls on readers after one was slow, or while
	// they are on average; pauses counts its pauses.
	readerPause readerPause
	pauses      *prometheus.CounterVec
	// writeTimeout bounds one write to a client (writeTimeout, the constant;
	// shorter in tests).
	writeTimeout time.Duration
	// connWindow is each connection's receive window: the request bytes it may
	// hold at once (two of the largest requests, 16 MiB at least). streamWindow is
	// each stream's, which fits the largest request (see newConn).
	connWindow, streamWindow uint32

	// work hands goroutine calls to idle workers (see goCall); stop ends them.
	work    chan callWork
	stop    chan struct{}
	workers atomic.Int32

	mu     sync.Mutex
	lis    map[net.Listener]struct{}
	active map[*conn]struct{}
	// refusedLog is when a connection past MaxConnections was last logged.
	refusedLog time.Time
	shutdown   bool
	wg         sync.WaitGroup // connections
}

// maxWorkers bounds the goroutines kept for calls: more calls at once get
// goroutines of their own, which end with their call.
const maxWorkers = 256

// callWork is a call for a worker.
type callWork struct {
	c  *conn
	st *stream
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("h2unary: server closed")

// New builds a server for the methods.
func New(opts Options) (*Server, error) {
	if opts.MaxRecvMsgSize <= 0 {
		opts.MaxRecvMsgSize = 4 << 20
	}
	if opts.MaxRecvMsgSize > 1<<30 {
		return nil, fmt.Errorf("h2unary: max message size %d over 1 GiB", opts.MaxRecvMsgSize)
	}
	if opts.MaxConcurrentStreams == 0 {
		opts.MaxConcurrentStreams = 1024
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = connlimit.DefaultMax
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{
		opts: opts, log: opts.Logger, methods: map[string]*Method{}, writeTimeout: writeTimeout,
		connWindow:   uint32(min(max(16<<20, 2*(opts.MaxRecvMsgSize+5+16384)), 1<<31-1)),
		streamWindow: uint32(opts.MaxRecvMsgSize + 5 + 16384),
		lis:          map[net.Listener]struct{}{}, active: map[*conn]struct{}{},
		work: make(chan callWork), stop: make(chan struct{}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_h2unary_errors_total",
			Help: "Calls or connections of the lean check listener refused or broken, by reason.",
		}, []string{"reason"}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_h2unary_connections_active", Help: "Open connections of the lean check listener.",
		}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_h2unary_calls_total",
			Help: "Calls of the lean check listener started, by mode: inline (on the connection's reader, no hand-off), reader (a call that may wait on a backend, run on a reader that had nothing else to read), burst (such a call read together with others, run on the reader, its backend's work sent with theirs) or goroutine (a call that may wait on a backend, handed to a goroutine).",
		}, []string{"mode"}),
		pauses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_h2unary_reader_pauses_total",
			Help: "Pauses of calls on readers (all such calls go to goroutines for 50 ms to 5 s), by cause: slow_call (one took over 10 ms) or slow_average (their running mean passed 2 ms). Frequent pauses mean a slow backend.",
		}, []string{"cause"}),
	}
	s.readerPause = newReaderPause(s.pauses)
	s.pauses.WithLabelValues(PauseSlowCall)
	s.pauses.WithLabelValues(PauseSlowAverage)
	s.inlineCalls, s.readerCalls, s.goCalls = s.calls.WithLabelValues("inline"), s.calls.WithLabelValues("reader"), s.calls.WithLabelValues("goroutine")
	s.burstCalls = s.calls.WithLabelValues("burst")
	for _, r := range []string{ReasonProtocol, ReasonTooLarge, ReasonUnknownMethod, ReasonBadRequest, ReasonRefused, ReasonReset,
		ReasonStream, ReasonDeadline, ReasonConnClosed, ReasonWriteTimeout, ReasonTLS, ReasonAccept, ReasonConnLimit} {
		s.errs.WithLabelValues(r)
	}
	for i := range opts.Methods {
		m := &opts.Methods[i]
		if !strings.HasPrefix(m.Path, "/") || m.Call == nil {
			return nil, fmt.Errorf("h2unary: method %q: want a /package.Service/Method path and a Call", m.Path)
		}
		if _, dup := s.methods[m.Path]; dup {
			return nil, fmt.Errorf("h2unary: method %s twice", m.Path)
		}
		s.methods[m.Path] = m
	}
	if opts.Metrics != nil {
		for _, c := range []prometheus.Collector{s.errs, s.conns, s.calls, s.pauses} {
			if err := opts.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("register h2unary metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Serve accepts connections on lis until Shutdown, or until lis fails.
func (s *Server) Serve(lis net.Listener) error {
	if s.opts.TLS != nil {
		cfg := s.opts.TLS.Clone()
		cfg.NextProtos = []string{"h2"}
		lis = tls.NewListener(lis, cfg)
	}
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		lis.Close()
		return ErrServerClosed
	}
	s.lis[lis] = struct{}{}
	s.mu.Unlock()
	var delay time.Duration
	for {
		nc, err := lis.Accept()
		if err != nil {
			s.mu.Lock()
			down := s.shutdown
			s.mu.Unlock()
			if down {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
				errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EINTR) {
				// Out of file descriptors and the like: back off and retry, as
				// net/http and grpc-go do, instead of giving up the listener.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.count(ReasonAccept)
				s.log.Warn("h2unary: accept failed; retrying", "error", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		delay = 0
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		if len(s.active) >= s.opts.MaxConnections {
			logIt := time.Since(s.refusedLog) >= time.Minute
			if logIt {
				s.refusedLog = time.Now()
			}
			s.mu.Unlock()
			s.count(ReasonConnLimit) // before Close, so that a client seeing the close sees it counted
			nc.Close()
			if logIt {
				s.log.Warn("h2unary: connection refused, MaxConnections are open (counted in sluice_h2unary_errors_total; logged once a minute)",
					"max", s.opts.MaxConnections, "remote", nc.RemoteAddr().String())
			}
			continue
		}
		c := newConn(s, nc)
		s.active[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.conns.Inc()
		go func() {
			defer s.wg.Done()
			defer s.conns.Dec()
			c.serve()
			s.mu.Lock()
			delete(s.active, c)
			s.mu.Unlock()
		}()
	}
}

// Shutdown stops accepting, tells every client to go away (GOAWAY), lets the calls
// in flight finish and closes the connections. When ctx ends first, it closes them
// at once and cancels their calls, then still waits for the calls to return: a
// method is bounded by its context (the check path's by its backends' timeouts),
// and when Shutdown returns no call may still use what its caller closes next (a
// Redis client, say).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.shutdown {
		close(s.stop) // idle workers end; busy ones once their call returns
	}
	s.shutdown = true
	for l := range s.lis {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.active))
	for c := range s.active {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.goAway()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, c := range conns {
			c.nc.Close()
			// A call on the reader (Method.OnReader) is cancelled here, not
			// when its reader sees the close, which it reads only after the call.
			c.end()
		}
		<-done
		return ctx.Err()
	}
}

// goCall runs a call that may wait on a goroutine: an idle worker's when one is
// waiting, else a new one. A new goroutine's stack starts at a few KiB and is
// copied as it grows, every time, for a call that reaches a Redis client (8% of
// such calls' CPU profile); a worker grew its stack once.
func (s *Server) goCall(c *conn, st *stream) {
	select {
	case s.work <- callWork{c, st}:
		return
	default:
	}
	if s.workers.Add(1) <= maxWorkers {
		go s.worker(c, st)
		return
	}
	s.workers.Add(-1)
	go c.call(st)
}

// worker runs calls until the server shuts down.
func (s *Server) worker(c *conn, st *stream) {
	defer s.workers.Add(-1)
	for {
		c.call(st)
		c, st = nil, nil // an idle worker holds no connection
		select {
		case w := <-s.work:
			c, st = w.c, w.st
		case <-s.stop:
			return
		}
	}
}

func (s *Server) count(reason string) { s.errs.WithLabelValues(reason).Inc() }

// timeoutUnit is the duration of grpc-timeout's unit u, or 0 for none.
func timeoutUnit(u byte) time.Duration {
	switch u {
	case 'H':
		return time.Hour
	case 'M':
		return time.Minute
	case 'S':
		return time.Second
	case 'm':
		return time.Millisecond
	case 'u':
		return time.Microsecond
	case 'n':
		return time.Nanosecond
	}
	return 0
}

// parseTimeout reads a grpc-timeout value: up to 8 digits and a unit.
func parseTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	unit := timeoutUnit(v[len(v)-1])
	if unit == 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(v[:len(v)-1], 10, 64)
	if err != nil {
		return 0, false
	}
	if d := time.Duration(n); d > (1<<63-1)/unit {
		return 1<<63 - 1, true
	}
	return time.Duration(n) * unit, true
}

// encodeGRPCMessage percent-encodes a status message as gRPC's HTTP/2 mapping asks.
func encodeGRPCMessage(msg string) string {
	clean := true
	for i := 0; i < len(msg); i++ {
		if c := msg[i]; c < 0x20 || c > 0x7e || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return msg
	}
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		if c := msg[i]; c < 0x20 || c > 0x7e || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// statusFields are the trailer fields of a status other than OK.
func statusFields(st *status.Status) []hpack.HeaderField {
	f := []hpack.HeaderField{{Name: "grpc-status", Value: strconv.Itoa(int(st.Code()))}}
	if m := st.Message(); m != "" {
		f = append(f, hpack.HeaderField{Name: "grpc-message", Value: encodeGRPCMessage(m)})
	}
	if len(st.Proto().GetDetails()) > 0 {
		if b, err := proto.Marshal(st.Proto()); err == nil {
			f = append(f, hpack.HeaderField{Name: "grpc-status-details-bin", Value: base64.RawStdEncoding.EncodeToString(b)})
		}
	}
	return f
}

// prefaceTimeout bounds each of the first two steps of a new connection: its TLS
// handshake, then its HTTP/2 preface.
const prefaceTimeout = 10 * time.Second

// handshake runs a connection's TLS handshake, with readPreface's deadline, so
// that a failed one is told apart from a client that does not speak HTTP/2
// (readPreface would run it on its first read).
func handshake(tc *tls.Conn) error {
	_ = tc.SetReadDeadline(time.Now().Add(prefaceTimeout))
	defer tc.SetReadDeadline(time.Time{})
	return tc.Handshake()
}

// readPreface reads the client's connection preface, with a deadline so that a
// connection that never speaks does not hold a goroutine forever.
func readPreface(nc net.Conn, r *bufio.Reader) error {
	_ = nc.SetReadDeadline(time.Now().Add(prefaceTimeout))
	defer nc.SetReadDeadline(time.Time{})
	buf := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(r, buf); err != nil {
		return fmt.Errorf("read preface: %w", err)
	}
	if string(buf) != http2.ClientPreface {
		return errors.New("not an HTTP/2 client preface (is the client speaking gRPC over plaintext HTTP/2?)")
	}
	return nil
}

// grpcPrefix appends gRPC's 5-byte message prefix for an uncompressed message of n bytes.
func grpcPrefix(dst []byte, n int) []byte {
	return binary.BigEndian.AppendUint32(append(dst, 0), uint32(n))
}
