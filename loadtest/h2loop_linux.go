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

// defaultClient is the load client used unless one is named.
const defaultClient = "loop"

// evLoop drives h2 client connections and the pacer from one OS thread, as
// Envoy's workers and wrk2 do, and wakes only when a request is due. Answers are
// timed by the kernel (SO_TIMESTAMPNS: when their bytes reached the socket) and
// read when the pacer wakes next, so that a request costs the generator one
// wake-up, not two. A wake-up is the dearest thing this VM does (a context
// switch costs ~15 µs of CPU here), and the generator's CPU is the server's to
// lose: both share two cores. An answer's time is thus a lower bound on what a
// client sees: it leaves out the client's own delay in waking to read it, which
// a client on a machine of its own pays on its own cores, but a client beside
// the server (a sidecar) pays on the same ones. The runs report both (P99Read).
//
// An evLoop is not safe for concurrent use: one goroutine paces, sends, polls
// and closes.
type evLoop struct {
	epfd   int
	conns  map[int32]*loopConn // by socket
	events [64]unix.EpollEvent
	err    error // the first failure of the loop itself, which fails every connection
	// unstamped counts the reads the kernel gave no receive time (it turns
	// timestamps on a moment after the first socket asks), timed when read.
	unstamped int
	lastPoll  time.Time
}

// loopConn is one h2 connection of a loop: a non-blocking socket the loop reads,
// and the frames read from it but not yet handled.
type loopConn struct {
	loop *evLoop
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
	lc := &loopConn{loop: l, fd: fd, buf: make([]byte, 0, 64<<10)}
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

// dialNonblocking returns a connected, non-blocking TCP socket to addr that the
// Go runtime's poller does not watch: net.Dial connects, and the loop keeps a
// duplicate of its socket (non-blocking, as Go made it) after closing Go's.
func dialNonblocking(addr string) (int, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return -1, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer nc.Close()
	rc, err := nc.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("dial %s: %w", addr, err)
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(s uintptr) { fd, dupErr = unix.Dup(int(s)) }); err != nil || dupErr != nil {
		return -1, fmt.Errorf("dial %s: dup: %w", addr, errors.Join(err, dupErr))
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("dial %s: %w", addr, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("dial %s: SO_TIMESTAMPNS: %w", addr, err)
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
// the loop, which then reads nothing either, until it drains, for 10 s at most
// per wait: a server that stops reading until its own answers are read fails
// the connection then.
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
	at := lc.loop.arrival(lc.oob[:oobn])
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

// arrival returns when the bytes of a read reached the socket, from its control
// message oob, as a time with a monotonic reading (the kernel's is wall-clock
// time, which a clock step would move): now less how long ago the kernel says.
// A read the kernel did not stamp, or stamped in the future or over a second
// ago (a clock step between the stamp and now), is timed now: later, never
// earlier, than it arrived.
func (l *evLoop) arrival(oob []byte) time.Time {
	now := time.Now()
	at, ok := receiveTime(oob)
	if !ok {
		l.unstamped++
		return now
	}
	if ago := now.Sub(at); ago >= 0 && ago <= time.Second {
		return now.Add(-ago)
	}
	return now
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

// poll waits up to d (rounded up to whole milliseconds) for answers and handles
// those that arrive; with d zero, those already there. Level-triggered: a
// socket read only in part is reported again. If the loop itself fails, every
// connection fails with it, so that no wait outlasts it.
func (l *evLoop) poll(d time.Duration) {
	l.lastPoll = time.Now()
	ms := int((max(d, 0) + time.Millisecond - 1) / time.Millisecond)
	var n int
	var err error
	if ms == 0 {
		// Never blocks, so the runtime need not know (see precisePause).
		r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), 0, 0, 0)
		n = int(r)
		if errno != 0 {
			err = errno
		}
	} else {
		n, err = unix.EpollWait(l.epfd, l.events[:], ms)
	}
	if err != nil {
		if !errors.Is(err, unix.EINTR) {
			l.fail(fmt.Errorf("epoll_pwait: %w", err))
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

// fail ends the loop and every connection with err.
func (l *evLoop) fail(err error) {
	if l.err == nil {
		l.err = err
	}
	for fd, lc := range l.conns {
		lc.fail(err)
		delete(l.conns, fd)
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

// waitIdle polls until no call is open or queued, and returns the loop's error.
func (l *evLoop) waitIdle() error {
	for !l.idle() && l.err == nil {
		l.poll(10 * time.Millisecond)
	}
	return l.err
}

// pollIfBehind handles what arrived if the loop has not polled for a
// millisecond: a pacer that is behind releases without pausing, and so without
// polling, and the server's WINDOW_UPDATEs and SETTINGS would wait for it.
func (l *evLoop) pollIfBehind() {
	if time.Since(l.lastPoll) > time.Millisecond {
		l.poll(0)
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
