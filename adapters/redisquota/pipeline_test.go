package redisquota

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// echoSend answers every call with its own key, so that a test can tell which
// answers reached which job, and records the pipelines it was given. While gate is
// not nil, each pipeline waits for a token from it.
type echoSend struct {
	gate chan struct{}

	mu        sync.Mutex
	pipelines [][]string // the keys of each pipeline, in order
	inFlight  int
	maxFlight int
}

func (e *echoSend) send(_ context.Context, jobs []*job) {
	e.mu.Lock()
	e.inFlight++
	e.maxFlight = max(e.maxFlight, e.inFlight)
	e.mu.Unlock()
	if e.gate != nil {
		<-e.gate
	}
	var keys []string
	for _, j := range jobs {
		j.cmds = nil
		for _, i := range j.pending {
			k := j.ops[i].keys[0]
			keys = append(keys, k)
			c := redis.NewCmd(context.Background())
			c.SetVal(k)
			j.cmds = append(j.cmds, c)
		}
	}
	e.mu.Lock()
	e.inFlight--
	e.pipelines = append(e.pipelines, keys)
	e.mu.Unlock()
	for _, j := range jobs {
		close(j.done)
	}
}

func jobOf(keys ...string) *job {
	j := &job{}
	for i, k := range keys {
		j.ops = append(j.ops, op{keys: []string{k}})
		j.pending = append(j.pending, i)
	}
	return j
}

func TestCoalescer(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int
		calls int
	}{
		{"one in flight", 1, 50},
		{"two in flight", 2, 50},
		{"more slots than calls", 8, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &echoSend{gate: make(chan struct{})}
			c := newCoalescer(tc.limit, e.send)
			var wg sync.WaitGroup
			errs := make(chan error, tc.calls)
			for n := range tc.calls {
				wg.Go(func() {
					a, b := fmt.Sprintf("%d/a", n), fmt.Sprintf("%d/b", n)
					j := jobOf(a, b)
					if err := c.do(context.Background(), j); err != nil {
						errs <- err
						return
					}
					if len(j.cmds) != 2 || j.cmds[0].Val() != a || j.cmds[1].Val() != b {
						errs <- fmt.Errorf("call %d got %v, want its own answers in order", n, j.cmds)
					}
				})
			}
			// Let the first pipelines block until every call has arrived, then open
			// the gate: the calls that waited must share pipelines.
			waitFor(t, func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				return c.inFlight == min(tc.calls, tc.limit) && len(c.queue) == max(0, tc.calls-tc.limit)
			})
			close(e.gate)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			// The last pipeline's sender gives its slot back after its callers return.
			waitFor(t, func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				return c.inFlight == 0 && len(c.queue) == 0
			})
			e.mu.Lock()
			defer e.mu.Unlock()
			calls := 0
			for _, p := range e.pipelines {
				calls += len(p)
			}
			if calls != 2*tc.calls {
				t.Errorf("%d calls sent, want %d", calls, 2*tc.calls)
			}
			if e.maxFlight > tc.limit {
				t.Errorf("%d pipelines in flight, limit %d", e.maxFlight, tc.limit)
			}
			if want := min(tc.calls, tc.limit+1); len(e.pipelines) > want {
				t.Errorf("%d pipelines for %d calls that arrived together, want at most %d", len(e.pipelines), tc.calls, want)
			}
		})
	}
}

// TestCoalescerAbandoned checks that a call whose deadline passes while it waits
// gets the context's error and that its calls are not sent afterwards.
func TestCoalescerAbandoned(t *testing.T) {
	e := &echoSend{gate: make(chan struct{})}
	c := newCoalescer(1, e.send)
	first := make(chan error, 1)
	go func() { first <- c.do(context.Background(), jobOf("first")) }()
	waitFor(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.inFlight == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	late := jobOf("late")
	if err := c.do(ctx, late); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting past the deadline: %v", err)
	}
	kept := make(chan error, 1)
	go func() { kept <- c.do(context.Background(), jobOf("kept")) }()
	waitFor(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.queue) == 2
	})
	close(e.gate)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-kept; err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if fmt.Sprint(e.pipelines) != "[[first] [kept]]" {
		t.Errorf("pipelines %v, want the abandoned call left out", e.pipelines)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5s")
		}
	}
}
