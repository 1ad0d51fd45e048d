package routing_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	// grpc-go's xDS client registers the xds:/// resolver. It reads its bootstrap when
	// the package initialises, which is why agents run as child processes.
	_ "google.golang.org/grpc/xds"

	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/registry"
	"github.com/sluicemesh/sluice/routing"
)

// agentEnv marks a child process that runs the agent instead of the tests.
const agentEnv = "SLUICE_TEST_XDS_AGENT"

func TestMain(m *testing.M) {
	if os.Getenv(agentEnv) == "1" {
		os.Exit(runAgent(os.Stdin, os.Stdout))
	}
	if spec := os.Getenv(fleetEnv); spec != "" {
		os.Exit(runFleet(spec, os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

// command is what the test asks an agent to do.
type command struct {
	// Op is "calls" (N calls, reported as a tally) or "until" (call until a
	// backend answers, reported with the time it first did).
	Op          string            `json:"op"`
	Target      string            `json:"target"`
	N           int               `json:"n,omitempty"`
	Concurrency int               `json:"concurrency,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Backend     string            `json:"backend,omitempty"`
	Timeout     time.Duration     `json:"timeout,omitempty"`
}

// result is an agent's answer.
type result struct {
	Backends map[string]int `json:"backends,omitempty"`
	Codes    map[string]int `json:"codes,omitempty"`
	// Errors holds one message per distinct failure code, for test logs.
	Errors map[string]string `json:"errors,omitempty"`
	// FirstSeen is when Backend first answered (Unix nanoseconds); Stable says
	// that every later call went there too.
	FirstSeen int64  `json:"firstSeen,omitempty"`
	Stable    bool   `json:"stable,omitempty"`
	Err       string `json:"err,omitempty"`
}

// runAgent is a proxyless gRPC client: it dials xds:/// targets with grpc-go's own
// xDS client and makes the calls it is told to, one command per line.
func runAgent(in io.Reader, out io.Writer) int {
	conns := map[string]*grpc.ClientConn{}
	dec := json.NewDecoder(in)
	enc := json.NewEncoder(out)
	for {
		var cmd command
		if err := dec.Decode(&cmd); err != nil {
			return 0 // the test closed stdin
		}
		cc, ok := conns[cmd.Target]
		if !ok {
			var err error
			cc, err = grpc.NewClient(cmd.Target, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				_ = enc.Encode(result{Err: err.Error()})
				continue
			}
			conns[cmd.Target] = cc
		}
		client := testgrpc.NewTestServiceClient(cc)
		switch cmd.Op {
		case "calls":
			_ = enc.Encode(tally(client, cmd))
		case "until":
			_ = enc.Encode(until(client, cmd))
		default:
			_ = enc.Encode(result{Err: "unknown op " + cmd.Op})
		}
	}
}

func call(client testgrpc.TestServiceClient, md map[string]string, timeout time.Duration) (string, error) {
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ctx = metadata.NewOutgoingContext(ctx, metadata.New(md))
	resp, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{})
	if err != nil {
		return "", err
	}
	return resp.GetHostname(), nil
}

func tally(client testgrpc.TestServiceClient, cmd command) result {
	res := result{Backends: map[string]int{}, Codes: map[string]int{}, Errors: map[string]string{}}
	var mu sync.Mutex
	var next atomic.Int64
	workers := max(cmd.Concurrency, 1)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(cmd.N) {
				backend, err := call(client, cmd.Metadata, cmd.Timeout)
				code := status.Code(err)
				mu.Lock()
				res.Codes[code.String()]++
				if err == nil {
					res.Backends[backend]++
				} else if _, seen := res.Errors[code.String()]; !seen {
					res.Errors[code.String()] = err.Error()
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res
}

// until calls every few milliseconds until cmd.Backend answers, then checks that
// the next calls go there too.
func until(client testgrpc.TestServiceClient, cmd command) result {
	deadline := time.Now().Add(cmd.Timeout)
	for time.Now().Before(deadline) {
		backend, err := call(client, cmd.Metadata, time.Second)
		if err == nil && backend == cmd.Backend {
			res := result{FirstSeen: time.Now().UnixNano(), Stable: true}
			for range 20 {
				if b, err := call(client, cmd.Metadata, time.Second); err != nil || b != cmd.Backend {
					res.Stable = false
				}
			}
			return res
		}
		time.Sleep(2 * time.Millisecond)
	}
	return result{Err: fmt.Sprintf("%s never answered within %v", cmd.Backend, cmd.Timeout)}
}

// agent is a running child process.
type agent struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *json.Decoder
}

// startAgent runs the test binary as a proxyless client of the xDS server at
// xdsAddr, with node id.
func startAgent(t *testing.T, xdsAddr, id string) *agent {
	t.Helper()
	bootstrap, err := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      xdsAddr,
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]any{"id": id, "metadata": map[string]any{"GENERATOR": "grpc"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), agentEnv+"=1", "GRPC_XDS_BOOTSTRAP_CONFIG="+string(bootstrap))
	cmd.Stderr = &testLogWriter{t: t, prefix: id + ": "}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &agent{cmd: cmd, in: in, out: json.NewDecoder(bufio.NewReader(out))}
	t.Cleanup(func() {
		_ = in.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return a
}

func (a *agent) send(t *testing.T, c command) {
	t.Helper()
	if err := json.NewEncoder(a.in).Encode(c); err != nil {
		t.Fatalf("agent: %v", err)
	}
}

func (a *agent) recv(t *testing.T) result {
	t.Helper()
	var r result
	if err := a.out.Decode(&r); err != nil {
		t.Fatalf("agent: %v", err)
	}
	if r.Err != "" {
		t.Fatalf("agent: %s", r.Err)
	}
	return r
}

func (a *agent) do(t *testing.T, c command) result {
	t.Helper()
	a.send(t, c)
	return a.recv(t)
}

// testLogWriter sends a child's stderr to the test log.
type testLogWriter struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Logf("%s%s", w.prefix, p)
	return len(p), nil
}

// backend is a gRPC test server that answers with its name. A flaky one fails
// every other call with UNAVAILABLE; the x-sleep header makes any of them slow.
type backend struct {
	testgrpc.UnimplementedTestServiceServer
	name  string
	flaky bool
	calls atomic.Int64
}

func (b *backend) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	n := b.calls.Add(1)
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("x-sleep"); len(v) > 0 {
			d, _ := time.ParseDuration(v[0])
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	if b.flaky && n%2 == 1 {
		return nil, status.Error(codes.Unavailable, "flaky backend fails every other call")
	}
	return &testgrpc.SimpleResponse{Hostname: b.name}, nil
}

// startBackend serves b on ip (a loopback address) and returns its port.
func startBackend(t *testing.T, ip string, b *backend) int {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, b)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().(*net.TCPAddr).Port
}

// sluice is the routing core with a watched config directory, wired as sluice
// serve wires it.
type sluice struct {
	dir     string
	reg     *registry.Registry
	routing *routing.Server
	watcher *config.Watcher
	metrics *prometheus.Registry
}

func startSluice(t testing.TB, files map[string]string) *sluice {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		writeFile(t, filepath.Join(dir, name), body)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(&testLogWriter{t: t, prefix: "sluice: "}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	s := &sluice{dir: dir, reg: registry.New(""), metrics: prometheus.NewRegistry()}
	var err error
	s.routing, err = routing.New(routing.Options{
		Addr: "127.0.0.1:0", Advertise: "127.0.0.1:9091", Registry: s.reg, Logger: log, Debounce: 10 * time.Millisecond,
		Metrics: s.metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	loader := &config.Loader{Dir: dir, Layers: []config.Layer{}, Validators: []config.Validator{s.routing.Validator()}}
	apply := func(ctx context.Context, snap *config.Snapshot) error {
		s.reg.SetSource(registry.ConfigSource, registry.FromSnapshot(snap))
		s.routing.OnApply(ctx, snap)
		return nil
	}
	s.watcher, err = config.NewWatcher(loader, apply, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.watcher.Debounce = 20 * time.Millisecond
	s.watcher.Poll = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.watcher.Reload(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = s.watcher.Run(ctx) }()
	go func() {
		defer wg.Done()
		if err := s.routing.Run(ctx); err != nil {
			t.Errorf("routing: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return s
}

func (s *sluice) xdsAddr() string { return s.routing.Addr().String() }

// metricValue returns the value of the series of a metric whose labels contain
// labels ("type=\"CDS\""), or -1.
func metricValue(t testing.TB, s *sluice, name, labels string) float64 {
	t.Helper()
	mfs, err := s.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			if strings.Contains(strings.Join(ls, ","), labels) {
				switch {
				case m.GetCounter() != nil:
					return m.GetCounter().GetValue()
				case m.GetGauge() != nil:
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

func writeFile(t testing.TB, path, body string) {
	t.Helper()
	// Write and rename, as config management tools do, so the watcher never reads
	// half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
