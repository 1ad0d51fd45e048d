package loadtest

import (
	"context"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// startNoop serves the do-nothing check server on a free port until the test ends.
func startNoop(t *testing.T, lean bool) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addr := freeAddr()
	errc := make(chan error, 1)
	go func() { errc <- ServeNoop(ctx, addr, freeAddr(), lean, "") }()
	t.Cleanup(func() {
		cancel()
		<-errc
	})
	waitListening(t, addr)
	return addr
}

// waitListening waits until a server listens on addr, for up to 10 s.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server on %s: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// outcomes collects what an h2Conn reports, per slot.
type outcomes struct {
	mu   sync.Mutex
	errs map[int]error
	at   map[int]time.Time
}

func (o *outcomes) done(slot int, at time.Time, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, dup := o.errs[slot]; dup {
		panic("slot reported twice")
	}
	o.errs[slot] = err
	if o.at != nil {
		o.at[slot] = at
	}
}

// h2Driver dials h2Conns read by a goroutine each (dialH2), or by an evLoop.
type h2Driver struct {
	name string
	// dial returns a connection and a wait for its calls, which returns the
	// connection's error.
	dial func(t *testing.T, addr, method string, check func([]byte) error, done func(int, time.Time, error), stamp func([]byte, int64)) (*h2Conn, func() error)
}

var h2Drivers = []h2Driver{
	{"goroutine", func(t *testing.T, addr, method string, check func([]byte) error, done func(int, time.Time, error), stamp func([]byte, int64)) (*h2Conn, func() error) {
		c, err := dialH2(addr, method, time.Minute, check, done, stamp)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.close)
		return c, c.wait
	}},
	{"loop", func(t *testing.T, addr, method string, check func([]byte) error, done func(int, time.Time, error), stamp func([]byte, int64)) (*h2Conn, func() error) {
		l, err := newEvLoop()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.close)
		c, err := l.dial(addr, method, time.Minute, check, done, stamp)
		if err != nil {
			t.Fatal(err)
		}
		return c, func() error {
			if err := l.waitIdle(); err != nil {
				return err
			}
			return c.wait()
		}
	}},
}

// TestH2Conn runs the lean client, read by a goroutine or by the event loop,
// against both do-nothing servers: grpc-go's, and the hand-written one, whose
// answers the client must take alike.
func TestH2Conn(t *testing.T) {
	for _, d := range h2Drivers {
		for _, lean := range []bool{false, true} {
			t.Run(d.name+"/"+map[bool]string{false: "grpc-go", true: "h2"}[lean], func(t *testing.T) { testH2Conn(t, d, startNoop(t, lean)) })
		}
	}
}

func testH2Conn(t *testing.T, d h2Driver, addr string) {
	check, err := newScenario("ext_authz", "miss")
	if err != nil {
		t.Fatal(err)
	}
	allowed := checkAuthzAnswer // judged alike by decoding: TestAnswerCheckers
	rls, err := newScenario("ratelimit", "hit")
	if err != nil {
		t.Fatal(err)
	}
	// Both descriptors of the scenario's requests answered OK.
	twoOK := func(raw []byte) error {
		var resp rlsv3.RateLimitResponse
		if err := proto.Unmarshal(raw, &resp); err != nil {
			return err
		}
		if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || len(resp.GetStatuses()) != 2 {
			return fmt.Errorf("answer %v, want OK for two descriptors", &resp)
		}
		for _, st := range resp.GetStatuses() {
			if st.GetCode() != rlsv3.RateLimitResponse_OK {
				return fmt.Errorf("answer %v, want OK for two descriptors", &resp)
			}
		}
		return nil
	}
	tests := []struct {
		name      string
		method    string
		check     func([]byte) error
		request   func(int64) []byte // nil: the ext_authz scenario's
		msgSize   int                // 0: the scenario's requests
		n, batch  int
		wantError string // in every outcome; empty for none
	}{
		// 3,000 requests of ~600 bytes are far past the 64 KiB windows the server
		// starts with: they pass only if its WINDOW_UPDATEs are honoured.
		{name: "check requests, batched", method: check.method, check: allowed, n: 3000, batch: 50},
		{name: "one at a time", method: check.method, check: allowed, n: 20, batch: 1},
		{name: "rate-limit requests", method: rls.method, check: twoOK, request: rls.request, n: 300, batch: 30},
		{name: "unknown method", method: "/no.Such/Method", check: allowed, n: 10, batch: 5, wantError: "grpc-status 12"},
		{name: "answer rejected by check", method: check.method, check: func([]byte) error { return errors.New("no") }, n: 10, batch: 10, wantError: "no"},
		{name: "request larger than a stream window", method: check.method, check: allowed, msgSize: 70000, n: 2, batch: 2, wantError: "exceeds the server's stream window"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := &outcomes{errs: map[int]error{}}
			// The deadline is far past the test's length: 3,000 requests sent at
			// once under the race detector on a busy machine can outlast Envoy's
			// 200 ms.
			c, wait := d.dial(t, addr, tt.method, tt.check, got.done, nil)
			for i := 0; i < tt.n; i += tt.batch {
				var reqs []h2Request
				for j := i; j < min(tt.n, i+tt.batch); j++ {
					request := check.request
					if tt.request != nil {
						request = tt.request
					}
					msg := request(int64(j))
					if tt.msgSize > 0 {
						msg = make([]byte, tt.msgSize)
					}
					reqs = append(reqs, h2Request{slot: j, msg: msg})
				}
				c.send(reqs)
			}
			if err := wait(); err != nil {
				t.Fatalf("connection failed: %v", err)
			}
			if len(got.errs) != tt.n {
				t.Fatalf("%d outcomes, want %d", len(got.errs), tt.n)
			}
			for slot, err := range got.errs {
				switch {
				case tt.wantError == "" && err != nil:
					t.Fatalf("request %d: %v", slot, err)
				case tt.wantError != "" && (err == nil || !strings.Contains(err.Error(), tt.wantError)):
					t.Fatalf("request %d: error %v, want one with %q", slot, err, tt.wantError)
				}
			}
		})
	}
}

func TestH2ConnServerGone(t *testing.T) {
	for _, d := range h2Drivers {
		t.Run(d.name, func(t *testing.T) { testH2ConnServerGone(t, d) })
	}
}

func testH2ConnServerGone(t *testing.T, d h2Driver) {
	// A server that accepts, then closes: every call fails, none hangs.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
	}()
	got := &outcomes{errs: map[int]error{}}
	c, wait := d.dial(t, l.Addr().String(), "/x/Y", func([]byte) error { return nil }, got.done, nil)
	c.send([]h2Request{{slot: 0, msg: []byte("a")}, {slot: 1, msg: []byte("b")}})
	if err := wait(); err == nil {
		t.Fatal("wait: no error from a closed connection")
	}
	c.send([]h2Request{{slot: 2, msg: []byte("c")}})
	if len(got.errs) != 3 {
		t.Fatalf("%d outcomes, want 3", len(got.errs))
	}
	for slot, err := range got.errs {
		if err == nil {
			t.Fatalf("request %d succeeded against a closed connection", slot)
		}
	}
}

func TestPace(t *testing.T) {
	const total = 500
	r := &run{start: time.Now(), interval: 100 * time.Microsecond,
		lat: make([]time.Duration, total), lag: make([]time.Duration, total)}
	next := 0
	pause, unlock := precisePause()
	defer unlock()
	r.pace(total, func(from, to int) {
		if from != next || to <= from {
			t.Fatalf("released [%d, %d) after %d", from, to, next)
		}
		if time.Now().Before(r.due(to - 1)) {
			t.Fatalf("request %d released before it was due", to-1)
		}
		next = to
	}, pause)
	if next != total {
		t.Fatalf("released %d of %d", next, total)
	}
}

// TestH2ConnStamps: a connection that stamps requests sends each its own user, in
// the frame it writes, without touching the shared templates. The server echoes
// every request as its answer, so the check sees what went on the wire.
func TestH2ConnStamps(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echo := grpc.NewServer(grpc.ForceServerCodecV2(RawCodec{}), grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		var msg RawBytes
		if err := stream.RecvMsg(&msg); err != nil {
			return err
		}
		return stream.SendMsg(msg)
	}))
	go func() { _ = echo.Serve(l) }()
	defer echo.Stop()

	sc, err := newScenario("ext_authz", "miss")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	users := map[string]bool{}
	check := func(raw []byte) error {
		var req authv3.CheckRequest
		if err := proto.Unmarshal(raw, &req); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		users[req.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-user"]] = true
		return nil
	}
	got := &outcomes{errs: map[int]error{}}
	c, err := dialH2(l.Addr().String(), sc.method, time.Minute, check, got.done, sc.stamp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	const n, first = 600, 1 << 20
	before := string(sc.template(first))
	for i := 0; i < n; i += 50 {
		var reqs []h2Request
		for j := i; j < i+50; j++ {
			reqs = append(reqs, h2Request{slot: j, msg: sc.template(first + int64(j)), seq: first + int64(j)})
		}
		c.send(reqs)
	}
	if err := c.wait(); err != nil {
		t.Fatal(err)
	}
	for slot, err := range got.errs {
		if err != nil {
			t.Fatalf("request %d: %v", slot, err)
		}
	}
	for j := range n {
		if u := fmt.Sprintf("u%012d", first+j); !users[u] {
			t.Fatalf("no request named user %s (%d users seen)", u, len(users))
		}
	}
	if string(sc.template(first)) != before {
		t.Error("a shared template was written to")
	}
}

// dialLoop connects an event loop's connection to addr for the ext_authz
// scenario's requests, with answers judged as checks and their outcomes and
// times collected. The loop closes with the test.
func dialLoop(t *testing.T, addr string) (*evLoop, *h2Conn, *scenario, *outcomes) {
	t.Helper()
	sc, err := newScenario("ext_authz", "hit")
	if err != nil {
		t.Fatal(err)
	}
	l, err := newEvLoop()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.close)
	got := &outcomes{errs: map[int]error{}, at: map[int]time.Time{}}
	c, err := l.dial(addr, sc.method, time.Minute, checkAuthzAnswer, got.done, nil)
	if err != nil {
		t.Fatal(err)
	}
	return l, c, sc, got
}

// TestLoopTimesAnswersByArrival: the event loop times an answer by when it
// reached the socket, not by when the loop got round to reading it. Timed by the
// read, an answer read 100 ms late would take 100 ms.
func TestLoopTimesAnswersByArrival(t *testing.T) {
	l, c, sc, got := dialLoop(t, startNoop(t, true))
	// The kernel turns receive timestamps on some time after the first socket
	// asks for them (a deferred job): until then reads are timed when read, and
	// counted so.
	slot := 0
	start := time.Now()
	for {
		before := l.unstamped
		c.send([]h2Request{{slot: slot, msg: sc.request(int64(slot))}})
		slot++
		if err := l.waitIdle(); err != nil {
			t.Fatal(err)
		}
		if l.unstamped == before {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("no read stamped by the kernel in %v (%d reads timed when read)", time.Since(start), l.unstamped)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the kernel stamped reads after %v", time.Since(start))
	const late = 100 * time.Millisecond
	sent := time.Now()
	c.send([]h2Request{{slot: slot, msg: sc.request(int64(slot))}})
	time.Sleep(late) // the answer waits in the socket
	read := time.Now()
	if err := l.waitIdle(); err != nil {
		t.Fatal(err)
	}
	if err := got.errs[slot]; err != nil {
		t.Fatal(err)
	}
	at := got.at[slot]
	if at.Before(sent) || !at.Before(read) {
		t.Fatalf("answer timed %v after sending, read %v after: want a time in between", at.Sub(sent), read.Sub(sent))
	}
	if took := at.Sub(sent); took > late/2 {
		t.Errorf("answer timed %v after sending: timed by the read, not its arrival", took)
	}
}

// TestLoopFailureEndsWaits: when the loop itself fails (its epoll set gone),
// every connection fails with it, so that no wait outlasts it.
func TestLoopFailureEndsWaits(t *testing.T) {
	l, c, sc, got := dialLoop(t, startNoop(t, true))
	unix.Close(l.epfd)
	c.send([]h2Request{{slot: 0, msg: sc.request(0)}})
	done := make(chan error, 1)
	go func() { done <- l.waitIdle() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("waitIdle: no error from a failed loop")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waitIdle still waits on a failed loop")
	}
	if err := c.wait(); err == nil || got.errs[0] == nil {
		t.Errorf("connection error %v, request outcome %v: want both failed", err, got.errs[0])
	}
}

// TestLoopReadsSplitFrames: the loop client assembles frames that arrive a few
// bytes at a time, across reads and polls.
func TestLoopReadsSplitFrames(t *testing.T) {
	server := startNoop(t, true)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() { // a proxy that passes the server's bytes on three at a time
		client, err := l.Accept()
		if err != nil {
			return
		}
		defer client.Close()
		up, err := net.Dial("tcp", server)
		if err != nil {
			return
		}
		defer up.Close()
		go func() { _, _ = io.Copy(up, client) }()
		buf := make([]byte, 4096)
		for {
			n, err := up.Read(buf)
			for i := 0; i < n; i += 3 {
				if _, werr := client.Write(buf[i:min(i+3, n)]); werr != nil {
					return
				}
				time.Sleep(50 * time.Microsecond)
			}
			if err != nil {
				return
			}
		}
	}()
	loop, c, sc, got := dialLoop(t, l.Addr().String())
	const n = 20
	for i := range n {
		c.send([]h2Request{{slot: i, msg: sc.request(int64(i))}})
		loop.poll(time.Millisecond) // reads what came so far, often part of a frame
	}
	if err := loop.waitIdle(); err != nil {
		t.Fatal(err)
	}
	if len(got.errs) != n {
		t.Fatalf("%d outcomes, want %d", len(got.errs), n)
	}
	for slot, err := range got.errs {
		if err != nil {
			t.Errorf("request %d: %v", slot, err)
		}
	}
}
