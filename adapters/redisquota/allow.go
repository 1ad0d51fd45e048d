package redisquota

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/templates/quota"
)

// Key prefixes, one per algorithm: the same limit key counted by two algorithms
// has two states, of different Redis types.
const (
	fixedPrefix   = "sluice:fw:"
	slidingPrefix = "sluice:sw:"
	bucketPrefix  = "sluice:tb:"
)

// op is one request planned as a script call.
type op struct {
	alg    quota.Algorithm
	script *redis.Script
	keys   []string // in keyBuf
	args   []any    // in argBuf
	deny   quotakit.DenyKey
	start  int64               // fixed window: the window's start (µs)
	scale  quotakit.TokenScale // token bucket
	// Storage for keys and args, reused with the op's job.
	keyBuf [2]string
	argBuf [7]any
}

// Allow implements quota.RateLimiter: the requests not answered by the local cache
// of denied keys go to Redis in one pipeline, one script call each, in order (so a
// request that repeats an earlier key of the batch sees that request's hits); the
// pipeline may also carry the calls of concurrent Allows (see coalescer). When
// Redis fails or is slower than the timeout, they are decided by the fail policy.
func (h *Handler) Allow(ctx context.Context, now time.Time, reqs []quota.Request, out []quota.Decision) error {
	if len(out) < len(reqs) {
		return fmt.Errorf("redisquota: %d decisions for %d requests", len(out), len(reqs))
	}
	at := quotakit.Micros(now)
	j := h.newJob(len(reqs))
	ops := j.ops
	for i := range reqs {
		r := &reqs[i]
		if err := h.plan(&ops[i], r, at); err != nil {
			h.releaseJob(j)
			return fmt.Errorf("redisquota: plan request %d (key %q): %w", i, r.Key, err)
		}
		if d, ok := h.cache.Lookup(ops[i].deny, r.Hits, at); ok {
			out[i] = d
			continue
		}
		j.pending = append(j.pending, i)
	}
	pending := j.pending
	if len(pending) == 0 {
		h.releaseJob(j)
		return nil
	}
	wctx, cancel := h.guard.Context(ctx)
	err := h.pipes.do(wctx, j)
	cancel()
	if err != nil {
		// The job may still sit in the coalescer's queue, gone: it is not reused.
		return h.guard.Fail(ctx, fmt.Errorf("wait for a Redis pipeline: %w", err), reqs, out, pending)
	}
	defer h.releaseJob(j)
	cmds := j.cmds
	var failed []int
	var failure error
	for j, i := range pending {
		d, denyUntil, err := decode(&ops[i], &reqs[i], cmds[j], at)
		if err != nil {
			failed = append(failed, i)
			failure = err
			continue
		}
		out[i] = d
		// A fixed window's denial holds for requests of any hits until it resets.
		h.cache.Add(ops[i].deny, denyUntil, ops[i].alg == quota.FixedWindow, at)
	}
	if len(failed) == 0 {
		h.guard.Succeeded()
	}
	return h.guard.Fail(ctx, failure, reqs, out, failed)
}

// newJob returns a job, reused when one is free, with n zero ops and no pending
// calls.
func (h *Handler) newJob(n int) *job {
	j, _ := h.jobs.Get().(*job)
	if j == nil {
		j = &job{}
	}
	j.ops = slices.Grow(j.ops[:0], n)[:n]
	j.pending = slices.Grow(j.pending[:0], n)
	return j
}

// releaseJob makes a job whose calls were answered, or never sent, free for reuse.
// A job its caller gave up on while it was queued is not released: the queue may
// still hold it.
func (h *Handler) releaseJob(j *job) {
	if cap(j.ops) > maxBatch {
		return // an outsized batch does not pin its memory
	}
	clear(j.ops) // the keys, scripts and arguments go with it
	clear(j.cmds)
	j.ops, j.pending, j.cmds = j.ops[:0], j.pending[:0], j.cmds[:0]
	j.done, j.deadline = nil, time.Time{}
	j.state.Store(jobQueued)
	h.jobs.Put(j)
}

// batch is the storage of one pipeline's calls, reused across pipelines.
type batch struct {
	calls []*op
	cmds  []*redis.Cmd
}

// sendJobs runs the calls of jobs in one pipeline, in order, and hands each job
// its answers.
func (h *Handler) sendJobs(ctx context.Context, jobs []*job) {
	b, _ := h.batches.Get().(*batch)
	if b == nil {
		b = &batch{}
	}
	for _, j := range jobs {
		for _, i := range j.pending {
			b.calls = append(b.calls, &j.ops[i])
		}
	}
	b.cmds = h.run(ctx, b.calls, b.cmds[:0])
	h.pipelineCalls.Observe(float64(len(b.calls)))
	cmds := b.cmds
	for _, j := range jobs {
		j.cmds = append(j.cmds[:0], cmds[:len(j.pending)]...)
		cmds = cmds[len(j.pending):]
		if j.done != nil {
			close(j.done)
		}
	}
	if cap(b.calls) <= maxBatch {
		clear(b.calls)
		clear(b.cmds)
		b.calls, b.cmds = b.calls[:0], b.cmds[:0]
		h.batches.Put(b)
	}
}

// run sends script calls in one pipeline, bounded by ctx, their commands appended
// to cmds: Allow's carries the handler's timeout, and a shared pipeline the
// earliest deadline of its callers. Scripts that Redis does not have cached (it
// restarted, or its cache was flushed) did not run; they are sent again in full,
// in a second pipeline.
func (h *Handler) run(ctx context.Context, calls []*op, cmds []*redis.Cmd) []*redis.Cmd {
	cmds = slices.Grow(cmds[:0], len(calls))[:len(calls)]
	pipe := h.client.Pipeline()
	for j, o := range calls {
		cmds[j] = o.script.EvalSha(ctx, pipe, o.keys, o.args...)
	}
	if _, err := pipe.Exec(ctx); err == nil {
		return cmds
	}
	var retry []int
	for j, c := range cmds {
		if err := c.Err(); errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT") {
			retry = append(retry, j)
		}
	}
	if len(retry) == 0 {
		return cmds
	}
	pipe = h.client.Pipeline()
	for _, j := range retry {
		o := calls[j]
		cmds[j] = o.script.Eval(ctx, pipe, o.keys, o.args...)
	}
	_, _ = pipe.Exec(ctx) // errors are read per command
	return cmds
}

// plan turns a request into its script call: keys, arguments and what decoding the
// answer needs.
func (h *Handler) plan(o *op, r *quota.Request, now int64) error {
	l := r.Limit
	if err := quotakit.CheckLimit(l); err != nil {
		return err
	}
	w := l.Window.Microseconds()
	slack := keySlack.Milliseconds()
	var buf [128]byte
	switch l.Algorithm {
	case "", quota.FixedWindow:
		o.start = quotakit.FixedWindowStart(now, w)
		b := quotakit.AppendClusterKey(buf[:0], fixedPrefix, r.Key)
		b = strconv.AppendInt(append(b, ':'), w, 10)
		b = strconv.AppendInt(append(b, ':'), o.start, 10)
		ttl := (o.start+w-now+999)/1000 + slack + h.expiryJitter(b, w)
		o.script = h.fixed
		o.keys = append(o.keyBuf[:0], string(b))
		o.args = append(o.argBuf[:0], quotakit.FixedIncrement(l, r.Hits), ttl)
	case quota.SlidingWindow:
		b := quotakit.AppendClusterKey(buf[:0], slidingPrefix, r.Key)
		n := len(b)
		log := string(append(b, ":log"...))
		hits := string(append(b[:n], ":hits"...))
		o.script = h.sliding
		o.keys = append(o.keyBuf[:0], log, hits)
		o.args = append(o.argBuf[:0], now, w, l.Requests, min(r.Hits, l.Requests+1), quotakit.SlidingQuantum(l), slack)
	case quota.TokenBucket:
		s, err := quotakit.NewTokenScale(l)
		if err != nil {
			return err
		}
		o.scale = s
		b := quotakit.AppendClusterKey(buf[:0], bucketPrefix, r.Key)
		b = strconv.AppendUint(append(b, ':'), l.Requests, 10)
		b = strconv.AppendInt(append(b, ':'), w, 10)
		o.script = h.bucket
		o.keys = append(o.keyBuf[:0], string(b))
		o.args = append(o.argBuf[:0], s.Now(now), s.Capacity, s.PerUnit, s.Window, s.Cost(r.Hits), s.Unit, slack)
	}
	o.alg = l.Algorithm
	if o.alg == "" {
		o.alg = quota.FixedWindow
	}
	o.deny = quotakit.DenyKey{Key: o.keys[0], Requests: l.Requests}
	return nil
}

// expiryJitter is how many milliseconds past its window and keySlack the fixed
// window counter key lives: a share, which the key's hash chooses, of
// min(window, maxExpiryJitter), the window given in µs (see maxExpiryJitter).
func (h *Handler) expiryJitter(key []byte, window int64) int64 {
	span := min(window, maxExpiryJitter.Microseconds()) / 1000
	if span <= 0 {
		return 0
	}
	return int64(maphash.Bytes(h.seed, key) % uint64(span))
}

// decode reads a script's answer into a decision and the time until which every
// hit of the key is denied (0 for none).
func decode(o *op, r *quota.Request, c *redis.Cmd, now int64) (quota.Decision, int64, error) {
	if err := c.Err(); err != nil {
		return quota.Decision{}, 0, err
	}
	l := r.Limit
	switch o.alg {
	case quota.SlidingWindow:
		v, err := c.Int64Slice()
		if err != nil || len(v) != 4 {
			return quota.Decision{}, 0, fmt.Errorf("sliding window script answered %v: %w", c.Val(), errOr(err))
		}
		return quotakit.SlidingDecision(l, v[0] == 1, uint64(v[1]), v[2], now), v[3], nil
	case quota.TokenBucket:
		v, err := c.Int64Slice()
		if err != nil || len(v) != 3 {
			return quota.Decision{}, 0, fmt.Errorf("token bucket script answered %v: %w", c.Val(), errOr(err))
		}
		d, denyUntil := o.scale.Decision(v[0] == 1, uint64(v[1]), v[2], r.Hits, now, l.Window)
		return d, denyUntil, nil
	}
	n, err := c.Int64()
	if err != nil || n < 0 {
		return quota.Decision{}, 0, fmt.Errorf("fixed window script answered %v: %w", c.Val(), errOr(err))
	}
	d, denyUntil := quotakit.FixedDecision(l, uint64(n), o.start, now)
	return d, denyUntil, nil
}

var errUnexpected = errors.New("unexpected answer")

func errOr(err error) error {
	if err != nil {
		return err
	}
	return errUnexpected
}
