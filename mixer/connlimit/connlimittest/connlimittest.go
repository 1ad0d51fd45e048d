// Package connlimittest checks, for tests, that a listener bounded by connlimit
// closes a connection past its bound as soon as it accepts it.
package connlimittest

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// ExpectClosed dials addr and fails the test unless the server closes the
// connection, unread and unanswered, within 10 s.
func ExpectClosed(t testing.TB, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read on a connection past the bound: %v, want EOF", err)
	}
}
