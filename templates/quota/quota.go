// Package quota is the quota template and the rate-limit contract shared by the quota
// backends (memquota, redisquota), the ext_authz quota checks and the rate-limit service.
package quota

import (
	"context"
	"fmt"
	"time"
)

// Algorithm decides how hits are counted against a limit.
type Algorithm string

// Algorithms. FixedWindow is envoyproxy/ratelimit's behaviour and the default.
const (
	// FixedWindow counts hits per calendar window (second, minute, …) and allows at
	// most Requests in each; bursts of up to twice the limit straddle a boundary.
	FixedWindow Algorithm = "fixed_window"
	// SlidingWindow allows at most Requests in any window of length Window.
	SlidingWindow Algorithm = "sliding_window"
	// TokenBucket holds up to Requests tokens, refilled at Requests per Window: over
	// any interval T at most Requests + rate × T hits are allowed.
	TokenBucket Algorithm = "token_bucket"
)

// ParseAlgorithm reads an algorithm name; empty means FixedWindow.
func ParseAlgorithm(s string) (Algorithm, error) {
	switch Algorithm(s) {
	case "", FixedWindow:
		return FixedWindow, nil
	case SlidingWindow, TokenBucket:
		return Algorithm(s), nil
	}
	return "", fmt.Errorf("unknown rate-limit algorithm %q (fixed_window, sliding_window, token_bucket)", s)
}

// Limit is one limit: Requests per Window.
type Limit struct {
	Requests  uint64
	Window    time.Duration
	Algorithm Algorithm
}

// Request asks for Hits against Limit under Key. Keys are opaque to backends, which
// may prefix them; equal keys share one count across replicas.
type Request struct {
	Key   string
	Limit Limit
	Hits  uint64
}

// Decision is a backend's answer to one Request.
type Decision struct {
	Allowed bool
	// Remaining is what is left of the limit after this decision.
	Remaining uint64
	// ResetAfter is the time until the window resets (fixed window) or until the
	// next hit could be allowed (sliding window, token bucket).
	ResetAfter time.Duration
	// ByPolicy marks a decision its handler's fail policy made because the backend
	// failed or was too slow: nothing is known of the count, so Remaining and
	// ResetAfter describe no window, and a denial is no sign of an exhausted quota.
	ByPolicy bool
}

// RateLimiter decides requests against limits. Allow fills out[i] for reqs[i]; a
// backend makes one round trip for the whole slice where it can. now is the time
// the caller decides at, so that tests can inject it.
type RateLimiter interface {
	Allow(ctx context.Context, now time.Time, reqs []Request, out []Decision) error
}

// Instance is one quota instance, evaluated for one request: the dimensions that
// select a quota and its overrides.
type Instance struct {
	// Name is the instance's qualified name, NAMESPACE/NAME.
	Name       string
	Dimensions map[string]string
}
