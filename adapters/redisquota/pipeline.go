package redisquota

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
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
	jobQueued int32 = iota // waiting for a pipeline
	jobTaken               // in a pipeline: its caller waits for the answers
	jobGone                // its caller gave up first: it is never sent
)

// job is one Allow call's script calls waiting for a pipeline.
type job struct {
	ops      []op
	pending  []int         // indexes into ops of the calls to send
	cmds     []*redis.Cmd  // one per pending; set before done is closed
	done     chan struct{} // made only for a job that queues: a sender never waits
	deadline time.Time     // the caller's; zero for none
	// state moves from queued to taken or to gone, once, so that a call is
	// counted in Redis if and only if its caller reads Redis's answer.
	state atomic.Int32
}

// coalescer merges the script calls of concurrent Allow calls into shared
// pipelines. A call that finds fewer than limit pipelines in flight sends its own
// at once; a call that finds them all out queues, and the next pipeline to come
// back sends everything queued, together. An idle handler therefore adds no delay,
// and a busy one pays one write and one read per round trip, on Sluice's side and
// on Redis's, instead of one per check.
type coalescer struct {
	// send runs the calls of jobs in one pipeline, bounded by ctx, and fills each
	// job's cmds and closes its done, if it has one.
	send  func(ctx context.Context, jobs []*job)
	limit int

	mu       sync.Mutex
	queue    []*job
	inFlight int
}

func newCoalescer(limit int, send func(context.Context, []*job)) *coalescer {
	if limit <= 0 {
		limit = DefaultMaxInFlight
	}
	return &coalescer{send: send, limit: limit}
}

// do sends j's calls, alone or with others, and returns when j.cmds are set. If
// ctx ends while j still waits for a pipeline, do returns ctx's error and j's
// calls are never sent; once they are sent, j waits for their answers, which a
// shared pipeline bounds by the earliest deadline of its callers.
func (c *coalescer) do(ctx context.Context, j *job) error {
	c.mu.Lock()
	if c.inFlight < c.limit {
		// A free slot means an empty queue (next empties it before freeing one),
		// so this pipeline carries j alone, under j's own context.
		c.inFlight++
		c.mu.Unlock()
		j.state.Store(jobTaken)
		c.send(ctx, []*job{j})
		// Calls that queued meanwhile go out on a goroutine of their own, so that
		// this caller answers now rather than after another round trip.
		if next := c.next(); next != nil {
			go c.drain(next)
		}
		return nil
	}
	j.done = make(chan struct{})
	j.deadline, _ = ctx.Deadline()
	c.queue = append(c.queue, j)
	c.mu.Unlock()
	select {
	case <-j.done:
		return nil
	case <-ctx.Done():
		if j.state.CompareAndSwap(jobQueued, jobGone) {
			return ctx.Err()
		}
		<-j.done // taken meanwhile: its answers are on their way
		return nil
	}
}

// drain sends batch and whatever queues behind it, until the queue is empty.
func (c *coalescer) drain(batch []*job) {
	for batch != nil {
		c.sendShared(batch)
		batch = c.next()
	}
}

// sendShared sends the jobs of several callers under the earliest of their
// deadlines, so that no caller waits past its own, and under none of their
// cancellations, so that one caller going away does not fail the others.
func (c *coalescer) sendShared(batch []*job) {
	var earliest time.Time
	for _, j := range batch {
		if !j.deadline.IsZero() && (earliest.IsZero() || j.deadline.Before(earliest)) {
			earliest = j.deadline
		}
	}
	ctx, cancel := context.Background(), context.CancelFunc(func() {})
	if !earliest.IsZero() {
		ctx, cancel = context.WithDeadline(ctx, earliest)
	}
	defer cancel()
	c.send(ctx, batch)
}

// next takes the queued jobs for the pipeline slot the caller holds, or gives the
// slot back when none are queued.
func (c *coalescer) next() []*job {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.takeLocked(); len(b) > 0 {
		return b
	}
	c.inFlight--
	return nil
}

// takeLocked removes from the queue the jobs of one pipeline, dropping those whose
// callers are gone.
func (c *coalescer) takeLocked() []*job {
	var batch []*job
	calls, n := 0, 0
	for _, j := range c.queue {
		if len(batch) > 0 && calls+len(j.pending) > maxBatch {
			break
		}
		n++
		if j.state.CompareAndSwap(jobQueued, jobTaken) {
			batch = append(batch, j)
			calls += len(j.pending)
		}
	}
	rest := copy(c.queue, c.queue[n:])
	clear(c.queue[rest:])
	c.queue = c.queue[:rest]
	return batch
}
