package gcfloor

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		name                 string
		live, floor          uint64
		base, ceiling, wantP int
	}{
		{"small heap gets the floor", 4 * mib, 64 * mib, 100, 2000, 1500},
		{"rounded up to reach the floor", 3 * mib, 64 * mib, 100, 3000, 2034},
		{"bounded by max", 1 * mib, 64 * mib, 100, 2000, 2000},
		{"heap at half the floor keeps the base", 32 * mib, 64 * mib, 100, 2000, 100},
		{"heap above the floor keeps the base", 200 * mib, 64 * mib, 100, 2000, 100},
		{"never below the base", 16 * mib, 64 * mib, 500, 2000, 500},
		{"a base above max stays", 1 * mib, 64 * mib, 3000, 2000, 3000},
		{"GOGC=off stays off", 1 * mib, 64 * mib, -1, 2000, -1},
		{"no live heap read yet", 0, 64 * mib, 100, 2000, 100},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Percent(c.live, c.floor, c.base, c.ceiling); got != c.wantP {
				t.Errorf("Percent(%d, %d, %d, %d) = %d, want %d", c.live, c.floor, c.base, c.ceiling, got, c.wantP)
			}
		})
	}
}

func TestEnvPercent(t *testing.T) {
	for _, c := range []struct {
		env  string
		want int
	}{
		{"", 100}, {"100", 100}, {"400", 400}, {"off", -1}, {"0", 0}, {"-1", -1}, {"lots", 100}, {"1e3", 100},
	} {
		if got := envPercent(c.env); got != c.want {
			t.Errorf("envPercent(%q) = %d, want %d", c.env, got, c.want)
		}
	}
}

// TestRunSpacesCollections runs the tuner on this test process: with a floor far
// above the live heap, allocating the same amount must take fewer collections,
// and GOGC is back at its base once the tuner stops.
func TestRunSpacesCollections(t *testing.T) {
	// The base is the environment's; the test sets its own, whatever GOGC the
	// developer runs the tests with. A raised GOGC in force when the tuner starts
	// must not become its base.
	const base = 100
	t.Setenv("GOGC", "100")
	defer debug.SetGCPercent(debug.SetGCPercent(base))
	var sink []byte
	churn := func() uint32 {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range 64 << 10 {
			sink = make([]byte, 1024) // 64 MiB in all
		}
		runtime.ReadMemStats(&after)
		return after.NumGC - before.NumGC
	}
	without := churn()

	debug.SetGCPercent(1500) // as another tuner, ending, may have left it
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Tuner{Floor: 512 << 20, Interval: time.Millisecond}.Run(ctx)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for gogc() == base && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if gogc() <= base {
		t.Fatalf("GOGC stayed %d with a floor far above the live heap", gogc())
	}
	with := churn()
	cancel()
	<-done
	_ = sink
	if with >= without {
		t.Errorf("64 MiB allocated took %d collections with the floor, %d without; want fewer", with, without)
	}
	if got := gogc(); got != base {
		t.Errorf("GOGC is %d after the tuner stopped, want its base %d back", got, base)
	}
}

// gogc reads GOGC without setting it, so that it cannot race with the tuner.
func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// TestRunSetsBaseAtOnce: with the live heap above the floor the tuner wants the
// base; a raised GOGC left in force before it started (by another tuner, say) is
// put back at once, not when the tuner stops.
func TestRunSetsBaseAtOnce(t *testing.T) {
	t.Setenv("GOGC", "100")
	defer debug.SetGCPercent(debug.SetGCPercent(1500))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Tuner{Floor: 1, Interval: time.Millisecond}.Run(ctx)
	}()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for gogc() != 100 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := gogc(); got != 100 {
		t.Errorf("GOGC %d while the tuner runs with the live heap above its floor, want the base 100", got)
	}
}
