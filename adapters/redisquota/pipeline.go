package redisquota

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// DefaultMaxInFlight is how many pipelines a handler keeps in flight to Redis at
// most; decisions that arrive while they are all out share the next one.
const DefaultMaxInFlight = 2

// maxBatch bounds the script calls of one shared pipeline, so that one round trip
// carries a bounded amount of work however long the queue grows.
const maxBatch = 256

// job is one Allow call's script calls waiting for a pipeline.
type job struct {
	ops     []op
	pending []int        // indexes into ops of the calls to send
	cmds    []*redis.Cmd // one per pending; set before done is closed
	done    chan struct{}
	// gone says the caller stopped waiting (its deadline passed): its calls are
	// not worth sending any more, and sending them would count hits nobody uses.
	gone atomic.Bool
}

// coalescer merges the script calls of concurrent Allow calls into shared
// pipelines. A call that finds fewer than limit pipelines in flight sends at once,
// together with every call that is waiting; a call that finds them all out waits,
// and the next pipeline to come back sends everything that waited. An idle handler
// therefore adds no delay, and a busy one pays one write and one read per round
// trip, on Sluice's side and on Redis's, instead of one per check.
type coalescer struct {
	// send runs the calls of jobs in one pipeline and fills each job's cmds.
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

// do sends j's calls, alone or with others, and returns when j.cmds are set or ctx
// ends first (then with ctx's error, and j.cmds unset).
func (c *coalescer) do(ctx context.Context, j *job) error {
	j.done = make(chan struct{})
	c.mu.Lock()
	if c.inFlight == c.limit {
		c.queue = append(c.queue, j)
		c.mu.Unlock()
		select {
		case <-j.done:
			return nil
		case <-ctx.Done():
			j.gone.Store(true)
			return ctx.Err()
		}
	}
	c.inFlight++
	batch := append([]*job{j}, c.takeLocked()...)
	c.mu.Unlock()
	// The pipeline carries others' calls too: this caller going away must not
	// cancel it. The handler's timeout still bounds it.
	bctx := context.WithoutCancel(ctx)
	c.send(bctx, batch)
	// Calls that queued meanwhile go out on a goroutine of their own, so that this
	// caller answers now rather than after another round trip.
	if next := c.next(); next != nil {
		go c.drain(bctx, next)
	}
	return nil
}

// drain sends batch and whatever queues behind it, until the queue is empty.
func (c *coalescer) drain(ctx context.Context, batch []*job) {
	for batch != nil {
		c.send(ctx, batch)
		batch = c.next()
	}
}

// next takes the waiting jobs for the pipeline slot the caller holds, or gives the
// slot back when none wait.
func (c *coalescer) next() []*job {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.takeLocked(); len(b) > 0 {
		return b
	}
	c.inFlight--
	return nil
}

// takeLocked removes from the queue the jobs of one pipeline, skipping those whose
// callers are gone.
func (c *coalescer) takeLocked() []*job {
	var batch []*job
	calls := 0
	n := 0
	for _, j := range c.queue {
		if calls >= maxBatch {
			break
		}
		n++
		if j.gone.Load() {
			close(j.done)
			continue
		}
		batch = append(batch, j)
		calls += len(j.pending)
	}
	rest := copy(c.queue, c.queue[n:])
	clear(c.queue[rest:])
	c.queue = c.queue[:rest]
	return batch
}
