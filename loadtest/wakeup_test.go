package loadtest

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

func TestRunWakeup(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ServeEcho(ctx, lis) }()

	var out strings.Builder
	rows, err := RunWakeup(ctx, WakeupOptions{Rates: []int{200, 400}, Duration: 100 * time.Millisecond, Addr: lis.Addr().String(), Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("got %d rows, want 2", len(rows))
	}
	for i, want := range []int{20, 40} {
		r := rows[i]
		if r.Samples != want {
			t.Errorf("rate %d: %d samples, want %d", r.Rate, r.Samples, want)
		}
		if !(0 < r.P50 && r.P50 <= r.P99 && r.P99 <= r.P999 && r.P999 <= r.Max) {
			t.Errorf("rate %d: percentiles out of order: %+v", r.Rate, r)
		}
	}
	if !strings.Contains(out.String(), "p99.9") || strings.Count(out.String(), "\n") != 3 {
		t.Errorf("table:\n%s", out.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ServeEcho: %v", err)
	}
}

func TestRunWakeupErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		o    WakeupOptions
		want string
	}{
		{"no duration", WakeupOptions{Rates: []int{100}, Addr: "127.0.0.1:1"}, "duration"},
		{"zero rate", WakeupOptions{Rates: []int{100, 0}, Duration: time.Second, Addr: "127.0.0.1:1"}, "outside 1..1000000"},
		{"rate past a µs interval", WakeupOptions{Rates: []int{2_000_000_000}, Duration: time.Second, Addr: "127.0.0.1:1"}, "outside"},
		{"nothing listening", WakeupOptions{Rates: []int{100}, Duration: time.Second, Addr: "127.0.0.1:1"}, "dial echo server"},
		{"server that never answers", WakeupOptions{Rates: []int{100}, Duration: time.Second, Addr: silentServer(t)}, "read echo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := RunWakeup(ctx, tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

// silentServer accepts connections and never writes to them.
func silentServer(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return lis.Addr().String()
}

// TestRunWakeupInterrupted: cancelling ends a run blocked on a silent server at
// once, keeping what was measured, instead of waiting out the read deadline.
func TestRunWakeupInterrupted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := RunWakeup(ctx, WakeupOptions{Rates: []int{100}, Duration: 10 * time.Second, Addr: silentServer(t)})
	if took := time.Since(start); took > 700*time.Millisecond {
		t.Errorf("took %v after cancel at 100ms", took)
	}
	if err == nil {
		t.Error("no error from a run cancelled before any answer")
	}
}
