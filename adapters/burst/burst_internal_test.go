package burst

import (
	"context"
	"testing"
)

type nopSender struct{}

func (*nopSender) SendParked([]any) {}

// TestRunnerReusesCoroutines: the coroutines of calls that returned are kept
// for the next calls, up to maxSpare, and Close ends them.
func TestRunnerReusesCoroutines(t *testing.T) {
	s := &nopSender{}
	r := NewRunner(context.Background())
	ctx := r.Context()
	park := func(arg any) { Park(ctx, s, arg) }
	burst := func(n int) {
		for range n {
			r.Start(park, nil)
		}
		r.Flush()
	}
	burst(8)
	first := map[*coro]bool{}
	for _, co := range r.spare {
		first[co] = true
	}
	if len(first) != 8 {
		t.Fatalf("after a burst of 8 calls, %d coroutines kept, want 8", len(first))
	}
	for range 100 {
		burst(8)
	}
	for _, co := range r.spare {
		if !first[co] {
			t.Fatal("a later burst of 8 calls made a new coroutine instead of reusing one")
		}
	}
	burst(40) // 40 at once: maxSpare are kept, the rest ended
	if len(r.spare) != maxSpare {
		t.Errorf("after a burst of 40 calls, %d coroutines kept, want %d", len(r.spare), maxSpare)
	}
	kept := r.spare[0]
	r.Close()
	if len(r.spare) != 0 {
		t.Errorf("%d coroutines kept after Close", len(r.spare))
	}
	// An ended coroutine's next reports it is done.
	if _, ok := kept.next(); ok {
		t.Error("a coroutine kept until Close still runs after it")
	}
}
