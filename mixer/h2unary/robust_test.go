package h2unary

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluicemesh/sluice/adapters/adaptertest"
)

// rawClient speaks HTTP/2 frame by frame, to do what a well-behaved client never
// does.
type rawClient struct {
	c   net.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

// newRaw writes the preface and SETTINGS on a goroutine (over a net.Pipe a write
// waits for the server to read, and the server first waits for its own SETTINGS
// to be read); ready is closed when they are written.
func newRaw(t *testing.T, c net.Conn, settings ...http2.Setting) (r *rawClient, ready chan struct{}) {
	t.Helper()
	r = &rawClient{c: c, fr: http2.NewFramer(c, c)}
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.enc = hpack.NewEncoder(&r.hb)
	ready = make(chan struct{})
	go func() {
		defer close(ready)
		if _, err := io.WriteString(c, http2.ClientPreface); err == nil {
			_ = r.fr.WriteSettings(settings...)
		}
	}()
	t.Cleanup(func() { c.Close() })
	return r, ready
}

// dialRaw connects a raw client over TCP, where writes do not wait for reads.
func dialRaw(t *testing.T, addr string, settings ...http2.Setting) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r, ready := newRaw(t, nc, settings...)
	<-ready
	return r
}

func (r *rawClient) headers(id uint32, path string, end bool, extra ...string) {
	r.hb.Reset()
	fields := append([]string{":method", "POST", ":scheme", "http", ":path", path, ":authority", "x", "content-type", "application/grpc"}, extra...)
	for i := 0; i+1 < len(fields); i += 2 {
		_ = r.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	_ = r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.hb.Bytes(), EndHeaders: true, EndStream: end})
}

// sync sends a PING and reads until its answer: the server answers frames in
// order, so whatever it does for the frames before the PING is done by then.
func (r *rawClient) sync(t *testing.T) {
	t.Helper()
	_ = r.fr.WritePing(false, [8]byte{1})
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
			return
		}
	}
}

func reqBody(msg []byte) []byte {
	b, _ := proto.Marshal(wrapperspb.Bytes(msg))
	return append(grpcPrefix(nil, len(b)), b...)
}

// answerOf reads until stream id ends and returns its grpc-status ("" if the
// connection ended first).
func (r *rawClient) answerOf(t *testing.T, id uint32) string {
	t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	code := ""
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			return ""
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
			if c := grpcStatus(h); c != "" {
				code = c
			}
			if h.StreamEnded() {
				return code
			}
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
			return "reset " + rst.ErrCode.String()
		}
	}
}

// stalledAnswer serves one connection over a pipe whose client reads only the
// server's first frames, then runs one call and lets it answer: the answer's write
// blocks on a client that does not read. configure, if given, adjusts the server
// first; done closes when the connection's serve returns.
func stalledAnswer(t *testing.T, configure func(*Server)) (ts *testServer, c *conn, r *rawClient, done chan struct{}) {
	t.Helper()
	ts = &testServer{waiting: make(chan struct{}, 100), exited: make(chan error, 100), release: make(chan struct{})}
	s, err := New(Options{Methods: testMethods(ts)})
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = s
	if configure != nil {
		configure(s)
	}
	client, server := net.Pipe()
	c = newConn(s, server)
	done = make(chan struct{})
	go func() { c.serve(); close(done) }()
	r, ready := newRaw(t, client)
	for range 3 { // the server's SETTINGS, WINDOW_UPDATE and SETTINGS ack; then stop reading
		if _, err := r.fr.ReadFrame(); err != nil {
			t.Fatal(err)
		}
	}
	<-ready
	r.headers(1, waitPath, false)
	_ = r.fr.WriteData(1, true, reqBody(nil))
	<-ts.waiting
	close(ts.release) // the call answers from its goroutine, whose write now blocks
	return ts, c, r, done
}

// TestFloodWhileNotReading: a client that stops reading and floods PINGs makes the
// reader stop reading, not the queue grow.
func TestFloodWhileNotReading(t *testing.T) {
	_, c, r, _ := stalledAnswer(t, nil)
	time.Sleep(100 * time.Millisecond)
	go func() {
		for range 200000 {
			if r.fr.WritePing(false, [8]byte{}) != nil {
				return
			}
		}
	}()
	time.Sleep(500 * time.Millisecond)
	c.mu.Lock()
	n := len(c.out)
	c.mu.Unlock()
	if n > maxQueued+flushAt {
		t.Errorf("%d bytes queued for a client that does not read, want at most ~%d", n, maxQueued)
	}
}

// TestDrainAnswersAcceptedStreams: Shutdown's GOAWAY promises to answer every
// stream it covers: one still uploading, and one whose answer waits for window.
func TestDrainAnswersAcceptedStreams(t *testing.T) {
	for _, mode := range []string{"uploading", "blocked"} {
		t.Run(mode, func(t *testing.T) {
			ts := startServer(t, Options{}, false)
			var r *rawClient
			if mode == "blocked" {
				r = dialRaw(t, ts.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
				r.headers(1, echoPath, false)
				_ = r.fr.WriteData(1, true, reqBody([]byte{0, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k'}))
			} else {
				r = dialRaw(t, ts.addr)
				r.headers(1, echoPath, false)
			}
			waitFor(t, func() bool {
				ts.mu.Lock()
				defer ts.mu.Unlock()
				for c := range ts.active {
					c.mu.Lock()
					n := len(c.open)
					c.mu.Unlock()
					if n == 1 {
						return true
					}
				}
				return false
			}, "stream 1 open")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			go func() { _ = ts.Shutdown(ctx) }()
			time.Sleep(100 * time.Millisecond)
			if mode == "uploading" {
				_ = r.fr.WriteData(1, true, reqBody([]byte{0, 'x'}))
			} else {
				_ = r.fr.WriteWindowUpdate(1, 1000)
			}
			if got := r.answerOf(t, 1); got != "0" {
				t.Errorf("stream 1, covered by GOAWAY: answer %q, want grpc-status 0", got)
			}
		})
	}
}

// TestInlineAnswerNotHeld: a finished inline answer is held only while whole frames
// wait to be read, not behind what is still on the wire: the start of a frame, or
// a header block that goes on in a CONTINUATION.
func TestInlineAnswerNotHeld(t *testing.T) {
	for _, tt := range []struct {
		name string
		tail func(fr *http2.Framer, out *bytes.Buffer, block []byte)
	}{
		{"partial frame", func(fr *http2.Framer, out *bytes.Buffer, _ []byte) {
			var ping bytes.Buffer
			_ = http2.NewFramer(&ping, nil).WritePing(false, [8]byte{7})
			out.Write(ping.Bytes()[:5])
		}},
		{"header block awaiting CONTINUATION", func(fr *http2.Framer, _ *bytes.Buffer, block []byte) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block[:3]})
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, Options{}, true)
			nc, err := net.Dial("tcp", ts.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			var out, hb bytes.Buffer
			out.WriteString(http2.ClientPreface)
			fr := http2.NewFramer(&out, nil)
			_ = fr.WriteSettings()
			enc := hpack.NewEncoder(&hb)
			block := func() []byte {
				hb.Reset()
				for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", echoPath}, {":authority", "x"}, {"content-type", "application/grpc"}} {
					_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
				}
				return bytes.Clone(hb.Bytes())
			}
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block(), EndHeaders: true})
			_ = fr.WriteData(1, true, reqBody([]byte{0, 'x'}))
			tt.tail(fr, &out, block())
			if _, err := nc.Write(out.Bytes()); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			r := &rawClient{c: nc, fr: http2.NewFramer(nil, nc)}
			r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			if got := r.answerOf(t, 1); got != "0" || time.Since(start) > time.Second {
				t.Errorf("answer %q after %v, want grpc-status 0 at once", got, time.Since(start))
			}
		})
	}
}

type emfileListener struct {
	net.Listener
	n atomic.Int32
}

func (l *emfileListener) Accept() (net.Conn, error) {
	if l.n.Add(1) <= 3 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestAcceptRetriesWhenOutOfFiles: running out of file descriptors is waited out,
// not the end of the listener.
func TestAcceptRetriesWhenOutOfFiles(t *testing.T) {
	s, err := New(Options{Methods: testMethods(&testServer{}), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(&emfileListener{Listener: lis}) }()
	defer func() {
		_ = s.Shutdown(context.Background())
		<-done
	}()
	ts := &testServer{Server: s, addr: lis.Addr().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := echo(ctx, ts.dial(t), []byte{0, 'x'}); err != nil {
		t.Fatalf("after EMFILE: %v", err)
	}
	if got := ts.errors(ReasonAccept); got != 3 {
		t.Errorf("%s = %v, want 3", ReasonAccept, got)
	}
}

// TestResetCallsStayCounted: a client that resets each call as it opens it cannot
// run more calls at once than MaxConcurrentStreams.
func TestResetCallsStayCounted(t *testing.T) {
	ts := startServer(t, Options{MaxConcurrentStreams: 4}, false)
	r := dialRaw(t, ts.addr)
	go func() { _, _ = io.Copy(io.Discard, r.c) }()
	// Hold ignores the reset: its calls run until released, and hold their slots.
	for i := range 50 {
		id := uint32(2*i + 1)
		r.headers(id, holdPath, false)
		_ = r.fr.WriteData(id, true, reqBody(nil))
		_ = r.fr.WriteRSTStream(id, http2.ErrCodeCancel)
	}
	// The four accepted calls start on goroutines of their own, possibly after
	// the refusals are counted.
	waitFor(t, func() bool { return ts.errors(ReasonRefused) == 46 && len(ts.waiting) >= 4 }, "46 streams refused, 4 calls started")
	if started := len(ts.waiting); started != 4 {
		t.Errorf("%d calls running with MaxConcurrentStreams 4", started)
	}
	close(ts.release)
}

// TestHugeHeaders: a header list over the bound is refused, not served without
// the fields that were cut.
func TestHugeHeaders(t *testing.T) {
	ts := startServer(t, Options{}, false)
	r := dialRaw(t, ts.addr)
	// Three fields of 30 KB: each under the bound on one string, together over
	// the bound on the list.
	big := strings.Repeat("a", 30000)
	r.headers(1, echoPath, false, "x-a", big, "x-b", big, "x-c", big)
	_ = r.fr.WriteData(1, true, reqBody([]byte{0, 'x'}))
	if got := r.answerOf(t, 1); got != "8" {
		t.Errorf("huge header list: %q, want grpc-status 8 (RESOURCE_EXHAUSTED)", got)
	}
}

// TestShutdownNotHeldByDeafClient: Shutdown keeps to its context even when a client
// reads nothing at all.
func TestShutdownNotHeldByDeafClient(t *testing.T) {
	s, err := New(Options{Methods: testMethods(&testServer{})})
	if err != nil {
		t.Fatal(err)
	}
	l := &pipeListener{ch: make(chan net.Conn), closed: make(chan struct{})}
	go func() { _ = s.Serve(l) }()
	client, server := net.Pipe()
	defer client.Close()
	l.ch <- server
	r, ready := newRaw(t, client)
	for range 3 { // the server's SETTINGS, WINDOW_UPDATE and SETTINGS ack; then read no more
		if _, err := r.fr.ReadFrame(); err != nil {
			t.Fatal(err)
		}
	}
	<-ready
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_ = s.Shutdown(ctx)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown with a 200ms context took %v", d)
	}
}

// pipeListener hands out the ends of net.Pipes.
type pipeListener struct {
	ch     chan net.Conn
	closed chan struct{}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}
func (l *pipeListener) Close() error   { close(l.closed); return nil }
func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{} }

// TestExpiredDeadlineNotRun: a call whose grpc-timeout has run out before it could
// start is answered DEADLINE_EXCEEDED and never reaches its handler, inline or not.
func TestExpiredDeadlineNotRun(t *testing.T) {
	for _, inline := range []bool{false, true} {
		t.Run(fmt.Sprintf("inline=%v", inline), func(t *testing.T) {
			ts := startServer(t, Options{}, inline)
			r := dialRaw(t, ts.addr)
			r.headers(1, echoPath, false, "grpc-timeout", "0n")
			_ = r.fr.WriteData(1, true, reqBody([]byte{0, 'x'}))
			if got := r.answerOf(t, 1); got != "4" {
				t.Errorf("expired call: grpc-status %q, want 4 (DEADLINE_EXCEEDED)", got)
			}
			if got := ts.errors(ReasonDeadline); got != 1 {
				t.Errorf("%s = %v, want 1", ReasonDeadline, got)
			}
			// A deadline still ahead runs as usual.
			r.headers(3, echoPath, false, "grpc-timeout", "10S")
			_ = r.fr.WriteData(3, true, reqBody([]byte{0, 'x'}))
			if got := r.answerOf(t, 3); got != "0" {
				t.Errorf("call with time left: grpc-status %q, want 0", got)
			}
		})
	}
}

// TestAnswersWaitingForWindow: answers are encoded into reused buffers (one per
// connection for inline calls, spare ones for goroutine calls); one that waits
// for flow-control window keeps its own bytes while later answers reuse them.
func TestAnswersWaitingForWindow(t *testing.T) {
	for _, inline := range []bool{false, true} {
		t.Run(callMode(inline), func(t *testing.T) {
			ts := startServer(t, Options{}, inline)
			r := dialRaw(t, ts.addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
			want := map[uint32][]byte{}
			for i := range 6 {
				id := uint32(2*i + 1)
				want[id] = bytes.Repeat([]byte{byte('a' + i)}, 40+i)
				r.headers(id, echoPath, false)
				_ = r.fr.WriteData(id, true, reqBody(append([]byte{0}, want[id]...)))
				time.Sleep(10 * time.Millisecond) // one call returns before the next starts
			}
			// Every answer waits for window now; give it once all were encoded.
			time.Sleep(100 * time.Millisecond)
			for id := range want {
				_ = r.fr.WriteWindowUpdate(id, 1000)
			}
			_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got := map[uint32][]byte{}
			for ended := 0; ended < len(want); {
				f, err := r.fr.ReadFrame()
				if err != nil {
					t.Fatalf("after %d answers: %v", ended, err)
				}
				switch f := f.(type) {
				case *http2.DataFrame:
					got[f.StreamID] = append(got[f.StreamID], f.Data()...)
				case *http2.MetaHeadersFrame:
					if f.StreamEnded() {
						ended++
					}
				}
			}
			for id := range want {
				var m wrapperspb.BytesValue
				if len(got[id]) < 5 || proto.Unmarshal(got[id][5:], &m) != nil {
					t.Fatalf("stream %d: undecodable answer %q", id, got[id])
				}
				if w := append([]byte{0}, want[id]...); !bytes.Equal(m.Value, w) {
					t.Errorf("stream %d answered %q, want %q", id, m.Value, w)
				}
			}
		})
	}
}

// TestReleasedCallsHoldNothing: after calls with large answers and requests, what
// a connection keeps for its next calls (spare streams and buffers) holds none of
// them beyond the bounds.
func TestReleasedCallsHoldNothing(t *testing.T) {
	for _, inline := range []bool{false, true} {
		t.Run(callMode(inline), func(t *testing.T) {
			ts := startServer(t, Options{}, inline)
			conn := ts.dial(t)
			ctx := context.Background()
			for i, msg := range [][]byte{
				bytes.Repeat([]byte{3}, 30000), // a 120 KB answer
				{0, 's'},
				bytes.Repeat([]byte{0}, 40000), // a 40 KB request
				{1, 't'},
			} {
				if _, err := echo(ctx, conn, msg); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
			}
			c := ts.onlyConn(t)
			c.mu.Lock()
			defer c.mu.Unlock()
			if len(c.spareStreams) == 0 {
				t.Error("no spare stream kept after four calls")
			}
			for _, st := range c.spareStreams {
				if st.pending != nil || st.data != nil || st.reply != nil || st.ctx != nil {
					t.Errorf("a spare stream holds a call's state: %d bytes pending (%d cap), %d of request", len(st.pending), cap(st.pending), len(st.data))
				}
			}
			if len(c.spareBuffers) > maxSpareBuffers {
				t.Errorf("%d spare buffers, want at most %d", len(c.spareBuffers), maxSpareBuffers)
			}
			for _, b := range c.spareBuffers {
				if cap(b) > maxSpareBuffer {
					t.Errorf("a spare buffer of %d bytes, want at most %d", cap(b), maxSpareBuffer)
				}
			}
			if cap(c.reply) > maxKeptBuffer {
				t.Errorf("an inline answer buffer of %d bytes kept, want at most %d", cap(c.reply), maxKeptBuffer)
			}
		})
	}
}

// TestResetWhileUploading: a stream the server resets while its request is still
// arriving (here, its window overflowed) is released once: the rest of its
// request starts no call and does not free its slot a second time.
func TestResetWhileUploading(t *testing.T) {
	ts := startServer(t, Options{MaxConcurrentStreams: 2}, false)
	r := dialRaw(t, ts.addr)
	for i := range 5 {
		id := uint32(2*i + 1)
		r.headers(id, echoPath, false)
		_ = r.fr.WriteWindowUpdate(id, 1<<31-1)
		_ = r.fr.WriteData(id, false, reqBody([]byte{0, 'x'})[:3])
		_ = r.fr.WriteData(id, true, reqBody([]byte{0, 'x'})[3:])
	}
	// A call after them is answered: the connection goes on.
	r.headers(11, echoPath, false)
	_ = r.fr.WriteData(11, true, reqBody([]byte{0, 'y'}))
	if got := r.answerOf(t, 11); got != "0" {
		t.Fatalf("a call after the resets answered grpc-status %q, want 0", got)
	}
	if n := testutil.ToFloat64(ts.goCalls); n != 1 {
		t.Errorf("%v calls started, want 1: the reset streams' requests must start none", n)
	}
	if n := ts.errors(ReasonStream); n != 5 {
		t.Errorf("stream_error counted %v times, want 5: one per reset", n)
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for c := range ts.active {
		c.mu.Lock()
		if c.inflight != 0 {
			t.Errorf("%d streams counted against the limit after every one ended, want 0", c.inflight)
		}
		c.mu.Unlock()
	}
}

// TestClientIgnoringConnectionWindow: a client that sends more request bytes than
// the connection window it was given, on streams it never ends, is closed with a
// FLOW_CONTROL_ERROR GOAWAY, counted, before the connection holds more than the
// window.
func TestClientIgnoringConnectionWindow(t *testing.T) {
	ts := startServer(t, Options{}, false)
	r := dialRaw(t, ts.addr)
	chunk := make([]byte, 1<<20)
	go func() {
		// The server may close while this still writes: its errors end it.
		for i := range 8 {
			id := uint32(2*i + 1)
			r.headers(id, waitPath, false)
			for range 3 {
				if r.fr.WriteData(id, false, chunk) != nil {
					return
				}
			}
		}
	}()
	_ = r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("the connection ended without GOAWAY: %v", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeFlowControl {
				t.Fatalf("GOAWAY %v, want FLOW_CONTROL_ERROR", ga.ErrCode)
			}
			break
		}
	}
	if n := ts.errors(ReasonProtocol); n != 1 {
		t.Errorf("protocol_error counted %v times, want 1", n)
	}
	if n := testutil.ToFloat64(ts.goCalls); n != 0 {
		t.Errorf("%v calls started, want none: no request ended", n)
	}
}

// TestStreamWindowAndReusedIDs: a stream whose DATA (padding included) goes past
// its window, and HEADERS that reuse a finished stream's ID, are reset and counted
// as stream errors; the connection goes on.
func TestStreamWindowAndReusedIDs(t *testing.T) {
	ts := startServer(t, Options{MaxRecvMsgSize: 1024}, false)
	r := dialRaw(t, ts.addr)
	r.headers(1, echoPath, false)
	pad := make([]byte, 255)
	for range 80 { // 80 × 257 bytes: past the 17,413-byte stream window
		_ = r.fr.WriteDataPadded(1, false, []byte{0}, pad)
	}
	if got := r.answerOf(t, 1); got != "reset "+http2.ErrCodeFlowControl.String() {
		t.Fatalf("stream 1 past its window: %q, want a FLOW_CONTROL_ERROR reset", got)
	}
	r.headers(3, echoPath, false)
	_ = r.fr.WriteData(3, true, reqBody([]byte{0, 'x'}))
	if got := r.answerOf(t, 3); got != "0" {
		t.Fatalf("a call after the reset answered grpc-status %q, want 0", got)
	}
	r.headers(3, echoPath, false) // stream 3 has ended
	if got := r.answerOf(t, 3); got != "reset "+http2.ErrCodeStreamClosed.String() {
		t.Fatalf("HEADERS on an ended stream: %q, want a STREAM_CLOSED reset", got)
	}
	if n := ts.errors(ReasonStream); n != 2 {
		t.Errorf("stream_error counted %v times, want 2", n)
	}
	if n := ts.errors(ReasonProtocol); n != 0 {
		t.Errorf("protocol_error counted %v times, want 0: the connection goes on", n)
	}
}

// TestGoAwayAfterAnswerInFlight: a connection error found while a call's answer
// is still being written (here, to a client that reads slowly) is told to the
// client: the GOAWAY follows the answer instead of being cut off by the close.
func TestGoAwayAfterAnswerInFlight(t *testing.T) {
	ts := startServer(t, Options{}, false)
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	// A small receive buffer: the 8 MiB answer fills it and the server's send
	// buffer, so the server is still writing when the bad frame arrives.
	_ = nc.(*net.TCPConn).SetReadBuffer(16 << 10)
	r, ready := newRaw(t, nc, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	<-ready
	_ = r.fr.WriteWindowUpdate(0, 1<<31-1-65535)
	req := reqBody(append([]byte{7}, bytes.Repeat([]byte{'x'}, 1<<20)...)) // answered 8 times over
	r.headers(1, echoPath, false)
	for len(req) > 0 {
		n := min(len(req), 16384)
		_ = r.fr.WriteData(1, n == len(req), req[:n])
		req = req[n:]
	}
	time.Sleep(200 * time.Millisecond) // the answer is being written
	var hb bytes.Buffer
	_ = hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":method", Value: "GET"})
	_ = r.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: hb.Bytes(), EndHeaders: true})
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	data := 0
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("the connection ended without GOAWAY, after %d bytes of answer: %v", data, err)
		}
		if d, ok := f.(*http2.DataFrame); ok {
			data += len(d.Data())
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeProtocol {
				t.Errorf("GOAWAY %v, want PROTOCOL_ERROR", ga.ErrCode)
			}
			return
		}
	}
}

// TestUnansweredCallsCounted: calls a connection accepted and never answered,
// because the connection closed under them or its client stopped reading, are
// counted, as a call its client reset is.
func TestUnansweredCallsCounted(t *testing.T) {
	t.Run("client left", func(t *testing.T) {
		ts := startServer(t, Options{}, false)
		r := dialRaw(t, ts.addr)
		r.headers(1, waitPath, false) // running
		_ = r.fr.WriteData(1, true, reqBody(nil))
		<-ts.waiting
		r.headers(3, echoPath, false) // still uploading
		r.sync(t)
		r.c.Close()
		waitFor(t, func() bool { return ts.errors(ReasonConnClosed) == 2 }, "2 calls counted connection_closed")
		select {
		case <-ts.exited:
		case <-time.After(5 * time.Second):
			t.Fatal("the running call was not cancelled")
		}
		if got := ts.errors(ReasonReset); got != 0 {
			t.Errorf("%s = %v, want 0", ReasonReset, got)
		}
	})
	t.Run("client stopped reading", func(t *testing.T) {
		ts, _, r, done := stalledAnswer(t, func(s *Server) { s.writeTimeout = 100 * time.Millisecond })
		waitFor(t, func() bool { return ts.errors(ReasonWriteTimeout) == 1 }, "write_timeout counted")
		r.c.Close()
		<-done
	})
}

// TestTLSHandshakeCounted: on a TLS listener a client that fails the handshake
// (here, one speaking plaintext HTTP/2) is counted as tls_handshake, not as a
// client breaking HTTP/2's rules; a TLS client is served.
func TestTLSHandshakeCounted(t *testing.T) {
	cert, err := tls.X509KeyPair(adaptertest.SelfSigned(t))
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}}, false)

	plain := ts.dial(t)
	if _, err := echo(context.Background(), plain, []byte{0, 'x'}); err == nil {
		t.Fatal("a plaintext client was served by a TLS listener")
	}
	waitFor(t, func() bool { return ts.errors(ReasonTLS) >= 1 }, "tls_handshake counted")
	if got := ts.errors(ReasonProtocol); got != 0 {
		t.Errorf("%s = %v, want 0", ReasonProtocol, got)
	}

	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	before := ts.errors(ReasonTLS)
	if got, err := echo(context.Background(), conn, []byte{0, 'x'}); err != nil || string(got) != "\x00x" {
		t.Errorf("TLS client: %q %v", got, err)
	}
	if got := ts.errors(ReasonTLS); got != before {
		t.Errorf("%s = %v after a good handshake, want %v", ReasonTLS, got, before)
	}
}

// TestRefusedCallsNotCountedAgainOnClose: a call refused at its headers (and
// counted for it) that is still uploading when its client leaves was never
// accepted: it is not counted connection_closed as well.
func TestRefusedCallsNotCountedAgainOnClose(t *testing.T) {
	tests := []struct {
		name, path string
		extra      []string
		reason     string
	}{
		{"unknown method", "/no.Such/Method", nil, ReasonUnknownMethod},
		{"compressed", echoPath, []string{"grpc-encoding", "gzip"}, ReasonBadRequest},
		{"malformed grpc-timeout", echoPath, []string{"grpc-timeout", "soon"}, ReasonBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, Options{}, false)
			r := dialRaw(t, ts.addr)
			r.headers(1, tt.path, false, tt.extra...) // refused, still uploading
			r.sync(t)
			r.c.Close()
			waitFor(t, func() bool { return testutil.ToFloat64(ts.conns) == 0 }, "the connection closed")
			if got := ts.errors(tt.reason); got != 1 {
				t.Errorf("%s = %v, want 1", tt.reason, got)
			}
			if got := ts.errors(ReasonConnClosed); got != 0 {
				t.Errorf("%s = %v, want 0: the call was counted when it was refused", ReasonConnClosed, got)
			}
		})
	}
}

// TestConnectionBoundHoldsUntilCallsReturn: a connection keeps its place under
// MaxConnections until its calls have returned, not only until it closes, so that
// a client cannot close and reopen connections to leave any number of calls
// running; one past the bound is closed as soon as accepted, and counted.
func TestConnectionBoundHoldsUntilCallsReturn(t *testing.T) {
	ts := startServer(t, Options{MaxConnections: 1}, false)
	released := false
	defer func() { // before the server's shutdown, which waits for the call
		if !released {
			close(ts.release)
		}
	}()
	first := ts.dial(t)
	go func() {
		_ = first.Invoke(context.Background(), holdPath, wrapperspb.String("x"), new(wrapperspb.StringValue))
	}()
	<-ts.waiting
	first.Close() // the call, deaf to its context, runs on

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := echo(ctx, ts.dial(t), []byte("a")); err == nil {
		t.Fatal("a second connection was served while the first one's call ran")
	}
	if n := ts.errors(ReasonConnLimit); n < 1 {
		t.Fatalf("%v connections counted as refused, want at least 1", n)
	}

	close(ts.release)
	released = true
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitFor(t, func() bool {
		_, err := echo(ctx, ts.dial(t), []byte("b"))
		return err == nil
	}, "a connection to be served once the call returned")
}
