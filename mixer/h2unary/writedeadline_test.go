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
// by the deadline set: a write is never bounded by less than half the timeout
// nor more than all of it.
func TestArmWrite(t *testing.T) {
	const timeout = 200 * time.Millisecond
	server, client := net.Pipe()
	defer client.Close()
	defer server.Close()
	c := &conn{nc: server, srv: &Server{writeTimeout: timeout}}

	start := time.Now()
	for _, step := range []struct {
		after time.Duration // since start
		want  time.Duration // deadline since start
	}{
		{0, timeout},                         // none yet: set
		{timeout / 4, timeout},               // most of it left: kept
		{timeout / 2, timeout},               // exactly half left: kept
		{timeout/2 + 1, timeout*3/2 + 1},     // less than half left: moved
		{timeout, timeout*3/2 + 1},           // half of the new one left: kept
		{3 * timeout, 3*timeout + timeout},   // long past: moved
		{3*timeout + 1, 3*timeout + timeout}, // just moved: kept
	} {
		c.armWrite(start.Add(step.after))
		if got := c.writeDeadline.Sub(start); got != step.want {
			t.Errorf("at %v: deadline at %v, want %v", step.after, got, step.want)
		}
	}

	// Nobody reads client: the write must end by the deadline set now.
	c.writeDeadline = time.Time{}
	armed := time.Now()
	c.armWrite(armed)
	_, err := server.Write(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write to a client that does not read: %v, want a deadline error", err)
	}
	if took := time.Since(armed); took < timeout {
		t.Errorf("the stalled write failed after %v, before its deadline (%v)", took, timeout)
	}
}
