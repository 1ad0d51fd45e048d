package loadtest

import (
	"testing"
	"time"
)

func TestProbeHostStalls(t *testing.T) {
	h := probeHostStalls(50 * time.Millisecond)
	if h.Duration < 50*time.Millisecond {
		t.Errorf("probed for %v, asked 50ms", h.Duration)
	}
	// Each sleep takes at least stallProbeSleep, so there can be no more wake-ups
	// than fit; and a machine that woke the probe never would fail the run anyway.
	if h.Wakeups == 0 || h.Wakeups > int(h.Duration/stallProbeSleep)+1 {
		t.Errorf("%d wake-ups in %v of %v sleeps", h.Wakeups, h.Duration, stallProbeSleep)
	}
	if h.Stalls > h.Wakeups || (h.Stalls > 0) != (h.Worst >= stallThreshold) {
		t.Errorf("%d stalls of %d wake-ups, worst %v late", h.Stalls, h.Wakeups, h.Worst)
	}
}

func TestHostStallsPerSecond(t *testing.T) {
	for _, tc := range []struct {
		h    HostStalls
		want float64
	}{
		{HostStalls{Stalls: 3, Duration: 2 * time.Second}, 1.5},
		{HostStalls{Stalls: 0, Duration: time.Second}, 0},
		{HostStalls{}, 0}, // not probed
	} {
		if got := tc.h.PerSecond(); got != tc.want {
			t.Errorf("%+v.PerSecond() = %v, want %v", tc.h, got, tc.want)
		}
	}
}
