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
		{"nothing listening", WakeupOptions{Rates: []int{100}, Duration: time.Second, Addr: "127.0.0.1:1"}, "dial echo server"},
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
