package connlimit

import (
	"io"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/mem"
)

// setUserTimeout bounds how long data sent on c may stay unacknowledged before
// the kernel closes c. Best effort: the keepalive pings bound it too.
func setUserTimeout(c *net.TCPConn, d time.Duration) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d/time.Millisecond))
	})
}

// readyReader reads a TCP connection only once data has arrived, into a buffer
// taken from a pool at that moment. grpc-go reads a bare *net.TCPConn this way,
// so that an idle connection pins no read buffer (about 32 KiB); a connection
// it does not know, such as this package's, gets a bufio.Reader of its own for life
// unless it offers ReadOnReady, grpc-go's optional interface for this.
type readyReader struct {
	raw syscall.RawConn
	// What one ReadOnReady asks and gets, kept here so that the callback
	// (made once) allocates nothing.
	size int
	pool mem.BufferPool
	buf  *[]byte
	n    int
	err  error
	read func(fd uintptr) bool
}

func newReadyReader(c net.Conn) *readyReader {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &readyReader{raw: raw}
	r.read = func(fd uintptr) bool {
		b := r.pool.Get(r.size)
		for {
			r.n, r.err = syscall.Read(int(fd), *b)
			if r.err != syscall.EINTR {
				break
			}
		}
		if r.err == syscall.EAGAIN {
			r.pool.Put(b)
			return false // wait until the connection is readable
		}
		if r.err != nil || r.n <= 0 {
			r.pool.Put(b)
			r.n = 0
			return true
		}
		r.buf = b
		return true
	}
	return r
}

// ReadOnReady implements grpc-go's readyreader.Reader: it waits until c is
// readable, then reads up to size bytes into a buffer from pool, which the
// caller returns to it.
func (c *conn) ReadOnReady(size int, pool mem.BufferPool) (*[]byte, int, error) {
	r := c.ready
	if r == nil {
		// Not a TCP connection (never from net.Listen("tcp")): read it plainly.
		b := pool.Get(size)
		n, err := c.Conn.Read(*b)
		if n == 0 {
			pool.Put(b)
			return nil, 0, err
		}
		return b, n, err
	}
	r.size, r.pool = size, pool
	err := r.raw.Read(r.read)
	b, n, rerr := r.buf, r.n, r.err
	r.buf, r.pool, r.err = nil, nil, nil
	switch {
	case err != nil:
		if b != nil {
			pool.Put(b)
		}
		return nil, 0, err
	case rerr != nil:
		return nil, 0, rerr
	case b == nil:
		return nil, 0, io.EOF // read returned 0: the peer closed its side
	}
	return b, n, nil
}
