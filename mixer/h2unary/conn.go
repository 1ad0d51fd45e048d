package h2unary

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicemesh/sluice/adapters/burst"
	"github.com/sluicemesh/sluice/adapters/lazyctx"
)

// okHeaders start, and okTrailer ends, every successful answer.
var (
	okHeaders = []hpack.HeaderField{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"}}
	okTrailer = []hpack.HeaderField{{Name: "grpc-status", Value: "0"}}
)

const (
	// writeTimeout bounds one write (to between half of it and all of it, see
	// armWrite): a client that stops reading loses its connection instead of
	// holding a goroutine, and Shutdown, forever.
	writeTimeout = 10 * time.Second
	// maxQueued is how many bytes of frames may wait for a write in progress before
	// the reader stops reading: a client that floods PINGs or resets while not
	// reading its answers cannot grow the queue without bound.
	maxQueued = 1 << 20
	// flushAt is how much the reader lets accumulate while more frames wait.
	flushAt = 64 << 10
	// maxHeaderList bounds a request's header block (decoded).
	maxHeaderList = 64 << 10
	// maxSpareStreams bounds the released streams a connection keeps for reuse.
	maxSpareStreams = 64
	// maxKeptBuffer bounds the answer buffer a connection keeps between inline
	// calls: one huge call does not hold its memory for the connection's life.
	maxKeptBuffer = 64 << 10
	// maxSpareBuffers and maxSpareBuffer bound the request and answer buffers a
	// connection keeps for its next calls: 256 KiB at most, a few KiB in practice.
	maxSpareBuffers = 16
	maxSpareBuffer  = 16 << 10
	// maxHeldOut bounds the frames a returning call leaves for the next one to
	// write (see conn.call).
	maxHeldOut = 64 << 10
	// maxBurst bounds the calls of a burst parked on the reader (see
	// dispatchLocked): past it, their backends' work is sent before more is read.
	maxBurst = 64
)

// conn is one client connection. The reader goroutine (serve) owns the read side;
// every goroutine that writes holds mu, and whoever finds no write in progress
// writes everything buffered, so that answers ready together leave in one write
// and no goroutine exists just to write.
//
// A stream counts against MaxConcurrentStreams (inflight) from its HEADERS until it
// is closed (answered or reset) and its call, if one started, has returned: a
// client that resets its calls cannot run more of them at once. Its request bytes
// go back to the client's connection window only then, so a connection never holds
// more than one window of requests: a client that sends past its window is closed
// with FLOW_CONTROL_ERROR.
type conn struct {
	srv *Server
	nc  net.Conn
	ctx context.Context
	end context.CancelFunc

	// Reader-owned.
	in       *bufio.Reader
	hdr      *headerReader
	receives map[uint32]*stream
	reply    []byte // inline calls' answers are encoded here
	// burst runs the calls of a burst that may wait on a backend (see
	// dispatchLocked); runBurst is its function, made once.
	burst    *burst.Runner
	runBurst func(any)

	// answering counts goroutine calls that returned and have not yet queued
	// their answers (see call); shared, hence atomic.
	answering atomic.Int32

	mu      sync.Mutex // guards all below
	cond    *sync.Cond // a write ended, a stream was released, or the connection closed
	out     []byte     // frames waiting to be written
	spare   []byte
	wr      *http2.Framer // writes into out
	hbuf    bytes.Buffer
	henc    *hpack.Encoder
	writing bool
	// writeDeadline is the deadline set on nc for writes; only the writer (who
	// set writing) reads or changes it.
	writeDeadline time.Time
	closed        bool
	goneAway      bool   // GOAWAY sent: no new streams
	draining      bool   // Shutdown: close once every stream is done
	lastID        uint32 // the highest stream the client opened
	inflight      int    // streams counted against the limit
	unacked       uint32 // request bytes released since the last connection WINDOW_UPDATE
	// recvWindow is what the client may still send on the connection: the
	// window advertised less the DATA received, plus the WINDOW_UPDATEs sent. A
	// client that sends past it would make the connection hold more requests
	// than one window.
	recvWindow int64
	// okHead and okTrail are okHeaders' and okTrailer's encodings once they are
	// wholly indexed: such a block changes neither side's table, so it can be
	// sent again without the encoder's search, until anything else is encoded
	// or the table's size changes (nil until then).
	okHead, okTrail []byte
	// Flow control of what we send.
	sendWindow   int64 // connection
	streamWindow int64 // the client's initial stream window
	maxFrame     uint32
	open         map[uint32]*stream // streams not closed yet
	blocked      []*stream          // answers waiting for window, in order
	// spareStreams are streams released in full, and spareBuffers the request
	// and answer buffers of calls that returned (a method is done with both when
	// it returns, Method.Call): reused for the next calls, so that a call
	// allocates nothing on the listener's side once the connection is warm.
	spareStreams []*stream
	spareBuffers [][]byte
}

// stream is one call.
type stream struct {
	id       uint32
	method   *Method
	data     []byte         // the request, gRPC prefix included
	reply    []byte         // a goroutine call's answer buffer, taken at dispatch
	received uint32         // DATA payload bytes received: window to give back at release
	flowed   uint32         // DATA bytes received, padding included: the stream's window used
	deadline time.Time      // from grpc-timeout; zero for none
	err      *status.Status // set when the request is refused before any call
	ctx      context.Context
	call     *lazyctx.Context // ctx, for a goroutine call: cancelled when it ends
	// Under conn.mu.
	window  int64  // what we may still send on this stream
	pending []byte // answer DATA not yet sent for lack of window; the OK trailers follow it
	closed  bool   // answered in full, or reset
	refs    int    // the stream itself, and its call while it runs
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv: s, nc: nc, in: bufio.NewReaderSize(nc, 32<<10), hdr: newHeaderReader(),
		receives: map[uint32]*stream{}, open: map[uint32]*stream{},
		sendWindow: 65535, streamWindow: 65535, maxFrame: 16384,
		recvWindow: int64(s.connWindow),
	}
	c.cond = sync.NewCond(&c.mu)
	c.ctx, c.end = context.WithCancel(context.Background())
	c.burst = burst.NewRunner(c.ctx)
	c.runBurst = func(st any) { c.answerBurst(st.(*stream)) }
	c.wr = http2.NewFramer(writerFunc(c.appendOut), nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	// The server's SETTINGS must be its first frame: queue them before anything
	// (a GOAWAY from Shutdown) can be.
	_ = c.wr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: s.opts.MaxConcurrentStreams},
		// One window per stream that fits the largest request: a unary call never
		// waits for a stream WINDOW_UPDATE, and none is ever sent.
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: s.streamWindow},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList},
	)
	_ = c.wr.WriteWindowUpdate(0, s.connWindow-65535)
	return c
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// appendOut is the framer's sink; mu is held.
func (c *conn) appendOut(p []byte) (int, error) {
	c.out = append(c.out, p...)
	return len(p), nil
}

// serve reads frames until the connection ends, then waits for its calls.
func (c *conn) serve() {
	defer func() {
		if v := recover(); v != nil {
			// A method that panicked on the reader (inline, or on a coroutine of a
			// burst) left its call, and perhaps mu, behind: waiting for it in
			// finish would hang the connection and Shutdown. Crash, as a panic in a
			// goroutine call does.
			panic(v)
		}
		c.finish()
	}()
	if tc, ok := c.nc.(*tls.Conn); ok {
		if err := handshake(tc); err != nil {
			c.srv.count(ReasonTLS)
			c.srv.log.Debug("h2unary: TLS handshake failed", "remote", c.nc.RemoteAddr(), "error", err)
			return
		}
	}
	if err := readPreface(c.nc, c.in); err != nil {
		c.srv.count(ReasonProtocol)
		c.srv.log.Debug("h2unary: connection refused", "remote", c.nc.RemoteAddr(), "error", err)
		return
	}
	rd := http2.NewFramer(nil, c.in)
	rd.SetMaxReadFrameSize(1 << 20)
	// A DATA frame is read into the same struct each time: its payload is copied
	// out before the next read.
	rd.SetReuseFrames()
	var se http2.StreamError // declared once: errors.As takes its address
	for {
		if c.burst.Parked() > 0 && !c.frameBuffered() {
			// The burst is read: send what its calls wait for, before waiting
			// for more input.
			c.flushBurst()
		}
		c.mu.Lock()
		for c.writing && len(c.out) > maxQueued && !c.closed {
			c.cond.Wait()
		}
		if !c.frameBuffered() || len(c.out) >= flushAt {
			// About to wait for input, or much to say: write what inline calls,
			// acknowledgements and refusals left.
			c.flushLocked()
		} else {
			c.mu.Unlock()
		}
		f, err := rd.ReadFrame()
		if errors.As(err, &se) {
			// The framer consumed the malformed frame: only its stream is refused.
			c.refuse(se)
			continue
		}
		if err != nil {
			c.readFailed(err)
			return
		}
		err = c.handle(f)
		if errors.As(err, &se) {
			c.refuse(se)
			continue
		}
		if err != nil {
			c.connError(err)
			return
		}
	}
}

// refuse resets a stream whose frames were malformed; the connection goes on.
func (c *conn) refuse(se http2.StreamError) {
	c.srv.count(ReasonBadRequest)
	delete(c.receives, se.StreamID)
	c.mu.Lock()
	if se.StreamID > c.lastID && se.StreamID%2 == 1 {
		c.lastID = se.StreamID
	}
	c.resetLocked(se.StreamID, se.Code)
	c.flushLocked()
}

// finish ends the connection once the reader is done: close it (a write stuck on a
// client that stopped reading fails now), cancel the calls, release every stream
// and wait for the calls to return.
func (c *conn) finish() {
	c.end()
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.nc.Close()
	}
	// Calls accepted and not answered: their answers are lost with the
	// connection. A call refused at its headers (st.err, counted then) and still
	// uploading was never accepted.
	lost := 0
	for _, st := range c.open {
		if st.err == nil {
			lost++
		}
	}
	if lost > 0 {
		c.srv.errs.WithLabelValues(ReasonConnClosed).Add(float64(lost))
	}
	for _, st := range c.open {
		c.closeStreamLocked(st)
	}
	// Calls of a burst parked on the reader end now, their contexts cancelled:
	// their backends send nothing for them.
	c.mu.Unlock()
	c.burst.Close()
	c.mu.Lock()
	for c.inflight > 0 {
		c.cond.Wait()
	}
	c.mu.Unlock()
}

// readFailed ends the connection after a read error: a broken rule of HTTP/2 is
// answered with GOAWAY; EOF, a reset or a close by Shutdown need no answer.
func (c *conn) readFailed(err error) {
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		c.connError(err)
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.connError(http2.ConnectionError(http2.ErrCodeFrameSize))
	}
}

// connError ends the connection with GOAWAY and the error's code.
func (c *conn) connError(err error) {
	c.srv.count(ReasonProtocol)
	c.srv.log.Debug("h2unary: closing connection", "remote", c.nc.RemoteAddr(), "error", err)
	code := http2.ErrCodeProtocol
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		code = http2.ErrCode(ce)
	}
	c.mu.Lock()
	_ = c.wr.WriteGoAway(c.lastID, code, []byte(err.Error()))
	c.goneAway = true
	// A call's answer may be being written: that writer takes the GOAWAY too, but
	// the connection closes when this returns, so wait for it (writeTimeout
	// bounds each of its writes) rather than cut the GOAWAY off.
	for c.writing && !c.closed {
		c.cond.Wait()
	}
	c.flushLocked()
}

// goAway tells the client that no new call will be taken; the calls it opened
// already are answered, then the connection closes. It never writes on the
// caller's goroutine (Shutdown's): a client that does not read cannot hold it.
func (c *conn) goAway() {
	c.mu.Lock()
	c.draining = true
	if !c.goneAway && !c.closed {
		c.goneAway = true
		_ = c.wr.WriteGoAway(c.lastID, http2.ErrCodeNo, nil)
	}
	c.mu.Unlock()
	go func() {
		c.mu.Lock()
		c.flushLocked()
	}()
}

// handle acts on one frame. A StreamError refuses that stream; any other error
// ends the connection.
func (c *conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.HeadersFrame, *http2.ContinuationFrame:
		h, err := c.hdr.read(f)
		if h == nil {
			return err // nil while the block goes on
		}
		return c.onHeaders(h)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		return c.onSettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		c.mu.Lock()
		_ = c.wr.WritePing(true, f.Data)
		c.mu.Unlock() // written with the next flush, before the reader waits
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		if f.StreamID == 0 {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		c.mu.Lock()
		if f.StreamID > c.lastID {
			c.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
		}
		delete(c.receives, f.StreamID)
		if st := c.open[f.StreamID]; st != nil {
			c.srv.count(ReasonReset)
			c.closeStreamLocked(st)
		}
		c.mu.Unlock()
	case *http2.GoAwayFrame:
		// The client leaves: answer what it sent, then the reader sees EOF.
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.streamWindow
			c.streamWindow = int64(s.Val)
			for _, st := range c.open {
				st.window += delta
			}
		case http2.SettingMaxFrameSize:
			c.maxFrame = s.Val
		case http2.SettingHeaderTableSize:
			c.henc.SetMaxDynamicTableSizeLimit(s.Val)
			c.okHead, c.okTrail = nil, nil
		}
		return nil
	})
	if err != nil {
		return err
	}
	_ = c.wr.WriteSettingsAck()
	c.sendBlockedLocked()
	return nil
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > 1<<31-1 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
	} else if f.StreamID > c.lastID {
		return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
	} else if st := c.open[f.StreamID]; st != nil {
		st.window += int64(f.Increment)
		if st.window > 1<<31-1 {
			c.srv.count(ReasonStream)
			c.resetLocked(st.id, http2.ErrCodeFlowControl)
		}
	}
	c.sendBlockedLocked()
	return nil
}

func (c *conn) onHeaders(h *requestHead) error {
	id := h.id
	if st := c.receives[id]; st != nil {
		// Trailers of a request: unary clients send none, but they end the stream.
		delete(c.receives, id)
		c.mu.Lock()
		defer c.mu.Unlock()
		if st.closed {
			return nil // reset while it uploaded (see onData)
		}
		if !h.ended {
			c.srv.count(ReasonBadRequest)
			c.resetLocked(id, http2.ErrCodeProtocol)
			return nil
		}
		c.dispatchLocked(st)
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if id <= c.lastID {
		// A stream that ended or was refused already.
		c.srv.count(ReasonStream)
		c.resetLocked(id, http2.ErrCodeStreamClosed)
		return nil
	}
	c.lastID = id
	if c.goneAway || c.inflight >= int(c.srv.opts.MaxConcurrentStreams) {
		c.srv.count(ReasonRefused)
		c.resetLocked(id, http2.ErrCodeRefusedStream)
		return nil
	}
	st := c.newStreamLocked(id)
	c.open[id] = st
	c.inflight++
	path := h.path
	switch m := c.srv.methods[path]; {
	case h.truncated:
		c.srv.count(ReasonTooLarge)
		st.err = status.Newf(codes.ResourceExhausted, "request headers larger than %d bytes", maxHeaderList)
	case h.method != "POST" || !isGRPC(h.contentType):
		c.srv.count(ReasonBadRequest)
		st.err = status.Newf(codes.Unimplemented, "not a gRPC request: %s %s with content-type %q", h.method, path, h.contentType)
	case m == nil:
		c.srv.count(ReasonUnknownMethod)
		st.err = status.Newf(codes.Unimplemented, "unknown method %s on the check listener (it serves %s)", path, strings.Join(c.srv.paths(), ", "))
	default:
		st.method = m
	}
	if encoding := h.encoding; encoding != "" && encoding != "identity" && st.err == nil {
		// A client only compresses with an encoding the server announced; this one
		// announces none, so this is not a gRPC client behaving.
		c.srv.count(ReasonBadRequest)
		st.err = status.Newf(codes.Unimplemented, "grpc-encoding %q is not supported; send uncompressed messages", encoding)
	}
	if timeout := h.timeout; timeout != "" {
		d, ok := parseTimeout(timeout)
		if !ok && st.err == nil {
			c.srv.count(ReasonBadRequest)
			st.err = status.Newf(codes.Internal, "malformed grpc-timeout %q", timeout)
		}
		if ok {
			st.deadline = time.Now().Add(d)
		}
	}
	if h.ended {
		c.dispatchLocked(st)
		return nil
	}
	c.receives[id] = st
	return nil
}

func isGRPC(ct string) bool {
	return ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") || strings.HasPrefix(ct, "application/grpc;")
}

func (c *conn) onData(f *http2.DataFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.receives[f.StreamID]
	if st != nil && st.closed {
		// Reset while it uploaded (a window overflow, say): it was released then,
		// so it must not be dispatched, nor counted against the limit again.
		delete(c.receives, f.StreamID)
		st = nil
	}
	if st == nil && f.StreamID > c.lastID {
		return http2.ConnectionError(http2.ErrCodeProtocol) // DATA on an idle stream
	}
	if c.recvWindow -= int64(f.Length); c.recvWindow < 0 {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	payload := uint32(len(f.Data()))
	// Padding is never held: its window goes back at once; so does a payload for
	// a stream that is not receiving.
	if st == nil {
		c.creditLocked(f.Length)
		return nil
	}
	c.creditLocked(f.Length - payload)
	st.received += payload
	if st.flowed += f.Length; st.flowed > c.srv.streamWindow {
		// Past the stream's window (padding can take it there before the size
		// limit below does): the stream is reset and its bytes go back on release.
		delete(c.receives, f.StreamID)
		c.srv.count(ReasonStream)
		c.resetLocked(st.id, http2.ErrCodeFlowControl)
		return nil
	}
	if st.err == nil {
		if len(st.data)+len(f.Data()) > c.srv.opts.MaxRecvMsgSize+5 {
			c.srv.count(ReasonTooLarge)
			st.err = status.Newf(codes.ResourceExhausted, "request message larger than the maximum %d bytes", c.srv.opts.MaxRecvMsgSize)
			st.data = nil
		} else {
			if st.data == nil {
				st.data = c.takeBufferLocked()
			}
			st.data = append(st.data, f.Data()...)
		}
	}
	if f.StreamEnded() {
		delete(c.receives, f.StreamID)
		c.dispatchLocked(st)
	} else if st.err != nil && st.err.Code() == codes.ResourceExhausted {
		// Answer now and stop the upload.
		delete(c.receives, f.StreamID)
		c.dispatchLocked(st)
		c.resetLocked(st.id, http2.ErrCodeNo)
	}
	return nil
}

// frameBuffered reports whether a whole frame is already read, so that the next
// ReadFrame cannot block.
func (c *conn) frameBuffered() bool {
	n := c.in.Buffered()
	if n < 9 {
		return false
	}
	h, err := c.in.Peek(9)
	if err != nil {
		return false
	}
	return n >= 9+(int(h[0])<<16|int(h[1])<<8|int(h[2]))
}

// dispatchLocked starts a call whose request is complete, or answers its refusal.
// An inline call runs here, on the reader, with mu released meanwhile, and so does
// a call that may wait when nothing else waits to be read (Method.OnReader). Such a
// call with more frames read behind it, or with calls of its burst parked, starts
// on a coroutine of the reader (c.burst) and may park there; the parked calls go
// on when the burst is read (flushBurst), or when maxBurst of them wait.
func (c *conn) dispatchLocked(st *stream) {
	if st.err == nil {
		if st.err = checkMessage(st.data); st.err != nil {
			c.srv.count(ReasonBadRequest)
		}
	}
	if st.err != nil {
		c.answerLocked(st, nil, st.err)
		return
	}
	if !st.deadline.IsZero() && !time.Now().Before(st.deadline) {
		// The client has given up already: no work is done for it.
		c.srv.count(ReasonDeadline)
		c.answerLocked(st, nil, status.New(codes.DeadlineExceeded, "deadline exceeded before the call started"))
		return
	}
	st.refs++ // the call's
	if st.method.Inline != nil && st.method.Inline() {
		// On the reader, nothing else happens on this connection until the call
		// returns: no RST_STREAM can arrive to cancel it. Nor is the deadline armed:
		// an inline method decides in memory and cannot wait, so its context would
		// never be read, and arming it costs a timer per call (~5 µs here, and a
		// wakeup of the network poller). The deadline was checked above.
		st.ctx = c.ctx
		c.srv.inlineCalls.Inc()
		c.mu.Unlock()
		resp, err := c.run(st, c.reply)
		request := st.data
		c.mu.Lock()
		c.endCallLocked(st, resp, err)
		if resp == nil {
			resp = c.reply // failed: the buffer is still the connection's
		}
		kept := cap(resp) <= maxKeptBuffer
		if kept {
			c.reply = resp[:0]
		}
		c.recycleLocked(st, request, kept)
		return
	}
	// The call's context ends with the connection, its deadline, or the client's
	// RST_STREAM. It arms a timer only if the call waits on it: most calls decide
	// without waiting, or wait on a backend client that reads only the deadline.
	// A call of a burst's derives from the burst's Runner, so that its backend
	// can park.
	onReader := st.method.OnReader != nil && st.method.OnReader()
	if onReader && (c.frameBuffered() || c.burst.Parked() > 0) {
		if start := time.Now(); c.srv.readerPause.allows(start) {
			// One of several calls read together: it runs on the reader too, on
			// a coroutine that parks while its backend waits (burst.Park), so
			// that the burst's round trips leave together when it is read, and no
			// call costs a hand-off to another thread.
			st.call = lazyctx.New(c.burst.Context(), st.deadline)
			st.ctx = st.call
			st.reply = c.takeBufferLocked()
			c.srv.burstCalls.Inc()
			c.mu.Unlock()
			c.burst.Start(c.runBurst, st)
			// Timed as a call on the reader: one whose backend blocks rather than
			// parks holds the reader as long, and pauses calls on readers alike.
			c.srv.readerPause.ended(start, time.Now())
			if c.burst.Parked() >= maxBurst || !c.frameBuffered() {
				c.flushBurst()
			}
			c.mu.Lock()
			return
		}
	}
	st.call = lazyctx.New(c.ctx, st.deadline)
	st.ctx = st.call
	st.reply = c.takeBufferLocked()
	if onReader && !c.frameBuffered() {
		if start := time.Now(); c.srv.readerPause.allows(start) {
			c.srv.readerCalls.Inc()
			c.mu.Unlock()
			c.call(st)
			c.srv.readerPause.ended(start, time.Now())
			c.mu.Lock()
			return
		}
	}
	c.srv.goCalls.Inc()
	c.srv.goCall(c, st)
}

// takeBufferLocked returns a spare buffer, empty, or nil when there is none.
func (c *conn) takeBufferLocked() []byte {
	n := len(c.spareBuffers)
	if n == 0 {
		return nil
	}
	b := c.spareBuffers[n-1]
	c.spareBuffers[n-1] = nil
	c.spareBuffers = c.spareBuffers[:n-1]
	return b
}

// putBufferLocked keeps b for a later call, unless it is too big or enough are
// kept, and reports whether it did.
func (c *conn) putBufferLocked(b []byte) bool {
	if b == nil || cap(b) > maxSpareBuffer || len(c.spareBuffers) >= maxSpareBuffers {
		return false
	}
	c.spareBuffers = append(c.spareBuffers, b[:0])
	return true
}

// recycleLocked keeps what a call that returned and queued its answer leaves for
// the next calls: its request buffer, and the stream itself once released. The
// caller kept the answer buffer or not (replyKept).
func (c *conn) recycleLocked(st *stream, request []byte, replyKept bool) {
	if len(st.pending) > 0 && replyKept {
		// Waiting for window: the answer must outlive the buffer's next use (a
		// buffer not kept is the stream's alone).
		st.pending = bytes.Clone(st.pending)
	}
	st.data = nil
	c.putBufferLocked(request)
	if st.refs == 0 && len(c.spareStreams) < maxSpareStreams {
		// Answered in full and released: nothing refers to it any more. It left
		// receives before it was dispatched and open when it closed; and it is not
		// among the blocked answers, for its answer was queued just now (earlier
		// only if it was reset first, and then nothing was queued) and sent at
		// once. Emptied now: a spare must not hold on to the answer it sent.
		*st = stream{}
		c.spareStreams = append(c.spareStreams, st)
	}
}

// newStreamLocked returns a new stream, a spare one (emptied by recycleLocked)
// when there is one.
func (c *conn) newStreamLocked(id uint32) *stream {
	var st *stream
	if n := len(c.spareStreams); n > 0 {
		st = c.spareStreams[n-1]
		c.spareStreams[n-1] = nil
		c.spareStreams = c.spareStreams[:n-1]
	} else {
		st = &stream{}
	}
	st.id, st.window, st.refs = id, c.streamWindow, 1
	return st
}

// checkMessage verifies that data is exactly one uncompressed gRPC message.
func checkMessage(data []byte) *status.Status {
	switch {
	case len(data) == 0:
		return status.New(codes.Internal, "no request message")
	case len(data) < 5:
		return status.Newf(codes.Internal, "request of %d bytes is shorter than gRPC's message prefix", len(data))
	case data[0] != 0:
		return status.New(codes.Unimplemented, "compressed messages are not supported")
	}
	if n := int(uint32(data[1])<<24 | uint32(data[2])<<16 | uint32(data[3])<<8 | uint32(data[4])); n != len(data)-5 {
		return status.Newf(codes.Internal, "request message prefix says %d bytes, the stream carried %d", n, len(data)-5)
	}
	return nil
}

// call runs a call on its own goroutine and answers.
func (c *conn) call(st *stream) {
	c.runAndAnswer(st, true)
	// Calls that wait on the same backend round trip return together: while
	// another answer is on its way to mu, this one leaves the write to it, so
	// that they leave in one write (and the client reads them in one read). The
	// last to arrive always finds none behind it and writes them all.
	if c.answering.Add(-1) > 0 && len(c.out) < maxHeldOut {
		c.mu.Unlock()
		return
	}
	c.flushLocked()
}

// answerBurst runs a call of a burst, on the reader's coroutine, and queues its
// answer: the reader writes the burst's answers together once it is read.
func (c *conn) answerBurst(st *stream) {
	c.runAndAnswer(st, false)
	c.mu.Unlock()
}

// flushBurst sends what the parked calls of a burst wait for and runs them to
// their ends, on the reader; mu is not held. A burst that takes long pauses
// calls on readers, as a slow call there does.
func (c *conn) flushBurst() {
	start := time.Now()
	c.burst.Flush()
	c.srv.readerPause.ended(start, time.Now())
}

// runAndAnswer runs a call that may wait and queues its answer; it returns with
// mu held. A call on a goroutine counts itself answering (see call) from its
// return until then.
func (c *conn) runAndAnswer(st *stream, goroutine bool) {
	// Its answer is encoded into a buffer of its own (it may wait for window
	// after the call returns), a spare one or one sized for a check's answer.
	dst := st.reply
	st.reply = nil
	if dst == nil {
		dst = make([]byte, 0, 512)
	}
	resp, err := c.run(st, dst)
	request := st.data // the stream's release drops it
	if goroutine {
		c.answering.Add(1)
	}
	c.mu.Lock()
	c.endCallLocked(st, resp, err)
	if resp == nil {
		resp = dst // failed: the buffer is still the connection's
	}
	kept := c.putBufferLocked(resp)
	c.recycleLocked(st, request, kept)
}

// run runs the method, its answer encoded after dst's gRPC prefix; mu is not held.
func (c *conn) run(st *stream, dst []byte) ([]byte, *status.Status) {
	defer st.call.Cancel()
	body, err := st.method.Call(st.ctx, st.data[5:], append(dst[:0], 0, 0, 0, 0, 0))
	if err != nil {
		fail, ok := status.FromError(err)
		if !ok {
			// A context error becomes DEADLINE_EXCEEDED or CANCELLED, anything
			// else UNKNOWN.
			fail = status.FromContextError(err)
		}
		return nil, fail
	}
	if len(body) < 5 {
		return nil, status.New(codes.Internal, "the method's answer lost its gRPC prefix")
	}
	grpcPrefix(body[:0], len(body)-5)
	return body, nil
}

// endCallLocked answers a call that returned and drops its reference.
func (c *conn) endCallLocked(st *stream, body []byte, fail *status.Status) {
	c.answerLocked(st, body, fail)
	c.unrefLocked(st)
}

// answerLocked queues a call's response: headers, the message and the OK trailers,
// or a trailers-only response with the error's status. The caller flushes.
func (c *conn) answerLocked(st *stream, body []byte, fail *status.Status) {
	if st.closed || c.closed {
		return
	}
	c.encodeOKLocked(&c.okHead, okHeaders)
	if fail != nil {
		for _, f := range statusFields(fail) {
			_ = c.henc.WriteField(f)
		}
		// The status's fields may have entered the dynamic table, moving the
		// indices the OK blocks hold.
		c.okHead, c.okTrail = nil, nil
		c.writeHeadersLocked(st.id, true)
		c.closeStreamLocked(st)
		return
	}
	c.writeHeadersLocked(st.id, false)
	st.pending = body
	if !c.sendLocked(st) {
		c.blocked = append(c.blocked, st)
	}
}

// writeHeadersLocked writes the header block in hbuf, split into CONTINUATION
// frames when it exceeds the client's frame size.
func (c *conn) writeHeadersLocked(id uint32, end bool) {
	block := c.hbuf.Bytes()
	first := block[:min(len(block), int(c.maxFrame))]
	block = block[len(first):]
	_ = c.wr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0})
	for len(block) > 0 {
		n := min(len(block), int(c.maxFrame))
		_ = c.wr.WriteContinuation(id, n == len(block), block[:n])
		block = block[n:]
	}
}

// sendLocked writes what flow control allows of a stream's pending answer, and its
// trailers once all of it is out; it reports whether the stream is done.
func (c *conn) sendLocked(st *stream) bool {
	for len(st.pending) > 0 {
		n := min(int64(len(st.pending)), c.sendWindow, st.window, int64(c.maxFrame))
		if n <= 0 {
			return false
		}
		_ = c.wr.WriteData(st.id, false, st.pending[:n])
		st.pending = st.pending[n:]
		c.sendWindow -= n
		st.window -= n
	}
	c.encodeOKLocked(&c.okTrail, okTrailer)
	c.writeHeadersLocked(st.id, true)
	c.closeStreamLocked(st)
	return true
}

// encodeOKLocked puts the encoding of fields, okHeaders or okTrailer, in hbuf:
// *cached when it is known, else the encoder's, kept in *cached when every field
// of it is an index. A successful answer then costs no table search: the first
// answers of a connection add the fields to the table, and the rest send the
// same few bytes.
func (c *conn) encodeOKLocked(cached *[]byte, fields []hpack.HeaderField) {
	c.hbuf.Reset()
	if *cached != nil {
		c.hbuf.Write(*cached)
		return
	}
	for _, f := range fields {
		_ = c.henc.WriteField(f)
	}
	if b := c.hbuf.Bytes(); onlyIndexed(b) {
		*cached = bytes.Clone(b)
	} else {
		// A field entered the table, moving the indices the other block may
		// hold (the trailer's first grpc-status: 0 after the headers were kept).
		c.okHead, c.okTrail = nil, nil
	}
}

// onlyIndexed reports whether the header block b is wholly made of indexed
// header fields (RFC 7541 §6.1), which leave the decoder's dynamic table as it
// was: no literal that adds to it and no table size update.
func onlyIndexed(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for len(b) > 0 {
		if b[0]&0x80 == 0 {
			return false
		}
		// The index: 7 bits, and when they are all set, more bytes while
		// their top bit is.
		more := b[0]&0x7f == 0x7f
		b = b[1:]
		for more {
			if len(b) == 0 {
				return false
			}
			more = b[0]&0x80 != 0
			b = b[1:]
		}
	}
	return true
}

// sendBlockedLocked resumes answers that waited for window, in order.
func (c *conn) sendBlockedLocked() {
	n := 0
	for _, st := range c.blocked {
		if st.closed {
			continue
		}
		if !c.sendLocked(st) {
			c.blocked[n] = st
			n++
		}
	}
	clear(c.blocked[n:])
	c.blocked = c.blocked[:n]
}

// closeStreamLocked ends a stream (answered, or reset by either side): its call,
// if running, is cancelled, and the stream's reference dropped.
func (c *conn) closeStreamLocked(st *stream) {
	if st.closed {
		return
	}
	st.closed = true
	delete(c.open, st.id)
	st.call.Cancel()
	c.unrefLocked(st)
}

// unrefLocked drops one of a stream's references; the last releases its slot and
// gives its request bytes back to the client's window.
func (c *conn) unrefLocked(st *stream) {
	st.refs--
	if st.refs > 0 {
		return
	}
	c.inflight--
	c.creditLocked(st.received)
	st.data = nil
	c.cond.Broadcast()
}

// creditLocked gives n request bytes back to the client's connection window, in
// WINDOW_UPDATEs of a quarter window at least.
func (c *conn) creditLocked(n uint32) {
	c.unacked += n
	if c.unacked >= c.srv.connWindow/4 {
		_ = c.wr.WriteWindowUpdate(0, c.unacked)
		c.recvWindow += int64(c.unacked)
		c.unacked = 0
	}
}

// resetLocked sends RST_STREAM and closes the stream.
func (c *conn) resetLocked(id uint32, code http2.ErrCode) {
	_ = c.wr.WriteRSTStream(id, code)
	if st := c.open[id]; st != nil {
		c.closeStreamLocked(st)
	}
}

// armWrite bounds the next write by writeTimeout, or by no less than half of it:
// the deadline is moved only once half of it has passed, as setting it costs a
// timer's update (about 0.4 µs of each check at 10k checks/s, a write each).
func (c *conn) armWrite(now time.Time) {
	if c.writeDeadline.Sub(now) >= c.srv.writeTimeout/2 {
		return
	}
	c.writeDeadline = now.Add(c.srv.writeTimeout)
	_ = c.nc.SetWriteDeadline(c.writeDeadline)
}

// flushLocked writes the buffered frames unless another goroutine is writing (it
// will take these too), and releases mu. When Shutdown drains the connection, the
// last flush after the last stream closes it.
func (c *conn) flushLocked() {
	if c.writing || c.closed {
		c.mu.Unlock()
		return
	}
	c.writing = true
	for len(c.out) > 0 && !c.closed {
		buf := c.out
		c.out, c.spare = c.spare[:0], nil
		c.mu.Unlock()
		c.armWrite(time.Now())
		_, err := c.nc.Write(buf)
		c.mu.Lock()
		c.spare = buf[:0]
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.srv.count(ReasonWriteTimeout)
			}
			c.closed = true
			c.out = c.out[:0]
			c.nc.Close()
		}
		c.cond.Broadcast()
	}
	c.writing = false
	if c.draining && c.inflight == 0 && !c.closed {
		c.closed = true
		c.nc.Close()
		c.cond.Broadcast()
	}
	c.mu.Unlock()
}

// paths lists the served methods, for the unknown-method error.
func (s *Server) paths() []string {
	out := make([]string, 0, len(s.methods))
	for p := range s.methods {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}
