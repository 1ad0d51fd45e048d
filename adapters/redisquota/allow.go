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
// has two states, of different Redis types. A bucket's time is in µs under
// sluice:tb2:; the buckets of earlier versions, under sluice:tb:, kept it in the
// scale's units, and are left to expire rather than misread (see
// tokenBucketScript).
const (
	fixedPrefix   = "sluice:fw:"
	slidingPrefix = "sluice:sw:"
	bucketPrefix  = "sluice:tb2:"
)

// op is one request planned as a script call.
type op struct {
	alg    quota.Algorithm
	script *script
	keys   []string // in keyBuf
	// cmd is the command's arguments, in cmdBuf: the verb and the script (EVALSHA
	// and its digest, or EVAL and its source) are set when it is sent; then the
	// number of keys, pointers to the keys and pointers to the script's arguments
	// (in nums): the Redis client writes what they point at, so building a
	// command boxes nothing.
	cmd   []any
	nums  [7]int64
	deny  quotakit.DenyKey
	start int64               // fixed window: the window's start (µs)
	scale quotakit.TokenScale // token bucket
	// Storage for keys and the command, reused with the op's job.
	keyBuf [2]string
	cmdBuf [3 + 2 + 7]any
}

// command starts o's command with its keys, which plan has set.
func (o *op) command() {
	o.cmd = append(o.cmdBuf[:0], nil, nil, len(o.keys))
	for i := range o.keys {
		o.cmd = append(o.cmd, &o.keys[i])
	}
}

// arg appends a script argument to o's command.
func (o *op) arg(v int64) {
	n := len(o.cmd) - 3 - len(o.keys)
	o.nums[n] = v
	o.cmd = append(o.cmd, &o.nums[n])
}

// script is a Lua script, with its EVALSHA and EVAL arguments boxed once (for
// go-redis's commands) and as strings (for respConn's).
type script struct {
	*redis.Script
	sha, src       any
	digest, source string
}

func newScript(src string) *script {
	s := redis.NewScript(src)
	return &script{Script: s, sha: s.Hash(), src: src, digest: s.Hash(), source: src}
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
	if err := h.pipes.do(ctx, h.guard.Deadline(ctx), j); err != nil {
		err = h.guard.Fail(ctx, fmt.Errorf("wait for a Redis pipeline: %w", err), reqs, out, pending)
		h.releaseJob(j)
		return err
	}
	defer h.releaseJob(j)
	replies := j.replies
	var failed []int
	var failure error
	for j, i := range pending {
		d, denyUntil, err := decode(&ops[i], &reqs[i], &replies[j], at)
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

// releaseJob makes a job whose calls were answered, or never sent, free for reuse:
// the coalescer holds no job once its caller has returned.
func (h *Handler) releaseJob(j *job) {
	if cap(j.ops) > maxBatch {
		return // an outsized batch does not pin its memory
	}
	clear(j.ops) // the keys, scripts and arguments go with it
	clear(j.replies)
	j.ops, j.pending, j.replies = j.ops[:0], j.pending[:0], j.replies[:0]
	j.ctx, j.deadline, j.queued = nil, time.Time{}, false
	j.state.Store(jobQueued)
	h.jobs.Put(j)
}

// slot is what one pipeline in flight holds: a connection of its own, and the
// storage its calls reuse.
type slot struct {
	// rc is the slot's connection to a single Redis server, dialed when first
	// needed and replaced when it fails; nil with a Redis Cluster, whose
	// go-redis client routes each pipeline (pipe) over its pools.
	rc       *respConn
	pipe     redis.Pipeliner
	lastUsed time.Time

	calls   []*op
	replies []reply
	// For a Redis Cluster's pipelines, and for the calls sent again in full.
	cmds    []*redis.Cmd
	cmders  []redis.Cmder
	retry   []*op
	retried []reply
}

// slotIdle is how long a slot uses its connection without a look at it: one
// idle longer is first checked for a close by Redis meanwhile (a restart, a
// timeout), so that such a connection is replaced rather than found closed by a
// decision failing.
const slotIdle = time.Second

func newSlots(n int) []*slot {
	if n <= 0 {
		n = DefaultMaxInFlight
	}
	slots := make([]*slot, n)
	for i := range slots {
		slots[i] = &slot{}
	}
	return slots
}

// sendJobs runs the calls of jobs in one pipeline on s, in order, and hands each
// job its answers.
func (h *Handler) sendJobs(ctx context.Context, deadline time.Time, s *slot, jobs []*job) {
	for _, j := range jobs {
		for _, i := range j.pending {
			s.calls = append(s.calls, &j.ops[i])
		}
	}
	h.run(ctx, deadline, s)
	h.pipelineCalls.Observe(float64(len(s.calls)))
	replies := s.replies
	for _, j := range jobs {
		j.replies = append(j.replies[:0], replies[:len(j.pending)]...)
		replies = replies[len(j.pending):]
		j.woken()
	}
	if cap(s.calls) > maxBatch {
		s.calls, s.replies = nil, nil // an outsized batch does not pin its memory
		s.cmds, s.cmders, s.retry, s.retried = nil, nil, nil, nil
		return
	}
	clear(s.calls)
	clear(s.replies)
	clear(s.cmds)
	clear(s.cmders)
	clear(s.retry)
	s.calls, s.replies, s.cmds, s.cmders, s.retry = s.calls[:0], s.replies[:0], s.cmds[:0], s.cmders[:0], s.retry[:0]
}

// run sends the script calls of s in one pipeline, bounded by deadline,
// and leaves their answers in s.replies: Allow's pipeline carries its deadline,
// and a shared one the earliest deadline of its callers. Scripts that Redis does
// not have cached (it restarted, or its cache was flushed) did not run; they are
// sent again in full, in a second pipeline.
func (h *Handler) run(ctx context.Context, deadline time.Time, s *slot) {
	n := len(s.calls)
	s.replies = slices.Grow(s.replies[:0], n)[:n]
	h.exec(ctx, deadline, s, time.Now(), s.calls, false, s.replies)
	s.retry = s.retry[:0]
	for j, r := range s.replies {
		if noScript(r.err) {
			s.retry = append(s.retry, s.calls[j])
		}
	}
	if len(s.retry) == 0 {
		return
	}
	// Redis lost its scripts (a restart, a failover, SCRIPT FLUSH): counted, as
	// each costs a round trip more, and many mean a Redis that keeps losing them.
	h.env.Stats.Error(reasonScriptMissing)
	s.retried = slices.Grow(s.retried[:0], len(s.retry))[:len(s.retry)]
	h.exec(ctx, deadline, s, time.Now(), s.retry, true, s.retried)
	k := 0
	for j := range s.replies {
		if noScript(s.replies[j].err) {
			s.replies[j] = s.retried[k]
			k++
		}
	}
}

// exec sends calls in one pipeline on s, by EVALSHA or (eval) EVAL, and leaves
// their answers in replies; now is the time it starts.
func (h *Handler) exec(ctx context.Context, deadline time.Time, s *slot, now time.Time, calls []*op, eval bool, replies []reply) {
	if !deadline.IsZero() && !now.Before(deadline) {
		// Too late already (a caller's deadline ran out before its call got
		// here, or a retry after a pipeline that timed out): a write past its
		// deadline fails without sending and would cost the slot its connection,
		// and a dial would hold back the next ones for nothing.
		fill(replies, context.DeadlineExceeded)
		return
	}
	// A pipeline that never left is no round trip; one that failed is, for
	// the time it held its callers.
	defer func() { h.roundTrips.Observe(time.Since(now).Seconds()) }()
	if h.dialer == nil {
		cctx, dc := withDeadline(ctx, deadline)
		h.execCluster(cctx, s, calls, eval, replies)
		dc.Cancel()
		return
	}
	if s.rc != nil && now.Sub(s.lastUsed) > slotIdle && !s.rc.alive() {
		h.dialer.forget(s.rc)
		s.rc = nil
	}
	if s.rc == nil {
		rc, err := h.dialer.dial(ctx, deadline)
		if err != nil {
			fill(replies, err)
			return
		}
		s.rc = rc
	}
	s.lastUsed = now
	if err := s.rc.exec(deadline, calls, eval, replies); err != nil {
		// A connection that failed or timed out may hold a late answer, or
		// none: it is not used again.
		h.dialer.forget(s.rc)
		s.rc = nil
	}
}

// execCluster is exec through a Redis Cluster's go-redis client.
func (h *Handler) execCluster(ctx context.Context, s *slot, calls []*op, eval bool, replies []reply) {
	if s.pipe == nil {
		s.pipe = h.client.Pipeline()
	}
	s.cmds = slices.Grow(s.cmds[:0], len(calls))[:len(calls)]
	s.cmders = slices.Grow(s.cmders[:0], len(calls))[:len(calls)]
	for j, o := range calls {
		if eval {
			s.cmds[j] = newCmd(ctx, o, "eval", o.script.src)
		} else {
			s.cmds[j] = newCmd(ctx, o, "evalsha", o.script.sha)
		}
		s.cmders[j] = s.cmds[j]
	}
	_ = s.pipe.BatchProcess(ctx, s.cmders...)
	_, _ = s.pipe.Exec(ctx) // errors are read per command
	for j, c := range s.cmds {
		replies[j] = fromCmd(c)
	}
}

// newCmd is o's command run by verb (EVALSHA or EVAL) with script (its digest or
// its source), both boxed already: a constant verb boxes without an allocation.
// Its first key is its fourth argument, which Redis Cluster routes by.
func newCmd(ctx context.Context, o *op, verb, script any) *redis.Cmd {
	o.cmd[0], o.cmd[1] = verb, script
	c := redis.NewCmd(ctx, o.cmd...)
	c.SetFirstKeyPos(3)
	return c
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
	id := quotakit.BoundKey(r.Key) // Redis and the deny cache keep it
	switch l.Algorithm {
	case "", quota.FixedWindow:
		o.start = quotakit.FixedWindowStart(now, w)
		b := quotakit.AppendClusterKey(buf[:0], fixedPrefix, id)
		b = strconv.AppendInt(append(b, ':'), w, 10)
		b = strconv.AppendInt(append(b, ':'), o.start, 10)
		ttl := (o.start+w-now+999)/1000 + slack + h.expiryJitter(b, w)
		o.script = h.fixed
		o.keys = append(o.keyBuf[:0], string(b))
		o.command()
		o.arg(int64(quotakit.FixedIncrement(l, r.Hits)))
		o.arg(ttl)
	case quota.SlidingWindow:
		b := quotakit.AppendClusterKey(buf[:0], slidingPrefix, id)
		n := len(b)
		log := string(append(b, ":log"...))
		hits := string(append(b[:n], ":hits"...))
		o.script = h.sliding
		o.keys = append(o.keyBuf[:0], log, hits)
		o.command()
		for _, v := range [...]int64{now, w, int64(l.Requests), int64(min(r.Hits, l.Requests+1)), quotakit.SlidingQuantum(l), slack} {
			o.arg(v)
		}
	case quota.TokenBucket:
		s, err := quotakit.NewTokenScale(l)
		if err != nil {
			return err
		}
		o.scale = s
		b := quotakit.AppendClusterKey(buf[:0], bucketPrefix, id)
		b = strconv.AppendUint(append(b, ':'), l.Requests, 10)
		b = strconv.AppendInt(append(b, ':'), w, 10)
		o.script = h.bucket
		o.keys = append(o.keyBuf[:0], string(b))
		o.command()
		for _, v := range [...]int64{now, int64(s.Capacity), int64(s.PerUnit), s.Window, int64(s.Cost(r.Hits)), s.Unit, slack} {
			o.arg(v)
		}
	}
	o.alg = l.Algorithm
	if o.alg == "" {
		o.alg = quota.FixedWindow
	}
	o.deny = quotakit.DenyKey{Key: o.keys[0], Requests: l.Requests, Window: l.Window}
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
func decode(o *op, r *quota.Request, rep *reply, now int64) (quota.Decision, int64, error) {
	if rep.err != nil {
		return quota.Decision{}, 0, rep.err
	}
	l := r.Limit
	switch o.alg {
	case quota.SlidingWindow:
		v, err := rep.int64s(4)
		if err != nil {
			return quota.Decision{}, 0, fmt.Errorf("sliding window script answered %w", err)
		}
		return quotakit.SlidingDecision(l, v[0] == 1, uint64(v[1]), v[2], now), v[3], nil
	case quota.TokenBucket:
		v, err := rep.int64s(3)
		if err != nil {
			return quota.Decision{}, 0, fmt.Errorf("token bucket script answered %w", err)
		}
		d, denyUntil := o.scale.Decision(v[0] == 1, uint64(v[1]), v[2], r.Hits, now, l.Window)
		return d, denyUntil, nil
	}
	n, err := rep.int64()
	if err == nil && n < 0 {
		err = fmt.Errorf("%d: %w", n, errUnexpected)
	}
	if err != nil {
		return quota.Decision{}, 0, fmt.Errorf("fixed window script answered %w", err)
	}
	d, denyUntil := quotakit.FixedDecision(l, uint64(n), o.start, now)
	return d, denyUntil, nil
}

var errUnexpected = errors.New("unexpected answer")
