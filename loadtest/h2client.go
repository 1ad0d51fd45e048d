package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Conn is a lean gRPC client connection, for load generation only: it writes
// pre-encoded unary requests, every request released at once in one write, and
// reads all answers on one goroutine. grpc-go's client costs ~80 µs of CPU per call
// on this machine, most of the two cores the server is measured on; Envoy, the real
// caller, is C++ with an event loop that batches its writes much like this.
//
// It speaks just enough HTTP/2 for that: the preface and settings, flow control in
// both directions, PING and SETTINGS acknowledgements, GOAWAY and RST_STREAM.
type h2Conn struct {
	conn io.WriteCloser // a net.Conn, or a loop's socket (see loopConn)
	// The request HEADERS blocks, encoded as a stateful HPACK encoder (Envoy's)
	// would: the first request adds every field to the server's dynamic table,
	// each later one names them by index, a few bytes in all.
	first, header []byte
	sentFirst     bool
	check         func(resp []byte) error
	done          func(slot int, at time.Time, err error)
	// arrived, when set, is when the bytes being handled reached the socket (the
	// kernel's receive time): answers are timed by it rather than by when they
	// are read. Guarded by mu.
	arrived time.Time

	mu         sync.Mutex // guards what follows, and writes to conn
	out        bytes.Buffer
	wr         *http2.Framer // writes frames into out
	nextID     uint32
	sendWindow int64 // connection-level window the server gave us
	streamMax  int64 // the server's initial stream window: a request must fit
	maxStreams int
	streams    map[uint32]*h2Stream
	queued     []h2Request // waiting for window or stream credit
	unacked    int64       // answer bytes received since our last WINDOW_UPDATE
	err        error
	idle       *sync.Cond                  // signalled when no stream is open
	scratch    []byte                      // one DATA payload being built
	stamp      func(msg []byte, seq int64) // see dialH2
	free       []*h2Stream

	// Reader-owned: the header block being decoded, and what it said. The fields
	// are taken as they are decoded, no list built: the generator's garbage
	// collections take the same two cores as the server's.
	hdec       *hpack.Decoder
	hdrStream  uint32
	hdrEnded   bool // END_STREAM on the HEADERS frame
	hdrStatus  string
	grpcStatus string
	grpcMsg    string
}

// h2Request is one request to send, encoded. On a connection that stamps requests,
// msg must be scenario.template(seq): the stamp writes request seq's own fields
// into the frame's copy of msg, where that template has them.
type h2Request struct {
	slot int
	msg  []byte
	seq  int64
}

type h2Stream struct {
	slot   int
	status string // :status of the response headers
	data   []byte
}

// recvWindow is the flow-control window offered to the server, per connection and
// per stream: large, so that answers never wait for us.
const recvWindow = 1 << 30

// The deadlines Envoy gives a check by default, which the load tool's requests
// carry as grpc-timeout: its ext_authz filter's (200 ms) and its rate-limit
// filter's (20 ms).
const (
	envoyAuthzTimeout     = 200 * time.Millisecond
	envoyRateLimitTimeout = 20 * time.Millisecond
)

// dialH2 connects to a gRPC server and starts the reader. Each request is sent to
// path (a full method) with grpc-timeout set to timeout; done is called once per
// request, from the reader, with the outcome of check on its answer, or the error
// that ended it. stamp, if not nil, makes each request's copy in its DATA frame
// that request's own (see scenario.stamp).
func dialH2(addr, path string, timeout time.Duration, check func([]byte) error, done func(slot int, at time.Time, err error), stamp func(msg []byte, seq int64)) (*h2Conn, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	c, err := newH2Conn(conn, addr, path, timeout, check, done, stamp)
	if err != nil {
		return nil, err
	}
	rd := http2.NewFramer(nil, bufio.NewReaderSize(conn, 64<<10))
	rd.SetReuseFrames() // answers are copied out of DATA frames before the next read
	go c.read(rd)
	return c, nil
}

// newH2Conn starts a client connection on conn, to the server at addr (its
// :authority), writing the preface and settings; the caller feeds it the server's
// frames, with read or frame by frame (see loopConn). It closes conn if it fails.
func newH2Conn(conn io.WriteCloser, addr, path string, timeout time.Duration, check func([]byte) error, done func(slot int, at time.Time, err error), stamp func(msg []byte, seq int64)) (*h2Conn, error) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	var blocks [2][]byte
	for i := range blocks {
		for _, f := range [][2]string{
			{":method", "POST"}, {":scheme", "http"}, {":path", path}, {":authority", addr},
			{"content-type", "application/grpc"}, {"te", "trailers"}, {"grpc-timeout", strconv.FormatInt(max(timeout.Milliseconds(), 1), 10) + "m"},
			{"user-agent", "sluice-loadtest"},
		} {
			if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
				conn.Close()
				return nil, err
			}
		}
		blocks[i] = bytes.Clone(hb.Bytes())
		hb.Reset()
	}
	c := &h2Conn{
		conn: conn, first: blocks[0], header: blocks[1], check: check, done: done, stamp: stamp,
		nextID: 1, sendWindow: 65535, streamMax: 65535, maxStreams: 1 << 30,
		streams: map[uint32]*h2Stream{},
	}
	c.idle = sync.NewCond(&c.mu)
	c.wr = http2.NewFramer(&c.out, nil)
	c.out.WriteString(http2.ClientPreface)
	_ = c.wr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: recvWindow}, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	_ = c.wr.WriteWindowUpdate(0, recvWindow-65535)
	if err := c.flush(); err != nil {
		conn.Close()
		return nil, err
	}
	c.hdec = hpack.NewDecoder(4096, c.emit)
	return c, nil
}

// send writes the requests (gRPC messages, without the length prefix) in one write,
// or queues those that flow control does not allow yet.
func (c *h2Conn) send(reqs []h2Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		for _, r := range reqs {
			c.done(r.slot, time.Now(), c.err)
		}
		return
	}
	c.queued = append(c.queued, reqs...)
	c.drainLocked()
}

// drainLocked sends what flow control allows of the queue.
func (c *h2Conn) drainLocked() {
	n := 0
	for _, r := range c.queued {
		size := int64(5 + len(r.msg))
		if size > c.streamMax {
			c.done(r.slot, time.Now(), fmt.Errorf("request of %d bytes exceeds the server's stream window %d", size, c.streamMax))
			n++
			continue
		}
		if size > c.sendWindow || len(c.streams) >= c.maxStreams {
			break
		}
		id := c.nextID
		c.nextID += 2
		c.sendWindow -= size
		c.streams[id] = c.newStream(r.slot)
		block := c.header
		if !c.sentFirst {
			block, c.sentFirst = c.first, true
		}
		_ = c.wr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
		// One DATA frame: the gRPC prefix (uncompressed, length) and the message.
		c.scratch = append(binary.BigEndian.AppendUint32(append(c.scratch[:0], 0), uint32(len(r.msg))), r.msg...)
		if c.stamp != nil {
			c.stamp(c.scratch[5:], r.seq)
		}
		_ = c.wr.WriteData(id, true, c.scratch)
		n++
	}
	c.queued = c.queued[:copy(c.queued, c.queued[n:])]
	if err := c.flush(); err != nil {
		c.failLocked(err)
	}
}

// flush writes the buffered frames; the caller holds mu (or is still alone).
func (c *h2Conn) flush() error {
	if c.out.Len() == 0 {
		return nil
	}
	_, err := c.conn.Write(c.out.Bytes())
	c.out.Reset()
	return err
}

// read handles the server's frames until the connection ends.
func (c *h2Conn) read(fr *http2.Framer) {
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			c.mu.Lock()
			c.failLocked(fmt.Errorf("read: %w", err))
			c.mu.Unlock()
			return
		}
		if err := c.onFrame(f, time.Time{}); err != nil {
			return
		}
	}
}

// now is when the answer being handled arrived; c.mu is held.
func (c *h2Conn) now() time.Time {
	if !c.arrived.IsZero() {
		return c.arrived
	}
	return time.Now()
}

// onFrame handles one of the server's frames, which arrived at at (zero: now),
// and writes what it calls for, returning the connection's error if that failed.
func (c *h2Conn) onFrame(f http2.Frame, at time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.arrived = at
	c.handle(f)
	c.arrived = time.Time{}
	if err := c.flush(); err != nil {
		c.failLocked(err)
		return err
	}
	return nil
}

// idleNow reports whether no call is open or queued, or the connection has failed.
func (c *h2Conn) idleNow() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err != nil || (len(c.streams) == 0 && len(c.queued) == 0)
}

// handle acts on one frame; c.mu is held.
func (c *h2Conn) handle(f http2.Frame) {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return
		}
		_ = f.ForeachSetting(func(s http2.Setting) error {
			switch s.ID {
			case http2.SettingInitialWindowSize:
				c.streamMax = int64(s.Val)
			case http2.SettingMaxConcurrentStreams:
				c.maxStreams = int(min(s.Val, 1<<30))
			}
			return nil
		})
		_ = c.wr.WriteSettingsAck()
		c.drainLocked()
	case *http2.PingFrame:
		if !f.IsAck() {
			_ = c.wr.WritePing(true, f.Data)
		}
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			c.sendWindow += int64(f.Increment)
			c.drainLocked()
		}
	case *http2.DataFrame:
		c.unacked += int64(f.Length)
		if c.unacked >= recvWindow/2 {
			_ = c.wr.WriteWindowUpdate(0, uint32(c.unacked))
			c.unacked = 0
		}
		if s := c.streams[f.StreamID]; s != nil {
			s.data = append(s.data, f.Data()...)
			if f.StreamEnded() {
				c.finish(f.StreamID, s, errors.New("answer ended without trailers"))
			}
		}
	case *http2.HeadersFrame:
		c.hdrStream, c.hdrEnded = f.StreamID, f.StreamEnded()
		c.hdrStatus, c.grpcStatus, c.grpcMsg = "", "", ""
		c.headerFragment(f.HeaderBlockFragment(), f.HeadersEnded())
	case *http2.ContinuationFrame:
		c.headerFragment(f.HeaderBlockFragment(), f.HeadersEnded())
	case *http2.RSTStreamFrame:
		if s := c.streams[f.StreamID]; s != nil {
			c.finish(f.StreamID, s, fmt.Errorf("stream reset: %v", f.ErrCode))
		}
	case *http2.GoAwayFrame:
		c.failLocked(fmt.Errorf("server sent GOAWAY: %v %s", f.ErrCode, f.DebugData()))
	}
}

// emit takes one field of the header block being decoded.
func (c *h2Conn) emit(hf hpack.HeaderField) {
	switch hf.Name {
	case ":status":
		c.hdrStatus = hf.Value
	case "grpc-status":
		c.grpcStatus = hf.Value
	case "grpc-message":
		c.grpcMsg = hf.Value
	}
}

// headerFragment decodes part of a header block; at its end, the response
// headers are noted, or the trailers end the call. c.mu is held.
func (c *h2Conn) headerFragment(frag []byte, end bool) {
	if _, err := c.hdec.Write(frag); err != nil {
		c.failLocked(fmt.Errorf("header block: %w", err))
		return
	}
	if !end {
		return
	}
	if err := c.hdec.Close(); err != nil {
		c.failLocked(fmt.Errorf("header block: %w", err))
		return
	}
	s := c.streams[c.hdrStream]
	if s == nil {
		return
	}
	if !c.hdrEnded {
		s.status = c.hdrStatus
		return
	}
	c.finish(c.hdrStream, s, c.outcome(s))
}

// outcome judges a finished call from its trailers (or trailers-only answer),
// just decoded.
func (c *h2Conn) outcome(s *h2Stream) error {
	if c.hdrStatus != "" {
		s.status = c.hdrStatus // a trailers-only answer
	}
	if s.status != "200" {
		return fmt.Errorf("HTTP status %q", s.status)
	}
	if code := c.grpcStatus; code != "0" {
		if code == "4" { // DEADLINE_EXCEEDED
			return fmt.Errorf("grpc-status 4: %s: %w", c.grpcMsg, context.DeadlineExceeded)
		}
		return fmt.Errorf("grpc-status %s: %s", code, c.grpcMsg)
	}
	if len(s.data) < 5 || int(binary.BigEndian.Uint32(s.data[1:5])) != len(s.data)-5 {
		return fmt.Errorf("malformed answer of %d bytes", len(s.data))
	}
	if s.data[0] != 0 {
		return errors.New("compressed answer")
	}
	return c.check(s.data[5:])
}

// newStream takes a stream from the free list, or makes one; c.mu is held.
func (c *h2Conn) newStream(slot int) *h2Stream {
	if n := len(c.free); n > 0 {
		s := c.free[n-1]
		c.free = c.free[:n-1]
		*s = h2Stream{slot: slot, data: s.data[:0]}
		return s
	}
	return &h2Stream{slot: slot}
}

// finish reports a call and closes its stream; c.mu is held.
func (c *h2Conn) finish(id uint32, s *h2Stream, err error) {
	delete(c.streams, id)
	c.done(s.slot, c.now(), err)
	c.free = append(c.free, s)
	if len(c.queued) > 0 {
		c.drainLocked()
	}
	if len(c.streams) == 0 {
		c.idle.Broadcast()
	}
}

// failLocked ends the connection: every open and queued call fails with err.
func (c *h2Conn) failLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	for id, s := range c.streams {
		delete(c.streams, id)
		c.done(s.slot, time.Now(), err)
	}
	for _, r := range c.queued {
		c.done(r.slot, time.Now(), err)
	}
	c.queued = nil
	c.idle.Broadcast()
	c.conn.Close()
}

// wait blocks until no call is open or queued, and returns the connection's error.
func (c *h2Conn) wait() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && (len(c.streams) > 0 || len(c.queued) > 0) {
		c.idle.Wait()
	}
	return c.err
}

// close ends the connection; calls still open fail.
func (c *h2Conn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failLocked(io.ErrClosedPipe)
}
