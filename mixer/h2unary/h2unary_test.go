package h2unary

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The test service: Echo answers its request, repeated as the request's first byte
// says (×1 when empty); Raw answers its request's bytes as they are, read after a
// pause (a buffer the listener handed to another call meanwhile shows); Fail
// answers an error with details; Wait blocks until its context ends or release is
// closed.
const (
	echoPath = "/test.Svc/Echo"
	rawPath  = "/test.Svc/Raw"
	failPath = "/test.Svc/Fail"
	waitPath = "/test.Svc/Wait"
	holdPath = "/test.Svc/Hold" // like Wait, but deaf to its context
)

type testServer struct {
	*Server
	addr    string
	reg     *prometheus.Registry
	release chan struct{}
	waiting chan struct{} // one value per Wait call that started
	exited  chan error    // one value per Wait call that ended by its context
	served  chan error
}

// startServer serves the test methods; with inline, Echo and Fail run on the reader.
func startServer(t *testing.T, opts Options, inline bool) *testServer {
	t.Helper()
	return startServerMode(t, opts, callMode(inline))
}

// startServerMode serves the test methods with Echo, Fail and Raw run as mode says:
// goroutine (by default), inline (Echo and Fail on the reader), or reader (the
// three on a reader with nothing else to read, Method.OnReader).
func startServerMode(t *testing.T, opts Options, mode string) *testServer {
	t.Helper()
	ts := &testServer{reg: prometheus.NewRegistry(), release: make(chan struct{}), waiting: make(chan struct{}, 100), exited: make(chan error, 100), served: make(chan error, 1)}
	opts.Metrics = ts.reg
	opts.Methods = testMethods(ts)
	yes := func() bool { return true }
	switch mode {
	case "inline":
		opts.Methods[0].Inline, opts.Methods[1].Inline = yes, yes
	case "reader":
		opts.Methods[0].OnReader, opts.Methods[1].OnReader, opts.Methods[2].OnReader = yes, yes, yes
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = s
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = lis.Addr().String()
	go func() { ts.served <- s.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return ts
}

// testMethods are Echo, Fail and Wait, reporting to ts.
func testMethods(ts *testServer) []Method {
	return []Method{
		Unary(echoPath, func(_ context.Context, req *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
			n := 1
			if len(req.Value) > 0 {
				n = int(req.Value[0]) + 1
			}
			return wrapperspb.Bytes(bytes.Repeat(req.Value, n)), nil
		}),
		Unary(failPath, func(_ context.Context, req *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			st, err := status.New(codes.PermissionDenied, req.Value).WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(3 * time.Second)})
			if err != nil {
				return nil, err
			}
			return nil, st.Err()
		}),
		{Path: rawPath, Call: func(_ context.Context, msg, dst []byte) ([]byte, error) {
			time.Sleep(time.Duration(len(msg)%7) * 50 * time.Microsecond)
			return append(dst, msg...), nil
		}},
		Unary(holdPath, func(context.Context, *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			ts.waiting <- struct{}{}
			<-ts.release
			return wrapperspb.String("released"), nil
		}),
		Unary(waitPath, func(ctx context.Context, _ *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
			ts.waiting <- struct{}{}
			select {
			case <-ctx.Done():
				ts.exited <- ctx.Err()
				return nil, ctx.Err()
			case <-ts.release:
				return wrapperspb.String("released"), nil
			}
		}),
	}
}

func (ts *testServer) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// onlyConn returns the server's one open connection, failing t when it has
// another count: for tests that look into what a connection keeps.
func (ts *testServer) onlyConn(t *testing.T) *conn {
	t.Helper()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.active) != 1 {
		t.Fatalf("%d connections open, want the test's one", len(ts.active))
	}
	for c := range ts.active {
		return c
	}
	return nil
}

func (ts *testServer) errors(reason string) float64 {
	return testutil.ToFloat64(ts.errs.WithLabelValues(reason))
}

func echo(ctx context.Context, conn *grpc.ClientConn, msg []byte) ([]byte, error) {
	var resp wrapperspb.BytesValue
	err := conn.Invoke(ctx, echoPath, wrapperspb.Bytes(msg), &resp)
	return resp.Value, err
}

// TestCalls drives the server with grpc-go's own client: answers, errors with
// their messages and details, unknown methods, sizes around every HTTP/2 limit
// (frame size, the client's 64 KiB windows, the request bound), many calls at once.
func TestCalls(t *testing.T) {
	for _, mode := range []string{"goroutine", "inline", "reader"} {
		t.Run(mode, func(t *testing.T) { testCalls(t, mode) })
	}
}

// callMode names a subtest by how the test methods run.
func callMode(inline bool) string {
	if inline {
		return "inline"
	}
	return "goroutine"
}

func testCalls(t *testing.T, mode string) {
	ts := startServerMode(t, Options{MaxRecvMsgSize: 256 << 10}, mode)
	conn := ts.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	for _, tt := range []struct {
		name string
		msg  []byte
		code codes.Code
	}{
		{"empty", nil, codes.OK},
		{"small", []byte{0, 'h', 'i'}, codes.OK},
		{"answer over one frame", bytes.Repeat([]byte{1}, 20000), codes.OK},             // 40 KB answer
		{"short after long", []byte{0, 's'}, codes.OK},                                  // inline: in the long one's buffer
		{"answer over the client's windows", bytes.Repeat([]byte{9}, 100000), codes.OK}, // 1 MB answer
		{"request at the bound", bytes.Repeat([]byte{0}, 256<<10-8), codes.OK},
		{"request over the bound", bytes.Repeat([]byte{0}, 300<<10), codes.ResourceExhausted},
	} {
		got, err := echo(ctx, conn, tt.msg)
		if status.Code(err) != tt.code {
			t.Fatalf("%s: %v, want %v", tt.name, err, tt.code)
		}
		if err != nil {
			continue
		}
		n := 1
		if len(tt.msg) > 0 {
			n = int(tt.msg[0]) + 1
		}
		if want := bytes.Repeat(tt.msg, n); !bytes.Equal(got, want) {
			t.Errorf("%s: answer of %d bytes, want %d", tt.name, len(got), len(want))
		}
	}
	if n := ts.errors(ReasonTooLarge); n != 1 {
		t.Errorf("too_large counted %v times, want 1", n)
	}

	// An error keeps its code, its message (percent-encoded on the wire) and details.
	msg := "denied: 100% café\nsecond line"
	var resp wrapperspb.StringValue
	err := conn.Invoke(ctx, failPath, wrapperspb.String(msg), &resp)
	st := status.Convert(err)
	if st.Code() != codes.PermissionDenied || st.Message() != msg {
		t.Errorf("error %v %q, want PermissionDenied %q", st.Code(), st.Message(), msg)
	}
	if d := st.Details(); len(d) != 1 || d[0].(*errdetails.RetryInfo).GetRetryDelay().AsDuration() != 3*time.Second {
		t.Errorf("details %v, want the RetryInfo", d)
	}

	err = conn.Invoke(ctx, "/test.Svc/Nope", wrapperspb.String(""), &resp)
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), echoPath) {
		t.Errorf("unknown method: %v, want Unimplemented listing the methods", err)
	}
	if n := ts.errors(ReasonUnknownMethod); n != 1 {
		t.Errorf("unknown_method counted %v times, want 1", n)
	}

	// Many calls at once over one connection, each with its own answer: Raw
	// reads its request after a pause and answers in its dst, so a request or
	// answer buffer reused by the listener while a call still has it shows.
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				msg := fmt.Appendf([]byte{0}, "w%d-%d", w, i)
				msg = append(msg, bytes.Repeat([]byte{'.'}, i%3*400)...)
				var got []byte
				var err error
				if i%2 == 0 {
					got, err = echo(ctx, conn, msg)
				} else {
					var resp wrapperspb.BytesValue
					err = conn.Invoke(ctx, rawPath, wrapperspb.Bytes(msg), &resp)
					got = resp.Value
				}
				if err == nil && !bytes.Equal(got, msg) {
					err = fmt.Errorf("answer %q to %q", got, msg)
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

// TestDeadlinesAndCancels: the client's deadline reaches the handler's context, and
// a call the client gives up on is counted, not answered, and breaks nothing.
func TestDeadlinesAndCancels(t *testing.T) {
	ts := startServer(t, Options{}, false)
	conn := ts.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var resp wrapperspb.StringValue
	start := time.Now()
	err := conn.Invoke(ctx, waitPath, wrapperspb.String(""), &resp)
	if status.Code(err) != codes.DeadlineExceeded || time.Since(start) > 2*time.Second {
		t.Fatalf("%v after %v, want DeadlineExceeded after ~50ms", err, time.Since(start))
	}
	<-ts.waiting

	ctx2, cancel2 := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- conn.Invoke(ctx2, waitPath, wrapperspb.String(""), &resp) }()
	<-ts.waiting
	cancel2()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Errorf("cancelled call: %v", err)
	}
	// The reset reaches the handler's context: Wait returns without a release.
	waitFor(t, func() bool { return ts.errors(ReasonReset) >= 1 }, "reset_by_client counted")
	for range 2 { // the deadline's call and the cancelled one
		select {
		case <-ts.exited:
		case <-time.After(5 * time.Second):
			t.Fatal("a call the client abandoned still runs")
		}
	}
	waitFor(t, func() bool { return testutil.ToFloat64(ts.conns) == 1 }, "one connection")
	if _, err := echo(context.Background(), conn, []byte{0, 'x'}); err != nil {
		t.Errorf("connection after cancels: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}

// TestShutdownDrains: a call in flight when Shutdown starts is answered; the
// server refuses new connections, and Shutdown returns once the call is done.
func TestShutdownDrains(t *testing.T) {
	ts := startServer(t, Options{}, false)
	conn := ts.dial(t)
	var resp wrapperspb.StringValue
	done := make(chan error)
	go func() { done <- conn.Invoke(context.Background(), waitPath, wrapperspb.String(""), &resp) }()
	<-ts.waiting
	shut := make(chan error)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- ts.Shutdown(ctx)
	}()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a call in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(ts.release)
	if err := <-done; err != nil || resp.Value != "released" {
		t.Errorf("call in flight during shutdown: %v %q", err, resp.Value)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-ts.served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
	if _, err := net.DialTimeout("tcp", ts.addr, time.Second); err == nil {
		t.Error("the listener still accepts after Shutdown")
	}
	waitFor(t, func() bool { return ts.workers.Load() == 0 }, "the call workers to end after Shutdown")
}

// TestCallsReuseWorkers: calls one after another run on one worker goroutine, whose
// stack has grown already, instead of a new goroutine each.
func TestCallsReuseWorkers(t *testing.T) {
	ts := startServer(t, Options{}, false)
	conn := ts.dial(t)
	for i := range 50 {
		if _, err := echo(context.Background(), conn, []byte{1, byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// One, or a few when the next request arrived before the worker that answered
	// the last one was back waiting (a busy machine can hold it up): never 50.
	if n := ts.workers.Load(); n < 1 || n > 5 {
		t.Errorf("%d workers after 50 calls one at a time, want 1 to 5", n)
	}
}

// TestBadClients: what is not HTTP/2 gRPC gets a clear refusal, counted, and the
// server goes on serving.
func TestBadClients(t *testing.T) {
	ts := startServer(t, Options{}, false)
	raw := func(t *testing.T, write func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer)) []http2.Frame {
		t.Helper()
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		var out bytes.Buffer
		out.WriteString(http2.ClientPreface)
		fr := http2.NewFramer(&out, nil)
		_ = fr.WriteSettings()
		var hb bytes.Buffer
		write(fr, hpack.NewEncoder(&hb), &hb)
		if _, err := c.Write(out.Bytes()); err != nil {
			t.Fatal(err)
		}
		rd := http2.NewFramer(nil, c)
		rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		var got []http2.Frame
		for {
			f, err := rd.ReadFrame()
			if err != nil {
				return got
			}
			switch f.(type) {
			case *http2.MetaHeadersFrame, *http2.RSTStreamFrame, *http2.GoAwayFrame:
				got = append(got, f)
			}
			if _, ok := f.(*http2.GoAwayFrame); ok {
				return got
			}
			if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamEnded() {
				return got
			}
			if _, ok := f.(*http2.RSTStreamFrame); ok {
				return got
			}
		}
	}
	headers := func(enc *hpack.Encoder, hb *bytes.Buffer, fields ...string) []byte {
		hb.Reset()
		for i := 0; i+1 < len(fields); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return hb.Bytes()
	}
	grpcStatus := func(fs []http2.Frame) string {
		for _, f := range fs {
			if h, ok := f.(*http2.MetaHeadersFrame); ok {
				for _, hf := range h.RegularFields() {
					if hf.Name == "grpc-status" {
						return hf.Value
					}
				}
			}
		}
		return ""
	}

	t.Run("not gRPC", func(t *testing.T) {
		fs := raw(t, func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, EndStream: true,
				BlockFragment: headers(enc, hb, ":method", "GET", ":scheme", "http", ":path", echoPath, ":authority", "x")})
		})
		if got := grpcStatus(fs); got != "12" {
			t.Errorf("GET: grpc-status %q, want 12 (UNIMPLEMENTED)", got)
		}
	})
	t.Run("compressed message", func(t *testing.T) {
		fs := raw(t, func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true,
				BlockFragment: headers(enc, hb, ":method", "POST", ":scheme", "http", ":path", echoPath, ":authority", "x", "content-type", "application/grpc")})
			_ = fr.WriteData(1, true, []byte{1, 0, 0, 0, 1, 0})
		})
		if got := grpcStatus(fs); got != "12" {
			t.Errorf("compressed: grpc-status %q, want 12", got)
		}
	})
	t.Run("prefix and length disagree", func(t *testing.T) {
		fs := raw(t, func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true,
				BlockFragment: headers(enc, hb, ":method", "POST", ":scheme", "http", ":path", echoPath, ":authority", "x", "content-type", "application/grpc")})
			_ = fr.WriteData(1, true, []byte{0, 0, 0, 0, 9, 1})
		})
		if got := grpcStatus(fs); got != "13" {
			t.Errorf("bad prefix: grpc-status %q, want 13 (INTERNAL)", got)
		}
	})
	t.Run("even stream id", func(t *testing.T) {
		fs := raw(t, func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2, EndHeaders: true, EndStream: true,
				BlockFragment: headers(enc, hb, ":method", "POST", ":path", echoPath)})
		})
		if len(fs) == 0 {
			t.Fatal("no answer")
		}
		if g, ok := fs[len(fs)-1].(*http2.GoAwayFrame); !ok || g.ErrCode != http2.ErrCodeProtocol {
			t.Errorf("even stream id: %v, want GOAWAY PROTOCOL_ERROR", fs[len(fs)-1])
		}
	})
	t.Run("malformed header field", func(t *testing.T) {
		fs := raw(t, func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, EndStream: true,
				BlockFragment: headers(enc, hb, ":method", "POST", ":scheme", "http", ":path", echoPath, ":authority", "x", "Content-Type", "application/grpc")})
		})
		if len(fs) == 0 {
			t.Fatal("no answer")
		}
		if r, ok := fs[len(fs)-1].(*http2.RSTStreamFrame); !ok || r.ErrCode != http2.ErrCodeProtocol || r.StreamID != 1 {
			t.Errorf("upper-case header name: %v, want RST_STREAM PROTOCOL_ERROR on stream 1", fs[len(fs)-1])
		}
	})
	t.Run("not HTTP/2 at all", func(t *testing.T) {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("HTTP/1.1 client: %v, want the connection closed", err)
		}
	})
	if n := ts.errors(ReasonProtocol); n != 2 {
		t.Errorf("protocol_error counted %v times, want 2", n)
	}
	if n := ts.errors(ReasonBadRequest); n != 4 {
		t.Errorf("bad_request counted %v times, want 4", n)
	}
	// Still serving.
	if _, err := echo(context.Background(), ts.dial(t), []byte{0}); err != nil {
		t.Errorf("after bad clients: %v", err)
	}
}

func TestParseTimeout(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"100m", 100 * time.Millisecond, true},
		{"5S", 5 * time.Second, true},
		{"99999999H", 1<<63 - 1, true},
		{"1u", time.Microsecond, true},
		{"3M", 3 * time.Minute, true},
		{"2H", 2 * time.Hour, true},
		{"250n", 250, true},
		{"m", 0, false},
		{"10x", 0, false},
		{"123456789S", 0, false},
		{"-1S", 0, false},
	} {
		got, ok := parseTimeout(tt.in)
		if ok != tt.ok || got != tt.want {
			t.Errorf("parseTimeout(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestNewRejects(t *testing.T) {
	ok := Method{Path: echoPath, Call: func(context.Context, []byte, []byte) ([]byte, error) { return nil, nil }}
	for name, opts := range map[string]Options{
		"no slash":     {Methods: []Method{{Path: "x", Call: ok.Call}}},
		"no call":      {Methods: []Method{{Path: echoPath}}},
		"twice":        {Methods: []Method{ok, ok}},
		"huge message": {Methods: []Method{ok}, MaxRecvMsgSize: 2 << 30},
	} {
		if _, err := New(opts); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestIdleReaderCalls: a method that may wait (Method.OnReader) runs on the
// connection's reader when nothing else is there to read, on a goroutine when
// more requests wait behind it, and on goroutines only for a pause after one such
// call took longer than readerCallSlow, a pause that doubles when slow calls
// recur.
func TestIdleReaderCalls(t *testing.T) {
	const sleepPath = "/test.Svc/Sleep" // sleeps for the request's milliseconds
	reg := prometheus.NewRegistry()
	s, err := New(Options{Metrics: reg, Methods: []Method{func() Method {
		m := Unary(sleepPath, func(_ context.Context, req *wrapperspb.Int64Value) (*wrapperspb.Int64Value, error) {
			time.Sleep(time.Duration(req.Value) * time.Millisecond)
			return req, nil
		})
		m.OnReader = func() bool { return true }
		return m
	}()}})
	if err != nil {
		t.Fatal(err)
	}
	// A threshold and pauses long enough that a busy test machine's calls fit in
	// them, and that no quick call counts as slow.
	s.readerPause.slowAfter, s.readerPause.meanSlow = 100*time.Millisecond, 50*time.Millisecond
	s.readerPause.min, s.readerPause.max = 300*time.Millisecond, time.Second
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	ts := &testServer{Server: s, addr: lis.Addr().String()}
	conn := ts.dial(t)
	call := func(ms int64) {
		t.Helper()
		var resp wrapperspb.Int64Value
		if err := conn.Invoke(context.Background(), sleepPath, wrapperspb.Int64(ms), &resp); err != nil || resp.Value != ms {
			t.Fatalf("call of %d ms: %v, answer %d", ms, err, resp.Value)
		}
	}
	counts := func(wantReader, wantGoroutine float64) {
		t.Helper()
		reader, goroutine := testutil.ToFloat64(s.readerCalls), testutil.ToFloat64(s.goCalls)
		if reader != wantReader || goroutine != wantGoroutine {
			t.Fatalf("calls on readers %v, on goroutines %v; want %v and %v", reader, goroutine, wantReader, wantGoroutine)
		}
	}

	const slow = 200 // ms
	for range 3 {
		call(0)
	}
	counts(3, 0)
	call(slow) // readers stop taking calls for 300 ms
	counts(4, 0)
	call(0)
	call(0)
	counts(4, 2)
	time.Sleep(400 * time.Millisecond)
	call(0)
	counts(5, 2)
	call(slow) // slow again: 600 ms
	time.Sleep(400 * time.Millisecond)
	call(0)
	counts(6, 3)
	time.Sleep(300 * time.Millisecond)
	call(0)
	counts(7, 3)
	if got := testutil.ToFloat64(s.pauses.WithLabelValues(PauseSlowCall)); got != 2 {
		t.Errorf("%v pauses for a slow call counted, want 2", got)
	}

	// Requests that reach the reader together: all but the last have frames
	// behind them, and run on the reader as a burst.
	r := dialRaw(t, ts.addr)
	if _, err := r.c.Write(requests(r, sleepPath, 0, 0, 0, 0, 0)); err != nil {
		t.Fatal(err)
	}
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for ended := 0; ended < 5; { // answers may come in any order
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("%d of 5 answered: %v", ended, err)
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamEnded() {
			if code := grpcStatus(h); code != "0" {
				t.Fatalf("stream %d: grpc-status %q", h.StreamID, code)
			}
			ended++
		}
	}
	reader, inBurst, goroutine := testutil.ToFloat64(s.readerCalls), testutil.ToFloat64(s.burstCalls), testutil.ToFloat64(s.goCalls)
	if reader+inBurst+goroutine != 15 || goroutine != 3 || inBurst < 4 {
		t.Errorf("of five requests read together, %v ran in a burst, %v alone on the reader and %v on goroutines; want at least the first four in a burst, none on goroutines", inBurst, reader-7, goroutine-3)
	}
}

// grpcStatus returns the grpc-status of a header block ("" without one).
func grpcStatus(h *http2.MetaHeadersFrame) string {
	for _, hf := range h.RegularFields() {
		if hf.Name == "grpc-status" {
			return hf.Value
		}
	}
	return ""
}

// TestReaderPause: pauses start at the minimum, double while slow calls recur
// within the reset interval, stop at the maximum, start over after a quiet
// interval, and are not lengthened by calls that were running when they began.
// Calls slow on average pause them too; quick calls with a few slow ones among
// them, each under the threshold, do not.
func TestReaderPause(t *testing.T) {
	t0 := time.Unix(1000, 0)
	type call struct{ start, end time.Duration } // from t0
	slow := func(end time.Duration) call { return call{end - 2*readerCallSlow, end} }
	shift := func(cs []call, by time.Duration) []call {
		for i := range cs {
			cs[i].start += by
			cs[i].end += by
		}
		return cs
	}
	// steady is n calls one after the other, each taking d, and every tenth
	// spike instead when that is not zero.
	steady := func(n int, d, spike time.Duration) (cs []call) {
		var at time.Duration
		for k := range n {
			took := d
			if spike != 0 && k%10 == 9 {
				took = spike
			}
			cs = append(cs, call{at, at + took})
			at += took
		}
		return cs
	}
	for _, tt := range []struct {
		name  string
		calls []call
		pause time.Duration // the pause after the last slow call that set one
	}{
		{"first", []call{slow(0)}, readerPauseMin},
		{"quick calls", []call{{0, readerCallSlow}, {0, time.Millisecond}}, 0},
		{"recurring", []call{slow(0), slow(time.Second), slow(2 * time.Second)}, 4 * readerPauseMin},
		{"at the maximum", func() (cs []call) {
			for k := range 12 {
				cs = append(cs, slow(time.Duration(k)*time.Second))
			}
			return cs
		}(), readerPauseMax},
		{"after a quiet interval", []call{slow(0), slow(time.Second), slow(time.Second + readerPauseReset)}, readerPauseMin},
		{"one stall, calls on four readers", []call{slow(0), slow(time.Millisecond), slow(2 * time.Millisecond), slow(3 * time.Millisecond)}, readerPauseMin},
		// A backend answering in 3 ms: the mean passes 2 ms after ~70 calls.
		{"slow on average", steady(100, 3*time.Millisecond, 0), readerPauseMin},
		{"slow on average, recurring", steady(150, 3*time.Millisecond, 0), 2 * readerPauseMin},
		{"quick on average", steady(2000, readerMeanSlow-100*time.Microsecond, 0), 0},
		{"host stalls among quick calls", steady(2000, 100*time.Microsecond, readerCallSlow-time.Millisecond), 0},
		// A 40 ms stall slows five calls in flight: one begins the pause, and
		// the others neither lengthen it nor weigh on the mean after it.
		{"a stall slows calls in flight", append([]call{
			{0, 40 * time.Millisecond}, {time.Millisecond, 40 * time.Millisecond}, {2 * time.Millisecond, 41 * time.Millisecond},
			{3 * time.Millisecond, 41 * time.Millisecond}, {4 * time.Millisecond, 42 * time.Millisecond},
		}, shift(steady(100, 100*time.Microsecond, 0), 100*time.Millisecond)...), readerPauseMin},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newReaderPause(nil)
			for _, c := range tt.calls {
				p.ended(t0.Add(c.start), t0.Add(c.end))
			}
			if tt.pause == 0 {
				if p.until.Load() != 0 {
					t.Errorf("paused until %v after quick calls", time.Unix(0, p.until.Load()))
				}
				return
			}
			began := time.Unix(0, p.began.Load())
			if got := time.Unix(0, p.until.Load()).Sub(began); got != tt.pause {
				t.Errorf("paused for %v after the last slow call, want %v", got, tt.pause)
			}
			if p.allows(began.Add(tt.pause-time.Nanosecond)) || !p.allows(began.Add(tt.pause)) {
				t.Errorf("allows does not follow the pause of %v", tt.pause)
			}
		})
	}
}

// TestReaderPauseCauses: each pause is counted once, under what began it.
func TestReaderPauseCauses(t *testing.T) {
	pauses := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pauses"}, []string{"cause"})
	p := newReaderPause(pauses)
	t0 := time.Unix(1000, 0)
	p.ended(t0, t0.Add(2*readerCallSlow)) // slow
	p.ended(t0, t0.Add(3*readerCallSlow)) // in flight when the pause began
	at := t0.Add(time.Second)
	for range 100 { // 3 ms each: the mean passes 2 ms after ~70
		p.ended(at, at.Add(3*time.Millisecond))
		at = at.Add(3 * time.Millisecond)
	}
	for cause, want := range map[string]float64{PauseSlowCall: 1, PauseSlowAverage: 1} {
		if got := testutil.ToFloat64(pauses.WithLabelValues(cause)); got != want {
			t.Errorf("%s pauses: %v, want %v", cause, got, want)
		}
	}
}
