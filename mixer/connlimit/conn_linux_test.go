package connlimit

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
)

// TestUserTimeout: grpc-go sets TCP_USER_TIMEOUT (its keepalive timeout) only on
// a *net.TCPConn, which the bounded listener's connections are not, so the
// listener sets it.
func TestUserTimeout(t *testing.T) {
	l, cc := listen(t, Options{Max: 2, UserTimeout: 7 * time.Second})
	defer cc.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*conn).Conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	if err := rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT) }); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if got != 7000 {
		t.Errorf("TCP_USER_TIMEOUT %d ms, want 7000", got)
	}
}

// TestReadOnReady: grpc-go reads a connection that offers ReadOnReady without a
// buffer of its own for life; the bounded listener's connections offer it, return
// what arrives once it arrives, and report the peer's close as io.EOF.
func TestReadOnReady(t *testing.T) {
	var _ interface {
		ReadOnReady(int, mem.BufferPool) (*[]byte, int, error)
	} = (*conn)(nil)

	l, cc := listen(t, Options{Max: 2})
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lc := c.(*conn)
	pool := mem.DefaultBufferPool()

	type read struct {
		b   *[]byte
		n   int
		err error
	}
	got := make(chan read, 1)
	go func() {
		b, n, err := lc.ReadOnReady(32<<10, pool)
		got <- read{b, n, err}
	}()
	time.Sleep(50 * time.Millisecond)
	if _, err := cc.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil || string((*r.b)[:r.n]) != "hello" {
		t.Fatalf("ReadOnReady = %q, %v; want hello", (*r.b)[:r.n], r.err)
	}
	pool.Put(r.b)

	cc.Close()
	b, n, err := lc.ReadOnReady(32<<10, pool)
	if err != io.EOF || b != nil || n != 0 {
		t.Fatalf("after the peer closed: %v, %d, %v; want nil, 0, EOF", b, n, err)
	}
}

// TestIdleGRPCConnectionsPinNoReadBuffer: grpc-go takes up the connections'
// ReadOnReady, so that an idle connection holds no read buffer of its own.
// Without it each holds a 32 KiB bufio.Reader (about 38 KiB of heap per
// connection against 7, measured).
func TestIdleGRPCConnectionsPinNoReadBuffer(t *testing.T) {
	const conns = 200
	l, first := listen(t, Options{Max: conns + 1})
	first.Close() // never a gRPC client: grpc-go's Stop would wait for its preface
	gs := grpc.NewServer()
	go func() { _ = gs.Serve(l) }()
	defer gs.Stop()

	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for range conns {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		// The client preface and an empty SETTINGS frame; the server's own
		// SETTINGS back mean its transport, and its reader, exist.
		if _, err := io.WriteString(c, http2.ClientPreface+"\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 9)); err != nil {
			t.Fatal(err)
		}
	}
	perConn := float64(heap()-before) / conns / 1024
	if perConn > 20 {
		t.Errorf("%.1f KiB of heap per idle connection, want under 20: a read buffer is pinned", perConn)
	}
}
