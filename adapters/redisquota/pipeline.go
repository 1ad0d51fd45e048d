package redisquota

import (
	"context"
	"slices"
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
	jobQueued  int32 = iota // waiting for a pipeline
	jobTaken                // in a pipeline: its caller waits for the answers
	jobGone                 // its caller gave up first: it is never sent
	jobExpired              // its deadline passed before a pipeline took it: never sent
)

// job is one Allow call's script calls waiting for a pipeline.
type job struct {
	ops     []op
	pending []int         // indexes into ops of the calls to send
	cmds    []*redis.Cmd  // one per pending; set before done is closed
	done    chan struct{} // made only for a job that queues: a sender never waits
	// deadline is when the caller's calls must be answered by: the handler's
	// timeout or the caller's own deadline, whichever comes first.
	deadline time.Time
	// state moves from queued to taken, gone or expired, once, so that a call is
	// counted in Redis if and only if its caller reads Redis's answer.
	state atomic.Int32
}

// coalescer merges the script calls of concurrent Allow calls into shared
// pipelines. A call that finds fewer than limit pipelines in flight sends its own
// at once; a call that finds them all out queues, and the next pipeline to come
// back sends everything queued, together. An idle handler therefore adds no delay,
// and a busy one pays one write and one read per round trip, on Sluice's side and
// on Redis's, instead of one per check.
//
// Each pipeline in flight holds a slot: a connection of its own and the storage
// its calls reuse.
type coalescer struct {
	// send runs the calls of jobs in one pipeline on slot s, bounded by ctx, and
	// fills each job's cmds and closes its done, if it has one.
	send func(ctx context.Context, s *slot, jobs []*job)

	mu    sync.Mutex
	queue []*job
	free  []*slot // the slots no pipeline holds
}

func newCoalescer(slots []*slot, send func(context.Context, *slot, []*job)) *coalescer {
	return &coalescer{send: send, free: slices.Clone(slots)}
}

// do sends j's calls, alone or with others, and returns when j.cmds are set, or
// with an error when its calls were never sent: ctx ended, or deadline passed,
// while j waited for a pipeline. Once they are sent, j waits for their answers,
// which a pipeline bounds by the earliest deadline of its callers.
//
// A job that waits is bounded by deadline without a timer of its own: the
// pipelines in flight carry earlier deadlines than the handler's timeout from
// now, and when one comes back, a job whose deadline has passed is expired
// rather than sent. A caller's own earlier deadline ends its ctx.
func (c *coalescer) do(ctx context.Context, deadline time.Time, j *job) error {
	c.mu.Lock()
	if n := len(c.free); n > 0 {
		// A free slot means an empty queue (next empties it before freeing one),
		// so this pipeline carries j alone, under j's own context.
		s := c.free[n-1]
		c.free = c.free[:n-1]
		c.mu.Unlock()
		j.state.Store(jobTaken)
		sctx, dc := withDeadline(ctx, deadline)
		c.send(sctx, s, []*job{j})
		dc.release()
		// Calls that queued meanwhile go out on a goroutine of their own, so that
		// this caller answers now rather than after another round trip.
		if next := c.next(s); next != nil {
			go c.drain(s, next)
		}
		return nil
	}
	j.done = make(chan struct{})
	j.deadline = deadline
	c.queue = append(c.queue, j)
	c.mu.Unlock()
	select {
	case <-j.done:
		if j.state.Load() == jobExpired {
			return context.DeadlineExceeded
		}
		return nil
	case <-ctx.Done():
		if j.state.CompareAndSwap(jobQueued, jobGone) {
			return ctx.Err()
		}
		<-j.done // taken meanwhile: its answers are on their way
		if j.state.Load() == jobExpired {
			return context.DeadlineExceeded
		}
		return nil
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
	var earliest time.Time
	for _, j := range batch {
		if !j.deadline.IsZero() && (earliest.IsZero() || j.deadline.Before(earliest)) {
			earliest = j.deadline
		}
	}
	ctx, dc := withDeadline(context.Background(), earliest)
	c.send(ctx, s, batch)
	dc.release()
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

// takeLocked removes from the queue the jobs of one pipeline, dropping those whose
// callers are gone and expiring those whose deadlines have passed.
func (c *coalescer) takeLocked() []*job {
	var batch []*job
	calls, n := 0, 0
	now := time.Now()
	for _, j := range c.queue {
		if len(batch) > 0 && calls+len(j.pending) > maxBatch {
			break
		}
		n++
		if !j.deadline.IsZero() && !now.Before(j.deadline) {
			if j.state.CompareAndSwap(jobQueued, jobExpired) {
				close(j.done)
			}
			continue
		}
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
