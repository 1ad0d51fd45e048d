package loadtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
	"unsafe"

	"golang.org/x/net/http2"
	"golang.org/x/sys/unix"
)

// evLoop drives h2 client connections and the pacer from one OS thread, as
// Envoy's workers and wrk2 do, and wakes only when a request is due. Answers are
// timed by the kernel (SO_TIMESTAMPNS: when their bytes reached the socket) and
// read when the pacer wakes next, so that a request costs the generator one
// wake-up, not two. A wake-up is the dearest thing this VM does (a context
// switch costs ~15 µs of CPU here), and the generator's CPU is the server's to
// lose: both share two cores. An answer's time is thus when a client on a
// machine of its own would have had it, without this one's delay in reading it.
//
// An evLoop is not safe for concurrent use: one goroutine paces, sends, polls
// and closes.
type evLoop struct {
	epfd   int
	conns  map[int32]*loopConn // by socket
	events [64]unix.EpollEvent
	err    error // the first failure of the loop itself
}

// loopConn is one h2 connection of a loop: a non-blocking socket the loop reads,
// and the frames read from it but not yet handled.
type loopConn struct {
	fd   int
	oob  [64]byte // a read's control message: its receive time
	h2   *h2Conn
	buf  []byte // read, not yet handled: buf[off:]
	off  int
	fr   *http2.Framer // reads whole frames out of buf
	dead bool
}

func newEvLoop() (*evLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	return &evLoop{epfd: epfd, conns: map[int32]*loopConn{}}, nil
}

// dial connects an h2 connection to addr (see dialH2 for the rest), driven by l.
func (l *evLoop) dial(addr, path string, timeout time.Duration, check func([]byte) error, done func(slot int, at time.Time, err error), stamp func(msg []byte, seq int64)) (*h2Conn, error) {
	fd, err := dialNonblocking(addr)
	if err != nil {
		return nil, err
	}
	lc := &loopConn{fd: fd, buf: make([]byte, 0, 64<<10)}
	lc.fr = http2.NewFramer(nil, lc)
	lc.fr.SetReuseFrames()
	h2, err := newH2Conn(lc, addr, path, timeout, check, done, stamp)
	if err != nil {
		return nil, err
	}
	lc.h2 = h2
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		h2.close()
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	l.conns[int32(fd)] = lc
	return h2, nil
}

// dialNonblocking returns a connected, non-blocking TCP socket to addr.
func dialNonblocking(addr string) (int, error) {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return -1, fmt.Errorf("resolve %s: %w", addr, err)
	}
	var sa unix.Sockaddr
	family := unix.AF_INET
	if ip4 := ta.IP.To4(); ip4 != nil {
		sa = &unix.SockaddrInet4{Port: ta.Port, Addr: [4]byte(ip4)}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: ta.Port, Addr: [16]byte(ta.IP.To16())}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	fail := func(what string, err error) (int, error) {
		unix.Close(fd)
		return -1, fmt.Errorf("dial %s: %s: %w", addr, what, err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return fail("TCP_NODELAY", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		return fail("SO_TIMESTAMPNS", err)
	}
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fail("connect", err)
	}
	if err := waitWritable(fd, 5*time.Second); err != nil {
		return fail("connect", err)
	}
	if soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soErr != 0 {
		return fail("connect", errors.Join(err, unix.Errno(soErr)))
	}
	return fd, nil
}

// waitWritable waits until fd can take more bytes, or d passes.
func waitWritable(fd int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("not writable after %v", d)
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
	}
}

// Write writes all of p. A full socket buffer (the server not reading) stalls
// the loop until it drains, for 10 s at most: the server reads while it writes,
// so this cannot deadlock with answers waiting for us.
func (lc *loopConn) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Write(lc.fd, p[n:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			if err := waitWritable(lc.fd, 10*time.Second); err != nil {
				return n, fmt.Errorf("write: %w", err)
			}
			continue
		case err != nil:
			return n, fmt.Errorf("write: %w", err)
		}
		n += m
	}
	return n, nil
}

// Read hands the framer bytes already read; the loop calls the framer only when
// buf holds a whole frame, so it never runs dry.
func (lc *loopConn) Read(p []byte) (int, error) {
	if lc.off == len(lc.buf) {
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(p, lc.buf[lc.off:])
	lc.off += n
	return n, nil
}

// Close closes the socket, which also takes it out of the loop's epoll set. The
// h2Conn calls it when it fails or is closed.
func (lc *loopConn) Close() error {
	if lc.dead {
		return nil
	}
	lc.dead = true
	return unix.Close(lc.fd)
}

// wholeFrame reports whether buf holds a whole frame at off.
func (lc *loopConn) wholeFrame() bool {
	rest := lc.buf[lc.off:]
	if len(rest) < 9 {
		return false
	}
	size := int(rest[0])<<16 | int(binary.BigEndian.Uint16(rest[1:3]))
	return len(rest) >= 9+size
}

// onReadable reads what the socket holds and handles every whole frame in it.
func (lc *loopConn) onReadable() {
	if lc.off > 0 {
		lc.buf = lc.buf[:copy(lc.buf, lc.buf[lc.off:])]
		lc.off = 0
	}
	if len(lc.buf) == cap(lc.buf) {
		// A frame larger than the buffer (the server may send up to 16 KiB
		// frames, or more after SETTINGS): grow.
		lc.buf = append(lc.buf, make([]byte, cap(lc.buf))...)[:len(lc.buf)]
	}
	n, oobn, _, _, err := unix.Recvmsg(lc.fd, lc.buf[len(lc.buf):cap(lc.buf)], lc.oob[:], 0)
	switch {
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
		return
	case err != nil:
		lc.fail(fmt.Errorf("read: %w", err))
		return
	case n == 0:
		lc.fail(fmt.Errorf("read: %w", io.EOF))
		return
	}
	lc.buf = lc.buf[:len(lc.buf)+n]
	// The time is the last segment's that this read took: answers that arrived
	// earlier in it are timed a little late, never early.
	at, ok := receiveTime(lc.oob[:oobn])
	if !ok {
		at = time.Now()
	}
	for !lc.dead && lc.wholeFrame() {
		f, err := lc.fr.ReadFrame()
		if err != nil {
			lc.fail(fmt.Errorf("read: %w", err))
			return
		}
		if lc.h2.onFrame(f, at) != nil {
			return
		}
	}
}

// receiveTime finds the SCM_TIMESTAMPNS control message in oob.
func receiveTime(oob []byte) (time.Time, bool) {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		size := int(h.Len)
		if size < unix.SizeofCmsghdr || size > len(oob) {
			return time.Time{}, false
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && size >= unix.CmsgLen(int(unsafe.Sizeof(unix.Timespec{}))) {
			ts := (*unix.Timespec)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
			return time.Unix(ts.Unix()), true
		}
		oob = oob[min(unix.CmsgSpace(size-unix.CmsgLen(0)), len(oob)):]
	}
	return time.Time{}, false
}

func (lc *loopConn) fail(err error) {
	lc.h2.mu.Lock()
	lc.h2.failLocked(err)
	lc.h2.mu.Unlock()
}

// poll waits up to d for answers and handles those that arrive (with d zero,
// those already there). Level-triggered: a socket read only in part is reported
// again.
func (l *evLoop) poll(d time.Duration) {
	ts := unix.NsecToTimespec(max(d, 0).Nanoseconds())
	call := unix.Syscall6
	if d <= 0 {
		call = unix.RawSyscall6 // never blocks: see precisePause
	}
	n, _, errno := call(unix.SYS_EPOLL_PWAIT2, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
	if errno != 0 {
		if errno != unix.EINTR && l.err == nil {
			l.err = fmt.Errorf("epoll_pwait2: %w", errno)
		}
		return
	}
	for _, ev := range l.events[:n] {
		if lc := l.conns[ev.Fd]; lc != nil && !lc.dead {
			lc.onReadable()
		}
	}
	for fd, lc := range l.conns {
		if lc.dead {
			delete(l.conns, fd)
		}
	}
}

// idle reports whether no connection of l has a call open or queued.
func (l *evLoop) idle() bool {
	for _, lc := range l.conns {
		if !lc.h2.idleNow() {
			return false
		}
	}
	return true
}

// waitIdle polls until no call is open or queued.
func (l *evLoop) waitIdle() {
	for !l.idle() && l.err == nil {
		l.poll(10 * time.Millisecond)
	}
}

// pacer returns the loop's pause for run.pace: it sleeps until the next request
// is due (see precisePause), deaf to answers, then handles those that came
// meanwhile.
func (l *evLoop) pacer() (pause func(time.Duration), release func()) {
	sleep, release := precisePause()
	return func(d time.Duration) {
		sleep(d)
		l.poll(0)
	}, release
}

// close closes every connection and the loop.
func (l *evLoop) close() {
	for _, lc := range l.conns {
		lc.h2.close()
	}
	clear(l.conns)
	unix.Close(l.epfd)
}
