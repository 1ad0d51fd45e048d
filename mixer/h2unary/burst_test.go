package h2unary

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluicemesh/sluice/adapters/burst"
)

// parkItem is the work a parking call (see parkingServer) hands its backend.
type parkItem struct {
	ctx    context.Context
	v      int64
	answer int64
}

// batchSender is a backend that answers parked items with ten times their value
// and records how many each send carried, and how many of them had their
// callers' contexts ended.
type batchSender struct {
	mu      sync.Mutex
	batches []int
	ended   int
	alone   int // calls that did not park, sent alone
}

func (b *batchSender) SendParked(items []any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batches = append(b.batches, len(items))
	for _, it := range items {
		p := it.(*parkItem)
		if p.ctx.Err() != nil {
			b.ended++
			continue
		}
		p.answer = 10 * p.v
	}
}

// parkMethod parks its request's value with b, or answers it alone outside a
// burst, and answers ten times the value.
func parkMethod(b *batchSender) Method {
	m := Unary(parkPath, func(ctx context.Context, req *wrapperspb.Int64Value) (*wrapperspb.Int64Value, error) {
		it := &parkItem{ctx: ctx, v: req.Value}
		if !burst.Park(ctx, b, it) {
			b.mu.Lock()
			b.alone++
			b.mu.Unlock()
			it.answer = 10 * it.v
		}
		return wrapperspb.Int64(it.answer), nil
	})
	m.OnReader = func() bool { return true }
	return m
}

// parkingServer serves parkMethod.
func parkingServer(t *testing.T, b *batchSender) (*Server, string) {
	return serveMethods(t, parkMethod(b))
}

// serveMethods serves methods on a loopback port, until the test ends.
func serveMethods(t *testing.T, methods ...Method) (*Server, string) {
	t.Helper()
	s, err := New(Options{Metrics: prometheus.NewRegistry(), Methods: methods})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return s, lis.Addr().String()
}

const parkPath = "/test.Svc/Park"

// requests encodes calls of the method at path, one per value (its request),
// on streams 1, 3, 5..., to be written in one write.
func requests(r *rawClient, path string, values ...int64) []byte {
	var batch bytes.Buffer
	fr := http2.NewFramer(&batch, nil)
	for i, v := range values {
		id := uint32(2*i + 1)
		r.hb.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", path}, {":authority", "x"}, {"content-type", "application/grpc"}} {
			_ = r.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.hb.Bytes(), EndHeaders: true})
		body, _ := proto.Marshal(wrapperspb.Int64(v))
		_ = fr.WriteData(id, true, append(grpcPrefix(nil, len(body)), body...))
	}
	return batch.Bytes()
}

// TestBurstParked checks that calls read together run on the reader and hand
// their backend their work in one send when the burst is read, each answered
// with its own result; that a call read alone does not park; and that calls
// parked when the connection breaks end with their contexts cancelled, sent as
// such, the connection's end waiting for them.
func TestBurstParked(t *testing.T) {
	b := &batchSender{}
	s, addr := parkingServer(t, b)
	r := dialRaw(t, addr)
	if _, err := r.c.Write(requests(r, parkPath, 1, 2, 3, 4, 5)); err != nil {
		t.Fatal(err)
	}
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	answers := map[uint32]int64{}
	for len(answers) < 5 {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("%d of 5 answered: %v", len(answers), err)
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			var v wrapperspb.Int64Value
			if err := proto.Unmarshal(f.Data()[5:], &v); err != nil {
				t.Fatal(err)
			}
			answers[f.StreamID] = v.Value
		case *http2.MetaHeadersFrame:
			if code := grpcStatus(f); f.StreamEnded() && code != "0" {
				t.Fatalf("stream %d: grpc-status %q", f.StreamID, code)
			}
		}
	}
	for i := 1; i <= 5; i++ {
		if got := answers[uint32(2*i-1)]; got != int64(10*i) {
			t.Errorf("stream %d answered %d, want %d", 2*i-1, got, 10*i)
		}
	}
	b.mu.Lock()
	batches, alone := fmt.Sprint(b.batches), b.alone
	b.mu.Unlock()
	// The five arrive in one segment on loopback: one burst, one send.
	if batches != "[5]" || alone != 0 {
		t.Errorf("sends of %s parked calls and %d calls alone; want one send of 5, none alone", batches, alone)
	}

	// A lone call runs on the idle reader, unparked.
	r2 := dialRaw(t, addr)
	if _, err := r2.c.Write(requests(r2, parkPath, 1)); err != nil {
		t.Fatal(err)
	}
	_ = r2.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for ended := false; !ended; {
		f, err := r2.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		h, ok := f.(*http2.MetaHeadersFrame)
		ended = ok && h.StreamEnded()
	}
	b.mu.Lock()
	if b.alone != 1 || len(b.batches) != 1 {
		t.Errorf("a lone call: %d sent alone, %d sends of parked calls; want 1 and still 1", b.alone, len(b.batches))
	}
	b.mu.Unlock()
	if reader, goroutine := testutil.ToFloat64(s.readerCalls), testutil.ToFloat64(s.goCalls); reader != 1 || goroutine != 0 {
		t.Errorf("a lone call: %v on the reader, %v on goroutines; want 1 and 0", reader, goroutine)
	}

	// Two calls, then a frame that breaks the connection (DATA on stream 0),
	// read together: the calls are parked when the reader meets the error.
	r3 := dialRaw(t, addr)
	bad := append(requests(r3, parkPath, 1, 2), 0, 0, 1, byte(http2.FrameData), 0, 0, 0, 0, 0, 0)
	if _, err := r3.c.Write(bad); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		sends, ended := len(b.batches), b.ended
		b.mu.Unlock()
		if sends == 2 && ended == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a connection error with 2 calls parked: %d sends, %d items with ended contexts; want 2 and 2", sends, ended)
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v (a parked call left running?)", err)
	}
}

// TestReaderPanicCrashes: a method that panics on the reader (here on a
// coroutine of a burst) crashes the process, as a panic in a goroutine call
// does, rather than leave the connection and Shutdown waiting for a call that
// will never return. The server runs in a child process.
func TestReaderPanicCrashes(t *testing.T) {
	if os.Getenv("H2UNARY_PANIC_CHILD") == "1" {
		b := &batchSender{}
		m := Unary(parkPath, func(ctx context.Context, req *wrapperspb.Int64Value) (*wrapperspb.Int64Value, error) {
			burst.Park(ctx, b, &parkItem{ctx: ctx, v: req.Value})
			panic("boom in a burst")
		})
		m.OnReader = func() bool { return true }
		_, addr := serveMethods(t, m)
		// Two calls park; a PING behind them has the reader resume them at the
		// top of its loop, where no lock is held (a panic under one of the
		// listener's locks crashed the process anyway).
		r := dialRaw(t, addr)
		ping := []byte{0, 0, 8, byte(http2.FramePing), 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}
		if _, err := r.c.Write(append(requests(r, parkPath, 1, 2), ping...)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second) // the panic ends the process before this does
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestReaderPanicCrashes$")
	cmd.Env = append(os.Environ(), "H2UNARY_PANIC_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "boom in a burst") {
		t.Fatalf("the child process: %v, want it to crash with the method's panic; output:\n%s", err, out)
	}
}

// TestBurstSlowCallPauses: a call of a burst whose backend blocks instead of
// parking holds the reader as a lone call there does, and pauses calls on
// readers alike: of three calls read together, the first blocks 200 ms, and
// the two behind it go to goroutines.
func TestBurstSlowCallPauses(t *testing.T) {
	const sleepPath = "/test.Svc/Sleep" // sleeps for the request's milliseconds
	m := Unary(sleepPath, func(_ context.Context, req *wrapperspb.Int64Value) (*wrapperspb.Int64Value, error) {
		time.Sleep(time.Duration(req.Value) * time.Millisecond)
		return req, nil
	})
	m.OnReader = func() bool { return true }
	s, err := New(Options{Metrics: prometheus.NewRegistry(), Methods: []Method{m}})
	if err != nil {
		t.Fatal(err)
	}
	s.readerPause.slowAfter, s.readerPause.min = 100*time.Millisecond, 5*time.Second
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	r := dialRaw(t, lis.Addr().String())
	if _, err := r.c.Write(requests(r, sleepPath, 200, 0, 0)); err != nil {
		t.Fatal(err)
	}
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for ended := 0; ended < 3; {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("%d of 3 answered: %v", ended, err)
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamEnded() {
			ended++
		}
	}
	inBurst, goroutine := testutil.ToFloat64(s.burstCalls), testutil.ToFloat64(s.goCalls)
	if pauses := testutil.ToFloat64(s.pauses.WithLabelValues(PauseSlowCall)); inBurst != 1 || goroutine != 2 || pauses != 1 {
		t.Errorf("%v calls in a burst, %v on goroutines, %v pauses; want 1, 2 and 1", inBurst, goroutine, pauses)
	}
}
