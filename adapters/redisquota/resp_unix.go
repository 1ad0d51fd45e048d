//go:build unix

package redisquota

import (
	"crypto/tls"
	"syscall"
	"time"
)

// alive reports whether the server has not closed c while it idled, nor sent
// it anything unasked: a look at the socket, without waiting. A connection
// whose socket it cannot reach is taken as alive.
func (c *respConn) alive() bool {
	if c.in.Buffered() > 0 {
		return false
	}
	nc := c.nc
	if tc, ok := nc.(*tls.Conn); ok {
		// Beneath TLS's records: nothing is owed to an idle connection, so any
		// byte there (a close_notify alert, or anything else) means it is not
		// one to send on. The session tickets TLS 1.3 sends after the handshake
		// were read with the first answer, before the connection could idle.
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	// The last pipeline's deadline has passed: the poller would refuse the read
	// before the peek ran.
	if err := nc.SetReadDeadline(time.Time{}); err != nil {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	var buf [1]byte
	err = raw.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK
		return true
	})
	return err == nil && alive
}
