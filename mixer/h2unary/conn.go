package h2unary

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// okTrailer ends every successful answer.
var okTrailer = []hpack.HeaderField{{Name: "grpc-status", Value: "0"}}

// connWindow is the connection-level receive window offered to clients: large, so
// that requests never wait for a WINDOW_UPDATE; memory stays bounded by the
// per-stream limit (MaxRecvMsgSize) times MaxConcurrentStreams.
const connWindow = 1 << 30

// conn is one client connection. The reader goroutine (serve) owns the read side;
// every goroutine that writes holds mu, and whoever finds no write in progress
// writes everything buffered, so that answers ready together leave in one write
// and no goroutine exists just to write.
type conn struct {
	srv *Server
	nc  net.Conn
	ctx context.Context
	end context.CancelFunc

	// Reader-owned.
	in       *bufio.Reader
	unacked  uint32 // request bytes received since our last connection WINDOW_UPDATE
	receives map[uint32]*stream

	calls sync.WaitGroup // calls running

	mu       sync.Mutex // guards all below
	out      []byte     // frames waiting to be written
	spare    []byte
	wr       *http2.Framer // writes into out
	hbuf     bytes.Buffer
	henc     *hpack.Encoder
	writing  bool
	closed   bool
	goneAway bool
	lastID   uint32 // the highest stream the client opened (written by the reader)
	// closeWhenWritten closes the connection once nothing is left to write.
	closeWhenWritten bool
	// Flow control of what we send.
	sendWindow   int64 // connection
	streamWindow int64 // the client's initial stream window
	maxFrame     uint32
	open         map[uint32]*stream // streams not fully answered
	blocked      []*stream          // answers waiting for window, in order
}

// stream is one call.
type stream struct {
	id      uint32
	method  *Method
	data    []byte // the request, gRPC prefix included
	timeout time.Duration
	err     *status.Status // set when the request is refused before any call
	ctx     context.Context
	cancel  context.CancelFunc
	// Under conn.mu.
	window  int64  // what we may still send on this stream
	pending []byte // answer DATA not yet sent for lack of window
	trailer []hpack.HeaderField
	done    bool // reset by the client, or answered in full
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv: s, nc: nc, in: bufio.NewReaderSize(nc, 32<<10),
		receives: map[uint32]*stream{}, open: map[uint32]*stream{},
		sendWindow: 65535, streamWindow: 65535, maxFrame: 16384,
	}
	c.ctx, c.end = context.WithCancel(context.Background())
	c.wr = http2.NewFramer(writerFunc(c.appendOut), nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
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
		c.end()
		c.calls.Wait()
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.nc.Close()
	}()
	if err := readPreface(c.nc, c.in); err != nil {
		c.srv.count(ReasonProtocol)
		c.srv.log.Debug("h2unary: connection refused", "remote", c.nc.RemoteAddr(), "error", err)
		return
	}
	rd := http2.NewFramer(nil, c.in)
	rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rd.MaxHeaderListSize = 64 << 10
	rd.SetMaxReadFrameSize(1 << 20)
	c.mu.Lock()
	_ = c.wr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.srv.opts.MaxConcurrentStreams},
		// One window per stream that fits the largest request: a unary call never
		// waits for a stream WINDOW_UPDATE.
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(c.srv.opts.MaxRecvMsgSize + 5 + 16384)},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: 64 << 10},
	)
	_ = c.wr.WriteWindowUpdate(0, connWindow-65535)
	c.flushLocked()
	for {
		if !c.frameBuffered() {
			// About to wait for input: write what inline calls left.
			c.mu.Lock()
			c.flushLocked()
		}
		f, err := rd.ReadFrame()
		var se http2.StreamError
		if errors.As(err, &se) {
			// A malformed header block: the framer consumed the frame, so only
			// the stream is refused.
			c.srv.count(ReasonBadRequest)
			if se.StreamID > c.lastID && se.StreamID%2 == 1 {
				c.mu.Lock()
				c.lastID = se.StreamID
				c.mu.Unlock()
			}
			delete(c.receives, se.StreamID)
			c.reset(se.StreamID, se.Code)
			continue
		}
		if err != nil {
			c.readFailed(err)
			return
		}
		if err := c.handle(f); err != nil {
			c.connError(err)
			return
		}
	}
}

// readFailed ends the connection after a read error: a broken rule of HTTP/2 is
// answered with GOAWAY; EOF, a reset or a close by Shutdown need no answer.
func (c *conn) readFailed(err error) {
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		c.connError(err)
	}
}

// connError ends the connection with GOAWAY(PROTOCOL_ERROR).
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
	c.flushLocked()
}

// goAway tells the client that no new call will be taken; calls already opened
// are answered. Shutdown closes the connection once they are.
func (c *conn) goAway() {
	c.mu.Lock()
	if !c.goneAway && !c.closed {
		c.goneAway = true
		_ = c.wr.WriteGoAway(c.lastID, http2.ErrCodeNo, nil)
	}
	c.flushLocked()
	// Once the calls are answered and their answers written, closing the
	// connection ends the reader.
	go func() {
		c.calls.Wait()
		c.mu.Lock()
		c.closeWhenWritten = true
		c.flushLocked()
	}()
}

// handle acts on one frame; an error ends the connection.
func (c *conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
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
		c.flushLocked()
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		if f.StreamID == 0 {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		delete(c.receives, f.StreamID)
		c.mu.Lock()
		if st := c.open[f.StreamID]; st != nil {
			st.done = true
			delete(c.open, f.StreamID)
			c.srv.count(ReasonReset)
			if st.cancel != nil {
				st.cancel()
			}
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
	defer c.flushLocked()
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
	defer c.flushLocked()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > 1<<31-1 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
	} else if st := c.open[f.StreamID]; st != nil {
		st.window += int64(f.Increment)
	}
	c.sendBlockedLocked()
	return nil
}

func (c *conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if st := c.receives[id]; st != nil {
		// Trailers of a request: unary clients send none, but they end the stream.
		if !f.StreamEnded() {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		delete(c.receives, id)
		c.dispatch(st)
		return nil
	}
	if id%2 == 0 || id <= c.lastID {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.mu.Lock()
	c.lastID = id
	if c.goneAway || len(c.open) >= int(c.srv.opts.MaxConcurrentStreams) {
		c.mu.Unlock()
		c.srv.count(ReasonRefused)
		c.reset(id, http2.ErrCodeRefusedStream)
		return nil
	}
	st := &stream{id: id, window: c.streamWindow}
	c.open[id] = st
	c.mu.Unlock()
	var contentType, encoding, timeout string
	for _, h := range f.RegularFields() {
		switch h.Name {
		case "content-type":
			contentType = h.Value
		case "grpc-encoding":
			encoding = h.Value
		case "grpc-timeout":
			timeout = h.Value
		}
	}
	path := f.PseudoValue("path")
	switch m := c.srv.methods[path]; {
	case f.PseudoValue("method") != "POST" || !isGRPC(contentType):
		c.srv.count(ReasonBadRequest)
		st.err = status.Newf(codes.Unimplemented, "not a gRPC request: %s %s with content-type %q", f.PseudoValue("method"), path, contentType)
	case m == nil:
		c.srv.count(ReasonUnknownMethod)
		st.err = status.Newf(codes.Unimplemented, "unknown method %s on the check listener (it serves %s)", path, strings.Join(c.srv.paths(), ", "))
	default:
		st.method = m
	}
	if encoding != "" && encoding != "identity" && st.err == nil {
		// A client only compresses with an encoding the server announced; this one
		// announces none, so this is not a gRPC client behaving.
		c.srv.count(ReasonBadRequest)
		st.err = status.Newf(codes.Unimplemented, "grpc-encoding %q is not supported; send uncompressed messages", encoding)
	}
	if timeout != "" {
		d, ok := parseTimeout(timeout)
		if !ok && st.err == nil {
			c.srv.count(ReasonBadRequest)
			st.err = status.Newf(codes.Internal, "malformed grpc-timeout %q", timeout)
		}
		st.timeout = d
	}
	if f.StreamEnded() {
		c.dispatch(st)
		return nil
	}
	c.receives[id] = st
	return nil
}

func isGRPC(ct string) bool {
	return ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+") || strings.HasPrefix(ct, "application/grpc;")
}

func (c *conn) onData(f *http2.DataFrame) error {
	// Flow control counts the whole frame, padding included.
	c.unacked += f.Length
	if c.unacked >= connWindow/2 {
		c.mu.Lock()
		_ = c.wr.WriteWindowUpdate(0, c.unacked)
		c.flushLocked()
		c.unacked = 0
	}
	st := c.receives[f.StreamID]
	if st == nil {
		if f.StreamID > c.lastID {
			return http2.ConnectionError(http2.ErrCodeProtocol) // DATA on an idle stream
		}
		return nil // a stream refused or answered early: ignore its body
	}
	if st.err == nil {
		if len(st.data)+len(f.Data()) > c.srv.opts.MaxRecvMsgSize+5 {
			c.srv.count(ReasonTooLarge)
			st.err = status.Newf(codes.ResourceExhausted, "request message larger than the maximum %d bytes", c.srv.opts.MaxRecvMsgSize)
			st.data = nil
		} else {
			st.data = append(st.data, f.Data()...)
		}
	}
	if f.StreamEnded() {
		delete(c.receives, f.StreamID)
		c.dispatch(st)
	} else if st.err != nil && st.err.Code() == codes.ResourceExhausted {
		// Answer now and stop the upload.
		delete(c.receives, f.StreamID)
		c.dispatch(st)
		c.reset(st.id, http2.ErrCodeNo)
	}
	return nil
}

// frameBuffered reports whether a whole frame is already read, so that the next
// ReadFrame cannot block; a partial frame's rest may take any time to come.
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

// dispatch starts a call whose request is complete, or answers its refusal.
func (c *conn) dispatch(st *stream) {
	if st.err == nil {
		if st.err = checkMessage(st.data); st.err != nil {
			c.srv.count(ReasonBadRequest)
		}
	}
	if st.err != nil {
		c.answer(st, nil, st.err)
		return
	}
	if st.method.Inline != nil && st.method.Inline() {
		// On the reader, nothing else happens on this connection until the call
		// returns: no RST_STREAM can arrive to cancel it.
		st.ctx, st.cancel = c.ctx, func() {}
		if st.timeout > 0 {
			st.ctx, st.cancel = context.WithTimeout(c.ctx, st.timeout)
		}
		c.calls.Add(1)
		// Answers wait for the reader to drain what it has read, then leave in
		// one write.
		c.call(st, c.frameBuffered())
		return
	}
	// The call's context ends with the connection, its deadline, or the client's
	// RST_STREAM.
	if st.timeout > 0 {
		st.ctx, st.cancel = context.WithTimeout(c.ctx, st.timeout)
	} else {
		st.ctx, st.cancel = context.WithCancel(c.ctx)
	}
	c.calls.Add(1)
	go c.call(st, false)
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

// call runs the method and answers; with hold, the answer is left for the reader
// to write.
func (c *conn) call(st *stream, hold bool) {
	defer c.calls.Done()
	defer st.cancel()
	resp, err := st.method.Call(st.ctx, st.data[5:])
	if err != nil {
		fail, ok := status.FromError(err)
		if !ok {
			// A context error becomes DEADLINE_EXCEEDED or CANCELLED, anything
			// else UNKNOWN.
			fail = status.FromContextError(err)
		}
		c.answerHold(st, nil, fail, hold)
		return
	}
	body, err := proto.MarshalOptions{}.MarshalAppend(make([]byte, 5, 5+proto.Size(resp)), resp)
	if err != nil {
		c.answerHold(st, nil, status.Newf(codes.Internal, "encode answer: %v", err), hold)
		return
	}
	grpcPrefix(body[:0], len(body)-5)
	c.answerHold(st, body, nil, hold)
}

// answer writes a call's response: headers, the message and the OK trailers, or a
// trailers-only response with the error's status.
func (c *conn) answer(st *stream, body []byte, fail *status.Status) {
	c.answerHold(st, body, fail, false)
}

// answerHold is answer; with hold, the frames stay buffered for the reader's next
// flush (it flushes before it waits for input).
func (c *conn) answerHold(st *stream, body []byte, fail *status.Status, hold bool) {
	c.mu.Lock()
	if st.done || c.closed {
		c.mu.Unlock()
		return
	}
	c.hbuf.Reset()
	_ = c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	_ = c.henc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
	if fail != nil {
		for _, f := range statusFields(fail) {
			_ = c.henc.WriteField(f)
		}
		c.writeHeadersLocked(st.id, true)
		c.closeStreamLocked(st)
	} else {
		c.writeHeadersLocked(st.id, false)
		st.pending = body
		st.trailer = okTrailer
		if !c.sendLocked(st) {
			c.blocked = append(c.blocked, st)
		}
	}
	if hold {
		c.mu.Unlock()
		return
	}
	c.flushLocked()
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
	c.hbuf.Reset()
	for _, f := range st.trailer {
		_ = c.henc.WriteField(f)
	}
	c.writeHeadersLocked(st.id, true)
	c.closeStreamLocked(st)
	return true
}

// sendBlockedLocked resumes answers that waited for window, in order.
func (c *conn) sendBlockedLocked() {
	n := 0
	for _, st := range c.blocked {
		if st.done {
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

func (c *conn) closeStreamLocked(st *stream) {
	st.done = true
	delete(c.open, st.id)
}

// reset sends RST_STREAM and forgets the stream.
func (c *conn) reset(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	_ = c.wr.WriteRSTStream(id, code)
	if st := c.open[id]; st != nil {
		c.closeStreamLocked(st)
	}
	c.flushLocked()
}

// flushLocked writes the buffered frames unless another goroutine is writing (it
// will take these too), and releases mu.
func (c *conn) flushLocked() {
	if c.writing || c.closed {
		c.mu.Unlock()
		return
	}
	defer func() {
		if c.closeWhenWritten && !c.closed {
			c.closed = true
			c.nc.Close()
		}
		c.mu.Unlock()
	}()
	c.writing = true
	for len(c.out) > 0 && !c.closed {
		buf := c.out
		c.out, c.spare = c.spare[:0], nil
		c.mu.Unlock()
		_, err := c.nc.Write(buf)
		c.mu.Lock()
		c.spare = buf[:0]
		if err != nil {
			c.closed = true
			c.out = c.out[:0]
			c.nc.Close()
		}
	}
	c.writing = false
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
