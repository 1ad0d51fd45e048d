package redisquota

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicemesh/sluice/templates/quota"
)

func readerConn(s string) *respConn {
	return &respConn{in: bufio.NewReaderSize(strings.NewReader(s), 64)}
}

// TestReadReply: script answers of every shape are read into replies, Redis's
// errors and answers of an unexpected shape as the reply's error with the
// connection in step (the next reply reads right), and anything that is not RESP
// as the connection's error.
func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string // the reply, as describeReply prints it
		broken   bool   // the connection is out of step
	}{
		{"integer", ":42\r\n", "42", false},
		{"negative integer", ":-1\r\n", "-1", false},
		{"array of integers", "*4\r\n:1\r\n:2\r\n:3\r\n:4\r\n", "[1 2 3 4]", false},
		{"empty array", "*0\r\n", "[]", false},
		{"nil array", "*-1\r\n", "[]", false},
		{"redis error", "-NOSCRIPT No matching script\r\n", "error NOSCRIPT No matching script", false},
		{"array too long", "*5\r\n:1\r\n:2\r\n:3\r\n:4\r\n:5\r\n", "error an array of 5 values: unexpected answer", false},
		{"array holding a string", "*2\r\n:1\r\n$1\r\nx\r\n", "error a string of 1 bytes: unexpected answer", false},
		{"array holding an error", "*2\r\n-ERR x\r\n:1\r\n", "error ERR x", false},
		{"nested array", "*1\r\n*1\r\n:1\r\n", "", true},
		{"error longer than the buffer", "-ERR " + strings.Repeat("x", 5000) + "\r\n", "error ERR " + strings.Repeat("x", 59), false},
		{"bulk string", "$3\r\nabc\r\n", "error a string of 3 bytes: unexpected answer", false},
		{"nil bulk string", "$-1\r\n", "error a string of -1 bytes: unexpected answer", false},
		{"status", "+OK\r\n", `error status "OK": unexpected answer`, false},
		{"not RESP", "hello\r\n", "", true},
		{"no CR", ":1\n", "", true},
		{"bad integer", ":x\r\n", "", true},
		{"bad array length", "*-2\r\n", "", true},
		{"cut short", ":1", "", true},
		{"line too long", ":" + strings.Repeat("1", 100) + "\r\n", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := readerConn(tc.in + ":7\r\n")
			var r reply
			err := c.readReply(&r)
			if tc.broken {
				if err == nil {
					t.Fatalf("read %s, want the connection out of step", describeReply(&r))
				}
				return
			}
			if err != nil {
				t.Fatalf("connection error %v", err)
			}
			if got := describeReply(&r); got != tc.want {
				t.Errorf("reply %s, want %s", got, tc.want)
			}
			if err := c.readReply(&r); err != nil || describeReply(&r) != "7" {
				t.Errorf("the next reply: %s, %v; want 7: out of step", describeReply(&r), err)
			}
		})
	}
}

func describeReply(r *reply) string {
	switch {
	case r.err != nil:
		return "error " + r.err.Error()
	case r.array:
		return fmt.Sprint(r.ints[:r.n])
	}
	return fmt.Sprint(r.ints[0])
}

// TestAppendCall: a script call is written as RESP's array of bulk strings:
// EVALSHA and the digest (or EVAL and the source), the number of keys, the keys
// and the arguments.
func TestAppendCall(t *testing.T) {
	h := &Handler{fixed: newScript(fixedWindowScript), sliding: newScript(slidingWindowScript), bucket: newScript(tokenBucketScript)}
	var o op
	limit := quota.Limit{Requests: 10, Window: time.Second, Algorithm: quota.SlidingWindow}
	if err := h.plan(&o, &quota.Request{Key: "k", Limit: limit, Hits: 2}, 5_000_000); err != nil {
		t.Fatal(err)
	}
	got := string(o.appendCall(nil, false))
	want := "*11\r\n$7\r\nEVALSHA\r\n$40\r\n" + h.sliding.digest + "\r\n$1\r\n2\r\n" +
		bulk(o.keys[0]) + bulk(o.keys[1]) + bulk("5000000") + bulk("1000000") + bulk("10") + bulk("2") +
		bulk(fmt.Sprint(o.nums[4])) + bulk(fmt.Sprint(o.nums[5]))
	if got != want {
		t.Errorf("EVALSHA call\n%q\nwant\n%q", got, want)
	}
	eval := string(o.appendCall(nil, true))
	if !strings.HasPrefix(eval, "*11\r\n$4\r\nEVAL\r\n"+bulk(slidingWindowScript)+"$1\r\n2\r\n") {
		t.Errorf("EVAL call starts %q", eval[:min(len(eval), 80)])
	}
	// Redis reads the command back as the same arguments.
	args, err := readCommand(bufio.NewReader(strings.NewReader(got)))
	if err != nil || len(args) != 11 || args[3] != o.keys[0] {
		t.Errorf("read back as %q, %v", args, err)
	}
}

func bulk(s string) string { return fmt.Sprintf("$%d\r\n%s\r\n", len(s), s) }

// TestExecFailures: a pipeline whose answers stop short (the server closes the
// connection, or never answers before the deadline) gives every call it did not
// read an answer for the connection's error, timeouts as timeouts.
func TestExecFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		answers string
		close   bool
		timeout bool
	}{
		{"closed after one answer", ":1\r\n", true, false},
		{"silent after one answer", ":1\r\n", false, true},
		{"closed mid-answer", ":1\r\n*3\r\n:1\r\n", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				nc, err := l.Accept()
				if err != nil {
					return
				}
				defer nc.Close()
				r := bufio.NewReader(nc)
				for range 3 {
					if _, err := readCommand(r); err != nil {
						return
					}
				}
				_, _ = io.WriteString(nc, tc.answers)
				if !tc.close {
					time.Sleep(time.Second)
				}
			}()
			nc, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c := &respConn{nc: nc, in: bufio.NewReader(nc)}
			defer nc.Close()
			j := jobOf("a", "b", "c")
			for i := range j.ops {
				o := &j.ops[i]
				o.script = newScript(fixedWindowScript)
				o.command()
				o.arg(1)
			}
			calls := []*op{&j.ops[0], &j.ops[1], &j.ops[2]}
			replies := make([]reply, 3)
			err = c.exec(time.Now().Add(100*time.Millisecond), calls, false, replies)
			if err == nil {
				t.Fatal("no error from a pipeline cut short")
			}
			if replies[0].err != nil || replies[0].ints[0] != 1 {
				t.Errorf("the answered call: %s", describeReply(&replies[0]))
			}
			var ne net.Error
			for _, r := range replies[1:] {
				if r.err == nil {
					t.Errorf("an unanswered call has no error: %s", describeReply(&r))
				} else if isTimeout := errors.As(r.err, &ne) && ne.Timeout(); isTimeout != tc.timeout {
					t.Errorf("error %v: timeout %v, want %v", r.err, isTimeout, tc.timeout)
				}
			}
		})
	}
}

// TestAlive: an idle connection is alive until the server closes it or sends it
// something unasked.
func TestAlive(t *testing.T) {
	for _, tc := range []struct {
		name string
		do   func(net.Conn)
		want bool
	}{
		{"idle", func(net.Conn) {}, true},
		{"closed by the server", func(nc net.Conn) { nc.Close() }, false},
		{"sent something unasked", func(nc net.Conn) { _, _ = io.WriteString(nc, "-ERR idle\r\n") }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			served := make(chan net.Conn, 1)
			go func() {
				nc, err := l.Accept()
				if err == nil {
					served <- nc
				}
			}()
			nc, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			srv := <-served
			defer srv.Close()
			tc.do(srv)
			c := &respConn{nc: nc, in: bufio.NewReader(nc)}
			// As after a pipeline: its deadline has passed since.
			if err := nc.SetDeadline(time.Now().Add(time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
			// A close or a write takes a moment to reach the client's socket.
			deadline := time.Now().Add(2 * time.Second)
			for c.alive() != tc.want && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if got := c.alive(); got != tc.want {
				t.Errorf("alive %v, want %v", got, tc.want)
			}
		})
	}
}

// TestDialBackoff: a failed set-up (a wrong password here) holds back the next
// dials for dialBackoff, which fail at once with its error; then the dialer
// tries again.
func TestDialBackoff(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan []string, 10)
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				args, err := readCommand(bufio.NewReader(nc))
				if err != nil {
					return
				}
				accepted <- args
				_, _ = io.WriteString(nc, "-WRONGPASS invalid username-password pair\r\n")
			}()
		}
	}()
	d := newRespDialer(&redis.Options{Addr: l.Addr().String(), Password: "guess"}, time.Second)
	defer d.close()
	if _, err := d.dial(context.Background(), time.Time{}); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("first dial: %v, want Redis's WRONGPASS", err)
	}
	if args := <-accepted; len(args) != 2 || args[0] != "AUTH" || args[1] != "guess" {
		t.Errorf("set-up sent %q, want AUTH and the password", args)
	}
	start := time.Now()
	_, err = d.dial(context.Background(), time.Time{})
	if err == nil || !strings.Contains(err.Error(), "not dialing redis again") || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Errorf("a dial right after: %v, want it held back with the failure's error", err)
	}
	time.Sleep(dialBackoff - time.Since(start) + 10*time.Millisecond)
	if _, err := d.dial(context.Background(), time.Time{}); err == nil || strings.Contains(err.Error(), "not dialing") {
		t.Errorf("a dial after the backoff: %v, want a new attempt", err)
	}
	select {
	case <-accepted:
	case <-time.After(2 * time.Second):
		t.Fatal("no new connection after the backoff")
	}
	select {
	case args := <-accepted:
		t.Errorf("a held-back dial connected (%q)", args)
	default:
	}
}

// TestDialCutShort: a connect that its caller cuts short (its own deadline,
// shorter than the dialer's timeout, or its context ended) does not hold back
// the next dial: it says nothing of Redis.
func TestDialCutShort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan struct{}, 10)
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			defer nc.Close() // never answers AUTH
		}
	}()
	d := newRespDialer(&redis.Options{Addr: l.Addr().String(), Password: "pw"}, time.Second)
	defer d.close()
	soon := func() (context.Context, time.Time) {
		return context.Background(), time.Now().Add(20 * time.Millisecond)
	}
	for _, tc := range []struct {
		name  string
		start func() (context.Context, time.Time)
	}{
		{"the caller's deadline", soon},
		{"the caller's context", func() (context.Context, time.Time) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(20*time.Millisecond, cancel)
			return ctx, time.Time{}
		}},
		{"the next dial", soon},
	} {
		ctx, deadline := tc.start()
		if _, err := d.dial(ctx, deadline); err == nil || strings.Contains(err.Error(), "not dialing") {
			t.Errorf("%s: %v, want a connect that timed out", tc.name, err)
		}
		select {
		case <-accepted:
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: no connection made", tc.name)
		}
	}
}

// FuzzReadReply: no input makes reading replies panic or loop, and every reply
// read is either an answer or an error.
func FuzzReadReply(f *testing.F) {
	for _, s := range []string{":1\r\n", "*3\r\n:1\r\n:2\r\n:3\r\n", "-NOSCRIPT x\r\n", "$3\r\nabc\r\n", "*2\r\n*1\r\n:1\r\n:2\r\n", "*-1\r\n", "+OK\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c := readerConn(in)
		for range 64 {
			var r reply
			if err := c.readReply(&r); err != nil {
				return
			}
			if r.err == nil && !r.array && r.n != 1 {
				t.Fatalf("an answer of %d integers that is not an array", r.n)
			}
		}
	})
}
