package redisquota

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicemesh/sluice/adapters/burst"
)

// DefaultMaxInFlight is how many pipelines a handler keeps in flight to Redis at
// most; decisions that arrive while they are all out share the next one.
const DefaultMaxInFlight = 2

// maxBatch bounds the script calls of one shared pipeline (unless one Allow call
// alone has more), so that a round trip carries bounded work however long the
// queue grows.
const maxBatch = 256

// States of a job.
const (
	jobQueued    int32 = iota // waiting for a pipeline
	jobTaken                  // in a pipeline: its caller waits for the answers
	jobExpired                // its deadline passed before a pipeline took it: never sent
	jobAbandoned              // its caller's context ended before a pipeline took it: never sent
)

// job is one Allow call's script calls waiting for a pipeline.
type job struct {
	ops     []op
	pending []int   // indexes into ops of the calls to send
	replies []reply // one per pending; set before a queued job is woken
	// ctx and deadline are its caller's, deadline being the handler's timeout
	// or the caller's own deadline, whichever comes first.
	ctx      context.Context
	deadline time.Time
	// queued jobs wait on wake, which whoever ends their wait signals once; it
	// is kept with the job for its next use.
	queued bool
	wake   chan struct{}
	// alone is the batch of a job sent at once, kept to spare an allocation.
	alone [1]*job
	// state moves from queued to taken, expired or abandoned, once, under the
	// coalescer's lock, so that a call is counted in Redis if and only if its
	// caller reads Redis's answer.
	state atomic.Int32
}

// woken ends the wait of a queued job; a job sent at once has no one waiting.
func (j *job) woken() {
	if j.queued {
		j.wake <- struct{}{}
	}
}

// coalescer merges the script calls of concurrent Allow calls into shared
// pipelines. A call that finds a pipeline slot free sends its own at once; a call
// that finds every slot taken queues, and the next pipeline to come back sends
// everything queued, together. An idle handler therefore adds no delay,
// and a busy one pays one write and one read per round trip, on Sluice's side and
// on Redis's, instead of one per check.
//
// Each pipeline in flight holds a slot: a connection of its own and the storage
// its calls reuse.
type coalescer struct {
	// send runs the calls of jobs in one pipeline on slot s, bounded by
	// deadline, and fills each job's replies and wakes it. The deadline is
	// passed apart from ctx (which a connection it dials observes) so that a
	// pipeline costs no context of its own.
	send func(ctx context.Context, deadline time.Time, s *slot, jobs []*job)

	mu    sync.Mutex
	queue []*job
	free  []*slot // the slots no pipeline holds
	// expiry ends the wait of queued jobs whose deadlines pass before a pipeline
	// takes them: one timer for the queue, armed at expiryAt, the earliest
	// deadline queued (zero when unarmed), rather than one per waiting call.
	expiry   *time.Timer
	expiryAt time.Time

	// Drains run on goroutines kept for the next (see goDrain): drains hands an
	// idle one its slot and batch, drainers counts them (at most one per slot),
	// and closing stop ends the idle ones.
	drains   chan drainWork
	drainers atomic.Int32
	maxDrain int32
	stop     chan struct{}
	stopOnce sync.Once
}

// drainWork is a drain handed to an idle drainer.
type drainWork struct {
	s     *slot
	batch []*job
}

func newCoalescer(slots []*slot, send func(context.Context, time.Time, *slot, []*job)) *coalescer {
	c := &coalescer{
		send:     send,
		free:     slices.Clone(slots),
		drains:   make(chan drainWork),
		maxDrain: int32(len(slots)),
		stop:     make(chan struct{}),
	}
	c.expiry = time.AfterFunc(time.Hour, c.expire)
	c.expiry.Stop()
	return c
}

// close ends the idle drainers; a drain under way finishes first. Pipelines
// sent after it run on goroutines of their own.
func (c *coalescer) close() {
	c.stopOnce.Do(func() { close(c.stop) })
}

// do sends j's calls, alone or with others, and returns when j.replies are set, or
// with an error when its calls were never sent: its deadline passed, or ctx
// ended, while it waited for a pipeline. Once they are sent, j waits for their
// answers, which a pipeline bounds by the earliest deadline of its callers.
// deadline is not zero.
//
// A call of a burst on a listener's reader (burst.Park) parks j instead: the
// burst's jobs go out together when it is read (SendParked).
func (c *coalescer) do(ctx context.Context, deadline time.Time, j *job) error {
	j.ctx, j.deadline = ctx, deadline
	if burst.Park(ctx, c, j) {
		return j.outcome()
	}
	c.mu.Lock()
	if n := len(c.free); n > 0 {
		// A free slot means an empty queue (next empties it before freeing one),
		// so this pipeline carries j alone, under j's own context.
		s := c.free[n-1]
		c.free = c.free[:n-1]
		c.mu.Unlock()
		j.state.Store(jobTaken)
		j.alone[0] = j
		c.send(ctx, deadline, s, j.alone[:])
		j.alone[0] = nil
		// Calls that queued meanwhile go out on another goroutine (goDrain), so
		// that this caller answers now rather than after another round trip.
		if next := c.next(s); next != nil {
			c.goDrain(s, next)
		}
		return nil
	}
	c.queueLocked(j)
	c.mu.Unlock()
	// A caller's context ending is seen when a pipeline comes back or the
	// deadline passes, not at once: waiting on its Done would arm a timer per
	// call (see lazyctx).
	<-j.wake
	return j.outcome()
}

// queueLocked queues j, whose ctx and deadline are set, for the next pipeline.
func (c *coalescer) queueLocked(j *job) {
	if j.wake == nil {
		j.wake = make(chan struct{}, 1)
	}
	j.queued = true
	c.queue = append(c.queue, j)
	if c.expiryAt.IsZero() || j.deadline.Before(c.expiryAt) {
		c.expiryAt = j.deadline
		c.expiry.Reset(time.Until(j.deadline))
	}
}

// outcome is what became of j, sent or not, once its wait has ended.
func (j *job) outcome() error {
	switch j.state.Load() {
	case jobExpired:
		return context.DeadlineExceeded
	case jobAbandoned:
		return j.ctx.Err()
	}
	return nil
}

// SendParked implements burst.Sender: the jobs that the calls of one burst
// parked (see do) go out in one pipeline when a slot is free (more than one
// when they pass maxBatch), under the earliest of their deadlines, and queue
// for the next pipeline to come back otherwise. It returns when each has its
// answers or has ended unsent (its deadline passed, or its caller went, before
// it was sent).
func (c *coalescer) SendParked(items []any) {
	batch := make([]*job, 0, len(items))
	now := time.Now()
	c.mu.Lock()
	for _, it := range items {
		j := it.(*job)
		if !c.endedLocked(j, now) {
			batch = append(batch, j)
		}
	}
	n := len(c.free)
	if n == 0 {
		for _, j := range batch {
			c.queueLocked(j)
		}
		c.mu.Unlock()
		for _, j := range batch {
			<-j.wake
		}
		return
	}
	if len(batch) == 0 {
		c.mu.Unlock()
		return
	}
	s := c.free[n-1]
	c.free = c.free[:n-1]
	for _, j := range batch {
		j.state.Store(jobTaken)
	}
	c.mu.Unlock()
	for len(batch) > 0 {
		k, calls := 1, len(batch[0].pending)
		for k < len(batch) && calls+len(batch[k].pending) <= maxBatch {
			calls += len(batch[k].pending)
			k++
		}
		c.sendShared(s, batch[:k])
		batch = batch[k:]
	}
	if next := c.next(s); next != nil {
		c.goDrain(s, next)
	}
}

// goDrain drains batch and the queue on s on another goroutine, so that its
// caller answers now: an idle drainer's when one waits, else a new drainer.
// A new goroutine's stack starts small and is copied as a pipeline's calls
// deepen it, each time: 1–2% of the server's CPU at 10k checks/s on Redis
// went to that before drainers were kept.
func (c *coalescer) goDrain(s *slot, batch []*job) {
	select {
	case c.drains <- drainWork{s, batch}:
		return
	default:
	}
	select {
	case <-c.stop:
		go c.drain(s, batch)
		return
	default:
	}
	if c.drainers.Add(1) <= c.maxDrain {
		go c.drainer(s, batch)
		return
	}
	// Every drainer is busy, or finishing a drain and about to wait: this
	// one drain runs on a goroutine of its own.
	c.drainers.Add(-1)
	go c.drain(s, batch)
}

// drainer drains what it is handed until the coalescer closes.
func (c *coalescer) drainer(s *slot, batch []*job) {
	defer c.drainers.Add(-1)
	for {
		c.drain(s, batch)
		// An idle drainer holds no job: its callers have returned them.
		s, batch = nil, nil
		select {
		case w := <-c.drains:
			s, batch = w.s, w.batch
		case <-c.stop:
			return
		}
	}
}

// drain sends batch on s, and whatever queues behind it, until the queue is
// empty.
func (c *coalescer) drain(s *slot, batch []*job) {
	for batch != nil {
		c.sendShared(s, batch)
		batch = c.next(s)
	}
}

// sendShared sends the jobs of several callers under the earliest of their
// deadlines, so that no caller waits past its own, and under none of their
// cancellations, so that one caller going away does not fail the others.
func (c *coalescer) sendShared(s *slot, batch []*job) {
	earliest := batch[0].deadline
	for _, j := range batch[1:] {
		if j.deadline.Before(earliest) {
			earliest = j.deadline
		}
	}
	c.send(context.Background(), earliest, s, batch)
}

// next takes the queued jobs for the pipeline slot s, which the caller holds, or
// frees s when none are queued.
func (c *coalescer) next(s *slot) []*job {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.takeLocked(); len(b) > 0 {
		return b
	}
	c.free = append(c.free, s)
	return nil
}

// takeLocked removes from the queue the jobs of one pipeline, ending the wait of
// those whose deadlines have passed or whose callers have gone.
func (c *coalescer) takeLocked() []*job {
	var batch []*job
	calls, n := 0, 0
	now := time.Now()
	for _, j := range c.queue {
		if len(batch) > 0 && calls+len(j.pending) > maxBatch {
			break
		}
		n++
		if c.endedLocked(j, now) {
			continue
		}
		j.state.Store(jobTaken)
		batch = append(batch, j)
		calls += len(j.pending)
	}
	rest := copy(c.queue, c.queue[n:])
	clear(c.queue[rest:])
	c.queue = c.queue[:rest]
	return batch
}

// endedLocked ends the wait of queued job j, never to be sent, if its deadline
// has passed by now or its caller's context has ended, and reports whether it did.
func (c *coalescer) endedLocked(j *job, now time.Time) bool {
	switch {
	case !now.Before(j.deadline):
		j.state.Store(jobExpired)
	case j.ctx.Err() != nil:
		j.state.Store(jobAbandoned)
	default:
		return false
	}
	j.woken()
	return true
}

// expire ends the wait of the queued jobs whose deadlines have passed, and arms
// the timer for the earliest deadline still queued.
func (c *coalescer) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	var earliest time.Time
	kept := c.queue[:0]
	for _, j := range c.queue {
		if c.endedLocked(j, now) {
			continue
		}
		kept = append(kept, j)
		if earliest.IsZero() || j.deadline.Before(earliest) {
			earliest = j.deadline
		}
	}
	clear(c.queue[len(kept):])
	c.queue = kept
	c.expiryAt = earliest
	if !earliest.IsZero() {
		c.expiry.Reset(time.Until(earliest))
	}
}
