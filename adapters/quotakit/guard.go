package quotakit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/templates/quota"
)

// FailPolicy says what a quota handler answers when its backend fails or is too slow.
type FailPolicy string

// Fail policies.
const (
	// FailOpen allows the requests the backend could not decide: an outage of the
	// quota store does not become an outage of the mesh.
	FailOpen FailPolicy = "open"
	// FailClosed denies them: a quota that protects something fragile holds.
	FailClosed FailPolicy = "closed"
)

// ParseFailPolicy reads a fail policy; empty means FailOpen.
func ParseFailPolicy(s string) (FailPolicy, error) {
	switch FailPolicy(s) {
	case "", FailOpen:
		return FailOpen, nil
	case FailClosed:
		return FailClosed, nil
	}
	return "", fmt.Errorf("fail policy %q is not open or closed", s)
}

// Reasons under which the guard counts backend failures (Stats.Error) and the
// decisions it made for them (Stats.Dropped).
const (
	ReasonTimeout    = "backend_timeout"
	ReasonError      = "backend_error"
	ReasonFailOpen   = "fail_open"
	ReasonFailClosed = "fail_closed"
)

// FailRetryAfter is the ResetAfter of a request denied because the backend failed
// (or the window, if shorter): a retry soon may find the backend back.
const FailRetryAfter = time.Second

// failReminder is how often a long failure burst is logged again, with its count.
const failReminder = time.Minute

// BurstQuiet is how long a backend must go without failing for a failure burst to
// end. Answers in between (a Redis Cluster with one node down answers for the
// others) do not end it, so that a flapping backend is not logged per request.
const BurstQuiet = 5 * time.Second

// Guard applies a quota handler's timeout and fail policy to its backend calls. It
// counts every decision made for a failed backend through the handler's Stats and
// logs a failure burst when it starts, once a minute while it lasts, and when it
// ends (the backend answered after BurstQuiet without failures).
type Guard struct {
	timeout time.Duration
	policy  FailPolicy
	stats   adapters.Stats
	log     *slog.Logger
	now     func() time.Time

	failing atomic.Bool // lets Succeeded skip the lock when nothing failed
	mu      sync.Mutex
	burst   burst
}

type burst struct {
	start, lastLog, lastFail time.Time
	decisions                int // decided by policy since lastLog
	total                    int // in the whole burst
}

// NewGuard returns a guard for a handler built with env.
func NewGuard(env adapters.Env, timeout time.Duration, policy FailPolicy) *Guard {
	g := &Guard{timeout: timeout, policy: policy, stats: env.Stats, log: env.Logger, now: env.Now}
	if g.stats == nil {
		g.stats = adapters.DiscardStats{}
	}
	if g.log == nil {
		g.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if g.now == nil {
		g.now = time.Now
	}
	return g
}

// Policy is the guard's fail policy.
func (g *Guard) Policy() FailPolicy { return g.policy }

// Deadline is when a backend call made now for ctx must have answered: after the
// handler's timeout, or at ctx's own deadline if that comes first (Envoy gives a
// rate limit 20 ms by default, less than most timeouts).
func (g *Guard) Deadline(ctx context.Context) time.Time {
	d := time.Now().Add(g.timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(d) {
		return dl
	}
	return d
}

// Fail answers the requests at idx, which the backend could not decide because of
// err, by the fail policy, and counts them. If the caller's own context ended, the
// answers do not matter to anyone: Fail counts nothing and returns that error.
func (g *Guard) Fail(parent context.Context, err error, reqs []quota.Request, out []quota.Decision, idx []int) error {
	if len(idx) == 0 {
		return nil
	}
	if perr := parent.Err(); perr != nil {
		return fmt.Errorf("quota check abandoned by its caller: %w", perr)
	}
	reason := ReasonError
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		reason = ReasonTimeout
	}
	// Only the answers the policy gave count as its decisions: a request over its
	// limit whatever the count is denied as the backend would have denied it.
	byPolicy := 0
	for _, i := range idx {
		out[i] = g.decide(reqs[i])
		if out[i].ByPolicy {
			byPolicy++
		}
	}
	g.stats.Error(reason)
	if byPolicy > 0 {
		if g.policy == FailClosed {
			g.stats.Dropped(byPolicy, ReasonFailClosed)
		} else {
			g.stats.Dropped(byPolicy, ReasonFailOpen)
		}
	}
	g.logFailure(reason, err, byPolicy)
	return nil
}

func (g *Guard) decide(r quota.Request) quota.Decision {
	if r.Hits > r.Limit.Requests {
		// Over the limit whatever the count (hits_addend past it, a limit of 0):
		// denied as the backend would have denied it, fail policy or not.
		return quota.Decision{Allowed: false, ResetAfter: r.Limit.Window}
	}
	if g.policy == FailClosed {
		return quota.Decision{Allowed: false, ResetAfter: min(FailRetryAfter, r.Limit.Window), ByPolicy: true}
	}
	// Nothing is known of the count: answer as a fresh window would.
	return quota.Decision{Allowed: true, Remaining: r.Limit.Requests - min(r.Hits, r.Limit.Requests), ByPolicy: true}
}

func (g *Guard) logFailure(reason string, err error, n int) {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	b := &g.burst
	if !g.failing.Load() {
		g.failing.Store(true)
		*b = burst{start: now, lastLog: now, lastFail: now, decisions: n, total: n}
		g.log.Warn("quota backend failing; answering by fail policy until it recovers",
			"policy", string(g.policy), "reason", reason, "error", err)
		return
	}
	b.decisions += n
	b.total += n
	b.lastFail = now
	if now.Sub(b.lastLog) >= failReminder {
		g.log.Warn("quota backend still failing", "policy", string(g.policy), "reason", reason, "error", err,
			"decisions", b.decisions, "since", now.Sub(b.start).Round(time.Millisecond))
		b.lastLog, b.decisions = now, 0
	}
}

// Succeeded records that the backend answered; it ends a failure burst once the
// backend has not failed for BurstQuiet.
func (g *Guard) Succeeded() {
	if !g.failing.Load() {
		return
	}
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.failing.Load() || now.Sub(g.burst.lastFail) < BurstQuiet {
		return
	}
	g.failing.Store(false)
	g.log.Info("quota backend recovered", "policy", string(g.policy),
		"decisions", g.burst.total, "after", g.burst.lastFail.Sub(g.burst.start).Round(time.Millisecond))
}
