package redisquota

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicemesh/sluice/adapters/burst"
)

// echoSend answers every call with its own number (see jobOf), so that a test
// can tell which answers reached which job, and records the pipelines it was given. While gate is
// not nil, each pipeline waits for a token from it; a pipeline whose context has
// ended by then fails every call, as a Redis pipeline would.
type echoSend struct {
	gate chan struct{}

	mu        sync.Mutex
	pipelines [][]string  // the keys of each pipeline, in order
	deadlines []time.Time // of each pipeline's context
	inFlight  int
	maxFlight int
}

func (e *echoSend) send(ctx context.Context, deadline time.Time, _ *slot, jobs []*job) {
	e.mu.Lock()
	e.inFlight++
	e.maxFlight = max(e.maxFlight, e.inFlight)
	e.mu.Unlock()
	if e.gate != nil {
		<-e.gate
	}
	var keys []string
	for _, j := range jobs {
		j.replies = nil
		for _, i := range j.pending {
			o := &j.ops[i]
			keys = append(keys, o.keys[0])
			r := reply{n: 1, ints: [4]int64{o.nums[0]}}
			if err := ctx.Err(); err != nil {
				r = reply{err: err}
			} else if !time.Now().Before(deadline) {
				r = reply{err: context.DeadlineExceeded}
			}
			j.replies = append(j.replies, r)
		}
	}
	e.mu.Lock()
	e.inFlight--
	e.pipelines = append(e.pipelines, keys)
	e.deadlines = append(e.deadlines, deadline)
	e.mu.Unlock()
	for _, j := range jobs {
		j.woken()
	}
}

// jobOf is a job of one call per key, each numbered by its key's hash, which
// echoSend answers (see answered).
func jobOf(keys ...string) *job {
	j := &job{}
	for i, k := range keys {
		j.ops = append(j.ops, op{keys: []string{k}, nums: [7]int64{keyNumber(k)}})
		j.pending = append(j.pending, i)
	}
	return j
}

func keyNumber(k string) int64 {
	h := fnv.New64a()
	h.Write([]byte(k))
	return int64(h.Sum64() >> 1)
}

// answered reports whether j's answers are echoSend's for keys, in order.
func answered(j *job, keys ...string) bool {
	if len(j.replies) != len(keys) {
		return false
	}
	for i, k := range keys {
		if r := j.replies[i]; r.err != nil || r.ints[0] != keyNumber(k) {
			return false
		}
	}
	return true
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
			c := newCoalescer(newSlots(tc.limit), e.send)
			var wg sync.WaitGroup
			errs := make(chan error, tc.calls)
			for n := range tc.calls {
				wg.Go(func() {
					a, b := fmt.Sprintf("%d/a", n), fmt.Sprintf("%d/b", n)
					j := jobOf(a, b)
					if err := c.do(context.Background(), time.Now().Add(time.Hour), j); err != nil {
						errs <- err
						return
					}
					if !answered(j, a, b) {
						errs <- fmt.Errorf("call %d got %v, want its own answers in order", n, j.replies)
					}
				})
			}
			// Let the first pipelines block until every call has arrived, then open
			// the gate: the calls that waited must share pipelines.
			waitFor(t, func() bool {
				free, queued := c.lens()
				return tc.limit-free == min(tc.calls, tc.limit) && queued == max(0, tc.calls-tc.limit)
			})
			close(e.gate)
			wait(t, &wg)
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			// The last pipeline's sender gives its slot back after its callers return.
			waitFor(t, func() bool {
				free, queued := c.lens()
				return free == tc.limit && queued == 0
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

// TestCoalescerAbandoned checks that a queued call whose deadline passes while
// no pipeline comes back ends then, with DeadlineExceeded; that one whose caller
// goes away ends, unsent, when a pipeline comes back; and that the caller holding
// a pipeline going away fails only its own calls.
func TestCoalescerAbandoned(t *testing.T) {
	e := &echoSend{gate: make(chan struct{})}
	c := newCoalescer(newSlots(1), e.send)
	firstCtx, cancelFirst := context.WithCancel(context.Background())
	first := jobOf("first")
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := c.do(firstCtx, time.Now().Add(time.Hour), first); err != nil {
			t.Errorf("first: %v", err)
		}
	})
	waitFor(t, func() bool { free, _ := c.lens(); return free == 0 })
	late := make(chan error, 1)
	go func() { late <- c.do(context.Background(), time.Now().Add(20*time.Millisecond), jobOf("late")) }()
	select {
	case err := <-late:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("waiting past the deadline: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a call with 20ms to go still waits after 2s, no pipeline having come back")
	}
	gone, cancelGone := context.WithCancel(context.Background())
	wg.Go(func() {
		if err := c.do(gone, time.Now().Add(time.Hour), jobOf("gone")); !errors.Is(err, context.Canceled) {
			t.Errorf("gone: %v", err)
		}
	})
	kept := jobOf("kept")
	wg.Go(func() {
		if err := c.do(context.Background(), time.Now().Add(time.Hour), kept); err != nil {
			t.Errorf("kept: %v", err)
		}
	})
	waitFor(t, func() bool { _, queued := c.lens(); return queued == 2 })
	cancelGone()
	cancelFirst()
	close(e.gate)
	wait(t, &wg)
	if first.replies[0].err == nil {
		t.Error("the cancelled holder's own call succeeded")
	}
	if !answered(kept, "kept") {
		t.Errorf("a queued call failed with the holder that went away: %v", kept.replies)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if fmt.Sprint(e.pipelines) != "[[first] [kept]]" {
		t.Errorf("pipelines %v, want the expired and abandoned calls left out", e.pipelines)
	}
}

// TestCoalescerDeadline checks that a pipeline carries its caller's deadline, and
// a shared pipeline the earliest deadline of its callers, so that none waits past
// its own.
func TestCoalescerDeadline(t *testing.T) {
	e := &echoSend{gate: make(chan struct{})}
	c := newCoalescer(newSlots(1), e.send)
	soon := time.Now().Add(time.Hour)
	var wg sync.WaitGroup
	wg.Go(func() { _ = c.do(context.Background(), soon.Add(3*time.Minute), jobOf("holder")) })
	waitFor(t, func() bool { free, _ := c.lens(); return free == 0 })
	for i, d := range []time.Time{soon.Add(time.Minute), soon, soon.Add(2 * time.Minute)} {
		wg.Go(func() {
			if err := c.do(context.Background(), d, jobOf(fmt.Sprint("queued", i))); err != nil {
				t.Error(err)
			}
		})
	}
	waitFor(t, func() bool { _, queued := c.lens(); return queued == 3 })
	close(e.gate)
	wait(t, &wg)
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.deadlines) != 2 || !e.deadlines[0].Equal(soon.Add(3*time.Minute)) || !e.deadlines[1].Equal(soon) {
		t.Errorf("pipeline deadlines %v, want the holder's and %v for the shared one", e.deadlines, soon)
	}
}

// wait waits for wg, failing the test after 10s rather than hanging it.
func wait(t *testing.T, wg *sync.WaitGroup) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("calls still waiting after 10s: a queued job was stranded")
	}
}

// lens is how many of c's slots are free and how many jobs wait in its queue.
func (c *coalescer) lens() (free, queued int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.free), len(c.queue)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5s")
		}
	}
}

// TestCoalescerBurst checks the jobs that the calls of one burst park
// (burst.Park): nothing is sent while they park; when the burst is flushed
// they go out in one pipeline under the earliest deadline (more than one past
// maxBatch calls), a job whose deadline passed or whose caller went is left out
// and told so, and with every slot taken they wait for the next pipeline back.
func TestCoalescerBurst(t *testing.T) {
	type call struct {
		keys     []string
		deadline time.Duration // from now; an hour when zero
		cancel   bool          // its caller's context ended before the flush
		want     error
	}
	many := make([]string, maxBatch-1)
	for i := range many {
		many[i] = fmt.Sprint("many", i)
	}
	for _, tc := range []struct {
		name      string
		calls     []call
		held      bool // a pipeline holds the only slot until after the flush
		pipelines string
		deadline  time.Duration // of the burst's pipelines, from now; an hour when zero
	}{
		{name: "one pipeline", calls: []call{{keys: []string{"a", "b"}, deadline: 2 * time.Hour}, {keys: []string{"c"}, deadline: 30 * time.Minute},
			{keys: []string{"d"}}}, pipelines: "[[a b c d]]", deadline: 30 * time.Minute},
		{name: "expired and gone left out", calls: []call{{keys: []string{"a"}}, {keys: []string{"late"}, deadline: -time.Millisecond, want: context.DeadlineExceeded},
			{keys: []string{"gone"}, cancel: true, want: context.Canceled}, {keys: []string{"b"}}}, pipelines: "[[a b]]"},
		{name: "past maxBatch", calls: []call{{keys: many}, {keys: []string{"x", "y"}}, {keys: []string{"z"}}},
			pipelines: fmt.Sprintf("[%v [x y z]]", many)},
		{name: "slots taken", held: true, calls: []call{{keys: []string{"a"}}, {keys: []string{"b"}}},
			pipelines: "[[holder] [a b]]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &echoSend{}
			c := newCoalescer(newSlots(1), e.send)
			var wg sync.WaitGroup
			if tc.held {
				e.gate = make(chan struct{})
				wg.Go(func() { _ = c.do(context.Background(), time.Now().Add(time.Hour), jobOf("holder")) })
				waitFor(t, func() bool { free, _ := c.lens(); return free == 0 })
			}
			r := burst.NewRunner(context.Background())
			jobs := make([]*job, len(tc.calls))
			errs := make([]error, len(tc.calls))
			cancels := make([]context.CancelFunc, len(tc.calls))
			now := time.Now()
			for i, cl := range tc.calls {
				jobs[i] = jobOf(cl.keys...)
				deadline := now.Add(time.Hour)
				if cl.deadline != 0 {
					deadline = now.Add(cl.deadline)
				}
				ctx, cancel := context.WithCancel(r.Context())
				cancels[i] = cancel
				r.Start(func(any) { errs[i] = c.do(ctx, deadline, jobs[i]) }, nil)
			}
			if r.Parked() != len(tc.calls) {
				t.Fatalf("%d calls parked, want %d", r.Parked(), len(tc.calls))
			}
			for i, cl := range tc.calls {
				if cl.cancel {
					cancels[i]()
				}
			}
			if tc.held {
				go func() {
					// Off the test's goroutine: no t.Fatal here. Should the jobs never
					// queue, the gate opens after 5s and the pipelines are wrong.
					for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
						if _, queued := c.lens(); queued == len(tc.calls) {
							break
						}
					}
					close(e.gate)
				}()
			} else if len(e.pipelines) != 0 {
				t.Fatalf("pipelines %v sent before the flush", e.pipelines)
			}
			r.Flush()
			wait(t, &wg)
			for i, cl := range tc.calls {
				cancels[i]()
				if !errors.Is(errs[i], cl.want) || (cl.want == nil) != (errs[i] == nil) {
					t.Errorf("call %d: %v, want %v", i, errs[i], cl.want)
				}
				if cl.want == nil && !answered(jobs[i], cl.keys...) {
					t.Errorf("call %d got %v, want its own answers in order", i, jobs[i].replies)
				}
			}
			waitFor(t, func() bool { free, queued := c.lens(); return free == 1 && queued == 0 })
			e.mu.Lock()
			defer e.mu.Unlock()
			if got := fmt.Sprint(e.pipelines); got != tc.pipelines {
				t.Errorf("pipelines %v, want %v", got, tc.pipelines)
			}
			if !tc.held {
				want := now.Add(time.Hour)
				if tc.deadline != 0 {
					want = now.Add(tc.deadline)
				}
				for _, d := range e.deadlines {
					if !d.Equal(want) {
						t.Errorf("pipeline deadline %v, want the earliest of its calls', %v", d, want)
					}
				}
			}
		})
	}
}

// TestCoalescerDrainers checks that the pipelines of queued calls, sent after
// their holder's came back, run on one drainer kept from round to round rather
// than on a new goroutine each time, and that close ends the idle drainer.
func TestCoalescerDrainers(t *testing.T) {
	e := &echoSend{gate: make(chan struct{})}
	c := newCoalescer(newSlots(1), e.send)
	drainedOn := map[string]string{} // queued call's key -> goroutine that sent it
	var mu sync.Mutex
	send := e.send
	c.send = func(ctx context.Context, deadline time.Time, s *slot, jobs []*job) {
		mu.Lock()
		drainedOn[jobs[0].ops[0].keys[0]] = goroutineID()
		mu.Unlock()
		send(ctx, deadline, s, jobs)
	}
	for round := range 4 {
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := c.do(context.Background(), time.Now().Add(time.Hour), jobOf(fmt.Sprint("holder", round))); err != nil {
				t.Errorf("holder: %v", err)
			}
		})
		waitFor(t, func() bool { free, _ := c.lens(); return free == 0 })
		wg.Go(func() {
			if err := c.do(context.Background(), time.Now().Add(time.Hour), jobOf(fmt.Sprint("queued", round))); err != nil {
				t.Errorf("queued: %v", err)
			}
		})
		waitFor(t, func() bool { _, queued := c.lens(); return queued == 1 })
		e.gate <- struct{}{} // the holder's pipeline
		e.gate <- struct{}{} // the queued call's, drained
		wait(t, &wg)
		// The drainer frees the slot, then waits for the next drain.
		waitFor(t, func() bool { return idleDrainers(c) == 1 })
	}
	mu.Lock()
	first := drainedOn["queued0"]
	for round := range 4 {
		if g := drainedOn[fmt.Sprint("queued", round)]; g != first || g == drainedOn[fmt.Sprint("holder", round)] {
			t.Errorf("round %d: drained on goroutine %s, want the drainer of round 0 (%s), not the holder's", round, g, first)
		}
	}
	mu.Unlock()
	if n := c.drainers.Load(); n != 1 {
		t.Errorf("%d drainers for one slot, want 1", n)
	}
	c.close()
	waitFor(t, func() bool { return c.drainers.Load() == 0 && idleDrainers(c) == 0 })
}

// goroutineID is the calling goroutine's number, from its stack's header.
func goroutineID() string {
	var buf [64]byte
	f := strings.Fields(string(buf[:runtime.Stack(buf[:], false)]))
	return f[1] // "goroutine N [running]:"
}

// idleDrainers is how many of c's drainers wait for a drain, from every
// goroutine's stack (whose frames show the receiver).
func idleDrainers(c *coalescer) int {
	frame := fmt.Sprintf("(*coalescer).drainer(%p", c)
	buf := make([]byte, 1<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "[select") && strings.Contains(g, frame) {
			n++
		}
	}
	return n
}
