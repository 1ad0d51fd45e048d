//go:build !linux

package connlimit

import (
	"net"
	"time"
)

// setUserTimeout does nothing where TCP_USER_TIMEOUT is not known; the keepalive
// pings bound a dead peer's connection there.
func setUserTimeout(*net.TCPConn, time.Duration) {}

// readyReader is Linux's only: elsewhere grpc-go gives each connection a
// bufio.Reader.
type readyReader struct{}

func newReadyReader(net.Conn) *readyReader { return nil }
