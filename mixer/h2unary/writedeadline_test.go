package h2unary

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// TestArmWrite checks that the write deadline moves only once half the write
// timeout has passed, and that a client that stops reading still fails a write
// within the timeout: a write is never bounded by less than half of it nor more
// than all of it.
func TestArmWrite(t *testing.T) {
	const timeout = 200 * time.Millisecond
	server, client := net.Pipe()
	defer client.Close()
	defer server.Close()
	c := &conn{nc: server, srv: &Server{writeTimeout: timeout}}

	start := time.Now()
	c.armWrite()
	first := c.writeDeadline
	if d := first.Sub(start); d < timeout || d > timeout+50*time.Millisecond {
		t.Fatalf("first deadline %v after the call, want %v", d, timeout)
	}
	c.armWrite()
	if !c.writeDeadline.Equal(first) {
		t.Errorf("deadline moved %v with most of the timeout left", c.writeDeadline.Sub(first))
	}
	time.Sleep(timeout/2 + 10*time.Millisecond)
	c.armWrite()
	if !c.writeDeadline.After(first) {
		t.Error("deadline not moved once half the timeout had passed")
	}

	// Nobody reads client: the write must end by the deadline just set.
	armed := time.Now()
	_, err := server.Write(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write to a client that does not read: %v, want a deadline error", err)
	}
	if took := time.Since(armed); took < timeout/2 || took > timeout+100*time.Millisecond {
		t.Errorf("the stalled write failed after %v, want between %v and %v", took, timeout/2, timeout)
	}
}
