//go:build integration

package redisquota

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is a redis-server process of a test, on a free loopback port.
type redisServer struct {
	t      testing.TB
	addr   string
	args   []string
	mu     sync.Mutex
	cmd    *exec.Cmd
	out    *bytes.Buffer
	client *redis.Client // the test's own connection, for INFO and admin commands
}

// startRedis starts redis-server as DEPENDENCIES.md says, with extra arguments.
func startRedis(t testing.TB, extra ...string) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is not installed (%v): run `make deps` (hack/install-deps.sh installs Debian's redis-server)", err)
	}
	var lastErr error
	for range 5 {
		s := &redisServer{t: t, addr: freeAddr(t)}
		_, port, _ := net.SplitHostPort(s.addr)
		s.args = append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"}, extra...)
		if lastErr = s.start(); lastErr == nil {
			s.client = redis.NewClient(&redis.Options{Addr: s.addr, DialerRetries: 1, Password: s.password()})
			t.Cleanup(func() {
				_ = s.client.Close()
				s.stop()
			})
			return s
		}
	}
	t.Fatalf("start redis-server: %v", lastErr)
	return nil
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs the server and waits until it answers PING.
func (s *redisServer) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out = &bytes.Buffer{}
	s.cmd = exec.Command("redis-server", s.args...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("run redis-server: %w", err)
	}
	exited := make(chan error, 1)
	go func(cmd *exec.Cmd) { exited <- cmd.Wait() }(s.cmd)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			s.cmd = nil
			return fmt.Errorf("redis-server exited (%v): %s", err, s.out.String())
		default:
		}
		if s.ping() {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = s.cmd.Process.Kill()
	<-exited
	s.cmd = nil
	return fmt.Errorf("redis-server on %s did not answer PING: %s", s.addr, s.out.String())
}

// ping reports whether the server answers PING, over a raw connection: a go-redis
// client would log every refused dial while the server starts.
func (s *redisServer) ping() bool {
	c, err := net.DialTimeout("tcp", s.addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	cmd := "PING\r\n"
	if pw := s.password(); pw != "" {
		cmd = fmt.Sprintf("AUTH %s\r\n%s", pw, cmd)
	}
	if _, err := c.Write([]byte(cmd)); err != nil {
		return false
	}
	r := bufio.NewReader(c)
	out, err := r.ReadString('\n')
	for err == nil && strings.HasPrefix(out, "+OK") {
		out, err = r.ReadString('\n')
	}
	return err == nil && strings.HasPrefix(out, "+PONG")
}

// password is the --requirepass of the server, if any.
func (s *redisServer) password() string {
	for i, a := range s.args {
		if a == "--requirepass" && i+1 < len(s.args) {
			return s.args[i+1]
		}
	}
	return ""
}

// stop kills the server; its port then refuses connections.
func (s *redisServer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	for range 100 { // until the port refuses
		c, err := net.DialTimeout("tcp", s.addr, 100*time.Millisecond)
		if err != nil {
			break
		}
		_ = c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	s.cmd = nil
}

// restart starts a fresh server (empty, no scripts cached) on the same port.
func (s *redisServer) restart() {
	s.t.Helper()
	var err error
	for range 20 {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("restart redis-server: %v", err)
}

// calls returns the calls of a command per INFO commandstats (cmdstat_evalsha...).
func (s *redisServer) calls(cmd string) int {
	s.t.Helper()
	info, err := s.client.Info(context.Background(), "commandstats").Result()
	if err != nil {
		s.t.Fatalf("INFO commandstats: %v", err)
	}
	for _, line := range strings.Split(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+cmd+":")
		if !ok {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, _ := strconv.Atoi(v)
				return n
			}
		}
	}
	return 0
}

func (s *redisServer) resetStats() {
	s.t.Helper()
	if err := s.client.ConfigResetStat(context.Background()).Err(); err != nil {
		s.t.Fatalf("CONFIG RESETSTAT: %v", err)
	}
}
