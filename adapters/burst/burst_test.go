package burst_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/sluicemesh/sluice/adapters/burst"
)

// recorder is a Sender that records what each SendParked was given and answers
// every item (an *int) with its value times ten.
type recorder struct {
	name  string
	sends *[]string
}

func (s recorder) SendParked(items []any) {
	var got []int
	for _, it := range items {
		p := it.(*int)
		got = append(got, *p)
		*p *= 10
	}
	*s.sends = append(*s.sends, fmt.Sprint(s.name, got))
}

func TestRunner(t *testing.T) {
	var sends, events []string
	a, b := recorder{"a", &sends}, recorder{"b", &sends}
	r := burst.NewRunner(context.Background())
	ctx := r.Context()
	// call parks one item per sender given, in turn, and records each answer.
	call := func(name string, v int, senders ...burst.Sender) func(any) {
		return func(any) {
			for _, s := range senders {
				x := v
				if !burst.Park(ctx, s, &x) {
					t.Errorf("%s: not parked", name)
				}
				events = append(events, fmt.Sprint(name, "=", x))
			}
			events = append(events, name+" done")
		}
	}
	r.Start(call("one", 1, a), nil)
	r.Start(call("two", 2, b, a), nil)
	r.Start(call("three", 3), nil) // parks nothing: done at once
	r.Start(call("four", 4, a), nil)
	if r.Parked() != 3 || len(sends) != 0 || !slices.Equal(events, []string{"three done"}) {
		t.Fatalf("before Flush: %d parked, sends %v, events %v; want 3 parked, none sent, three done", r.Parked(), sends, events)
	}
	r.Flush()
	if r.Parked() != 0 {
		t.Errorf("%d parked after Flush", r.Parked())
	}
	// Each sender once per round, its items in the order they parked; two parks
	// again and is sent in a second round.
	if want := []string{"a[1 4]", "b[2]", "a[2]"}; !slices.Equal(sends, want) {
		t.Errorf("sends %v, want %v", sends, want)
	}
	want := []string{"three done", "one=10", "one done", "two=20", "four=40", "four done", "two=20", "two done"}
	if !slices.Equal(events, want) {
		t.Errorf("events %v, want %v", events, want)
	}

	// Outside a Runner's calls, Park parks nothing.
	x := 5
	if burst.Park(ctx, a, &x) || burst.Park(context.Background(), a, &x) || x != 5 {
		t.Error("Park parked outside a call started by a Runner")
	}
	// Close resumes what is still parked.
	r.Start(call("five", 5, b), nil)
	r.Close()
	if got := events[len(events)-1]; got != "five done" || sends[len(sends)-1] != "b[5]" {
		t.Errorf("after Close: last event %q, last send %q; want five done, b[5]", got, sends[len(sends)-1])
	}
}

// A call that panics panics on the Runner's owner, where the listener's
// goroutine would have.
func TestRunnerPanic(t *testing.T) {
	r := burst.NewRunner(context.Background())
	defer func() {
		if v := recover(); v != "boom" {
			t.Errorf("recovered %v, want boom", v)
		}
	}()
	r.Start(func(any) { panic("boom") }, nil)
	t.Error("Start returned after its call panicked")
}

func BenchmarkRunner(b *testing.B) {
	var sends []string
	s := recorder{"s", &sends}
	r := burst.NewRunner(context.Background())
	ctx := r.Context()
	fn := func(arg any) { burst.Park(ctx, s, arg) }
	x := make([]int, 8)
	b.ReportAllocs()
	for b.Loop() {
		for i := range x {
			r.Start(fn, &x[i])
		}
		r.Flush()
		sends = sends[:0]
	}
}
