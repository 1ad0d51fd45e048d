package redisquota

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/adapters/quotakit/quotatest"
	"github.com/sluicemesh/sluice/templates/quota"
)

// scriptedRedis speaks RESP2 on loopback, as a Redis older than HELLO: every other
// command is answered +OK, and every
// EVALSHA or EVAL with the count 1 (:1), except where answer, given the
// connection's number (from 0) and the script call's number on it, says otherwise:
// a reply to send as is, or "" for none at all.
type scriptedRedis struct {
	addr   string
	answer func(conn, call int) (reply string, ok bool)

	mu    sync.Mutex
	conns int
}

func startScriptedRedis(t *testing.T, answer func(conn, call int) (string, bool)) *scriptedRedis {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	s := &scriptedRedis{addr: l.Addr().String(), answer: answer}
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			n := s.conns
			s.conns++
			s.mu.Unlock()
			go s.serve(nc, n)
		}
	}()
	return s
}

func (s *scriptedRedis) connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

func (s *scriptedRedis) serve(nc net.Conn, conn int) {
	defer nc.Close()
	r := bufio.NewReader(nc)
	calls := 0
	for {
		args, err := readCommand(r)
		if err != nil {
			return
		}
		reply := "+OK\r\n"
		if strings.EqualFold(args[0], "HELLO") {
			reply = "-ERR unknown command 'HELLO'\r\n" // as Redis 5 answers: go on in RESP2
		}
		if verb := strings.ToUpper(args[0]); verb == "EVALSHA" || verb == "EVAL" {
			reply = ":1\r\n"
			if a, ok := s.answer(conn, calls); ok {
				reply = a
			}
			calls++
		}
		if _, err := io.WriteString(nc, reply); err != nil {
			return
		}
	}
}

// readCommand reads one RESP array of bulk strings.
func readCommand(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || line[0] != '*' {
		return nil, fmt.Errorf("not an array: %q", line)
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("bad array length %q", line)
	}
	args := make([]string, n)
	for i := range args {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		size, err := strconv.Atoi(strings.TrimSpace(line[1:]))
		if err != nil || line[0] != '$' {
			return nil, fmt.Errorf("bad bulk string %q", line)
		}
		b := make([]byte, size+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		args[i] = string(b[:size])
	}
	return args, nil
}

// TestBrokenConnectionNotKept: a pipeline whose first call Redis answers with an
// error (NOSCRIPT here) and whose second it never answers leaves its connection
// with a reply owed. Only that pipeline's decisions fail: the next ones go over a
// new connection, not the old (a slot that never gave up its connection fails
// this test).
func TestBrokenConnectionNotKept(t *testing.T) {
	var mu sync.Mutex
	first := -1 // the first connection to carry script calls
	redis := startScriptedRedis(t, func(conn, call int) (string, bool) {
		mu.Lock()
		defer mu.Unlock()
		if first < 0 {
			first = conn
		}
		if conn != first {
			return "", false
		}
		switch call {
		case 0:
			return "-NOSCRIPT No matching script. Please use EVAL.\r\n", true
		case 1:
			return "", true // no answer: the call times out
		}
		return "", false
	})
	st := &quotatest.Stats{}
	p := defaults()
	p.RedisServerURL, p.Timeout, p.LocalCacheSize, p.MaxInFlight = redis.addr, 100*time.Millisecond, 0, 1
	h, err := New(context.Background(), adapters.Env{Stats: st}, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close(context.Background()) })
	limit := quota.Limit{Requests: 5, Window: time.Minute}
	out := make([]quota.Decision, 2)
	reqs := []quota.Request{{Key: "a", Limit: limit, Hits: 1}, {Key: "b", Limit: limit, Hits: 1}}
	if err := h.Allow(context.Background(), time.Now(), reqs, out); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		out := make([]quota.Decision, 1)
		if err := h.Allow(context.Background(), time.Now(), reqs[:1], out); err != nil {
			t.Fatal(err)
		}
		if !out[0].Allowed || out[0].Remaining != 4 {
			t.Errorf("decision %d after the broken pipeline: %+v, want Redis's (allowed, 4 left)", i, out[0])
		}
	}
	if n := st.Errors(quotakit.ReasonError) + st.Errors(quotakit.ReasonTimeout); n != 1 {
		t.Errorf("%d failures counted, want 1: the broken pipeline's", n)
	}
	if n := redis.connections(); n < 2 {
		t.Errorf("%d connections made, want a new one after the broken pipeline", n)
	}
}
