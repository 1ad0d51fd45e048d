//go:build integration

package loadtest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestIntegrationCheckLoad runs the check benchmark end to end, briefly, on a
// freshly built sluice with memquota and with the Debian redis-server: every row
// is measured without failures, the server's counters are read, and only the Redis
// rows have Redis pipelines. Answers later than Envoy's deadline count as errors in
// the tool; here, where the rest of `make test` shares the two cores, a few are
// tolerated (a 20 ms stall at 500/s makes ten), failures of any other kind not,
// unless the generator itself stalled past a deadline (then the run is repeated
// once).
func TestIntegrationCheckLoad(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is not installed (%v): run `make deps`", err)
	}
	bin := filepath.Join(t.TempDir(), "sluice")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/sluice").CombinedOutput(); err != nil {
		t.Fatalf("build sluice: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	var latencies string
	var problems []string
	for attempt := 1; ; attempt++ {
		out.Reset()
		latencies = filepath.Join(t.TempDir(), "latencies")
		rows, err := RunCheckLoad(ctx, CheckLoadOptions{
			Server: bin, RedisServer: "redis-server", RedisHz: 100,
			Rates: []int{500}, Duration: time.Second,
			Services: []string{"ext_authz", "ratelimit"}, Backends: []string{"memquota", "redis"},
			Caches: []string{"hit"}, Listeners: []string{"check"},
			Conns: 2, TargetP99: time.Millisecond, LatencyLog: latencies, Out: &out,
		})
		if err != nil {
			t.Fatalf("RunCheckLoad: %v\n%s", err, out.String())
		}
		if len(rows) != 4 {
			t.Fatalf("%d rows, want 4 (two services, two backends)\n%s", len(rows), out.String())
		}
		var stalled bool
		problems, stalled = checkLoadProblems(rows)
		// A row that failed while the generator itself fell a deadline behind
		// (its pacer's p99 lag) failed with the machine, not the server: such a
		// stall, of another package's tests or of the host, gets one more run.
		if len(problems) == 0 || !stalled || attempt == 2 {
			break
		}
		t.Logf("the machine stalled during the run (pacer lag p99 past %v), once more:\n%s\n%s", stallLag, strings.Join(problems, "\n"), out.String())
	}
	for _, p := range problems {
		t.Errorf("%s\n%s", p, out.String())
	}
	logged, err := os.ReadFile(latencies)
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(logged), "\n"); lines != 4*500 {
		t.Errorf("latency log has %d lines, want one per request of the four runs (2,000)", lines)
	}
	for _, column := range []string{"calls/pipeline", "Redis RTT", "handed off", "in bursts"} {
		if !strings.Contains(out.String(), column) {
			t.Errorf("the table has no %s column:\n%s", column, out.String())
		}
	}

	// Redis through a Unix socket, and the server on one processor: every
	// decision must still come from Redis.
	out.Reset()
	rows, err := RunCheckLoad(ctx, CheckLoadOptions{
		Server: bin, RedisServer: "redis-server", RedisSocket: "unix", ServerEnv: []string{"GOMAXPROCS=1"},
		Rates: []int{500}, Duration: time.Second,
		Services: []string{"ext_authz"}, Backends: []string{"redis"},
		Caches: []string{"miss"}, Listeners: []string{"check"},
		Conns: 1, TargetP99: time.Millisecond, Out: &out,
	})
	if err != nil {
		t.Fatalf("RunCheckLoad through a Unix socket: %v\n%s", err, out.String())
	}
	if len(rows) != 1 || rows[0].Fallbacks != 0 || rows[0].CallsPerPipeline < 1 || rows[0].RedisRoundTrip <= 0 || rows[0].Errors != rows[0].Late || rows[0].ServerProcs != 1 {
		t.Errorf("through a Unix socket with GOMAXPROCS=1: %+v, want one row of Redis decisions by a server on one processor\n%s", rows, out.String())
	}
	if !strings.Contains(out.String(), "through a Unix socket") {
		t.Errorf("the report does not say how Redis was reached:\n%s", out.String())
	}
}
