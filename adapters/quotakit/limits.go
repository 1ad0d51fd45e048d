package quotakit

import (
	"fmt"
	"time"

	"github.com/sluicemesh/sluice/templates/quota"
)

// The limit arithmetic every backend shares, so that memquota and redisquota give
// the same answers to the same requests at the same times. Backends count time in
// microseconds since the Unix epoch: Redis's Lua numbers are doubles, exact for
// integers up to 2^53, and microsecond timestamps (about 2^51 today) fit.

// MaxRequests bounds a limit's Requests, so that counts, token amounts and their sums
// stay exact in Redis's Lua numbers.
const MaxRequests = 1 << 50

// maxExact bounds the scaled token amounts of a token bucket (see TokenScale).
const maxExact = 1 << 52

// Micros is t in microseconds since the Unix epoch.
func Micros(t time.Time) int64 { return t.UnixMicro() }

// CheckLimit reports whether a backend can enforce l.
func CheckLimit(l quota.Limit) error {
	if l.Window < time.Microsecond {
		return fmt.Errorf("window %v is shorter than a microsecond", l.Window)
	}
	if l.Requests > MaxRequests {
		return fmt.Errorf("limit %d is above the largest supported, %d", l.Requests, uint64(MaxRequests))
	}
	switch l.Algorithm {
	case "", quota.FixedWindow, quota.SlidingWindow:
		return nil
	case quota.TokenBucket:
		_, err := NewTokenScale(l)
		return err
	}
	return fmt.Errorf("unknown rate-limit algorithm %q", l.Algorithm)
}

// FixedWindowStart is the start of the window holding now (µs): windows are aligned
// to the Unix epoch, as envoyproxy/ratelimit aligns them, so every replica agrees.
func FixedWindowStart(now, window int64) int64 {
	return now - floorMod(now, window)
}

// FixedIncrement is what a fixed-window request adds to its window's count. Like
// envoyproxy/ratelimit, a denied request still counts; anything above Requests+1
// denies the rest of the window just the same, so the increment is capped there to
// keep counts from overflowing.
func FixedIncrement(l quota.Limit, hits uint64) uint64 {
	return min(hits, l.Requests+1)
}

// FixedDecision answers a fixed-window request from its window's count after the
// increment. denyUntil (µs) is when a one-hit request could next be allowed, or 0
// when it could be now.
func FixedDecision(l quota.Limit, count uint64, start, now int64) (d quota.Decision, denyUntil int64) {
	end := start + l.Window.Microseconds()
	d.Allowed = count <= l.Requests
	if d.Allowed {
		d.Remaining = l.Requests - count
	}
	if end > now {
		d.ResetAfter = time.Duration(end-now) * time.Microsecond
	}
	if count >= l.Requests {
		denyUntil = end
	}
	return d, denyUntil
}

// SlidingQuantum is the time resolution (µs) of a sliding window's log. Up to
// slidingEntries hits a log keeps one entry per distinct time and is exact; above,
// entry times are rounded up to Window/slidingEntries so that a key holds at most
// slidingEntries+1 entries. Rounding up keeps hits in the log longer than they
// belong there, so the limit is never exceeded; the cost is that up to
// Requests/slidingEntries fewer hits may be allowed in a window.
func SlidingQuantum(l quota.Limit) int64 {
	if l.Requests <= slidingEntries {
		return 1
	}
	w := l.Window.Microseconds()
	return (w + slidingEntries - 1) / slidingEntries
}

// slidingEntries bounds the entries of a sliding window's log.
const slidingEntries = 4096

// SlidingEntryTime is the time (µs) under which a hit at now is logged: now rounded
// up to the quantum.
func SlidingEntryTime(now, quantum int64) int64 {
	if r := floorMod(now, quantum); r != 0 {
		return now - r + quantum
	}
	return now
}

// SlidingDecision answers a sliding-window request. sum is the hits in the window
// after the decision; resetAt (µs) is when a request of this one's hits could be
// allowed, 0 when now; denyUntil (µs) is the same for a one-hit request. Backends
// compute resetAt and denyUntil from their logs with SlidingWait's rule.
func SlidingDecision(l quota.Limit, allowed bool, sum uint64, resetAt, now int64) quota.Decision {
	d := quota.Decision{Allowed: allowed}
	if sum < l.Requests {
		d.Remaining = l.Requests - sum
	}
	if resetAt > now {
		d.ResetAfter = time.Duration(resetAt-now) * time.Microsecond
	}
	return d
}

// SlidingNeed is how many logged hits must leave the window before a request of hits
// could be allowed: 0 when it could be now, and never (ok false) when hits exceed
// the limit.
func SlidingNeed(l quota.Limit, sum, hits uint64) (need uint64, ok bool) {
	if hits > l.Requests {
		return 0, false
	}
	if sum+hits <= l.Requests {
		return 0, true
	}
	return sum + hits - l.Requests, true
}

// TokenScale holds a token bucket's limit in exact integers. Refills come in whole
// units of Unit microseconds; a token is PerToken scaled amounts and every unit of
// time refills PerUnit of them, so that Requests per Window is exactly
// PerUnit/PerToken tokens per unit, with no rounding (the ratio is reduced by its gcd).
//
// A bucket is its tokens and its time (µs), the time up to which its refills have
// been credited: a refill credits only the whole units elapsed since then and
// advances the time by those units, so that the part of a unit that has elapsed is
// carried to the next refill, never rounded up. A full bucket has no time of its
// own: it is full now. So over any interval T a bucket refills at most rate × T, and
// allows at most burst + rate × T, whatever its unit.
type TokenScale struct {
	Unit     int64  // µs per time unit
	Window   int64  // the window in units
	PerUnit  uint64 // refill per unit, in scaled amounts
	PerToken uint64 // one token, in scaled amounts
	Capacity uint64 // Requests tokens, in scaled amounts
	Requests uint64
}

// NewTokenScale chooses the finest time unit (1µs, 1ms or 1s) in which the bucket's
// scaled capacity stays exact in a double; coarser units only delay refills, which
// never lets more through.
func NewTokenScale(l quota.Limit) (TokenScale, error) {
	w := l.Window.Microseconds()
	for _, unit := range [...]int64{1, 1000, 1000000} {
		if w%unit != 0 {
			break
		}
		units := w / unit
		g := gcd(l.Requests, uint64(units))
		perToken := uint64(units) / g
		if l.Requests == 0 {
			return TokenScale{Unit: unit, Window: units, PerToken: 1}, nil
		}
		if l.Requests > maxExact/perToken {
			continue
		}
		return TokenScale{Unit: unit, Window: units, PerUnit: l.Requests / g, PerToken: perToken,
			Capacity: l.Requests * perToken, Requests: l.Requests}, nil
	}
	return TokenScale{}, fmt.Errorf("token bucket of %d per %v cannot be counted exactly; use a window of whole seconds or a smaller limit", l.Requests, l.Window)
}

// Refill returns the bucket's tokens and time at now (µs), given tokens at last
// (µs): the whole units elapsed since last are credited and last advances by them,
// keeping the rest of a unit for the next refill. A full bucket's time is now; a
// clock that went backwards refills nothing and keeps the bucket's time. A missing
// bucket is a full one.
func (s TokenScale) Refill(tokens uint64, last, now int64) (uint64, int64) {
	if tokens >= s.Capacity {
		return s.Capacity, now
	}
	if now <= last {
		return tokens, last
	}
	units := (now - last) / s.Unit
	if units >= s.Window {
		return s.Capacity, now
	}
	add := uint64(units) * s.PerUnit // < Window × PerUnit = Capacity
	if missing := s.Capacity - tokens; add >= missing {
		return s.Capacity, now
	}
	return tokens + add, last + units*s.Unit
}

// Cost is what hits take from the bucket; above Requests it is more than the
// bucket holds, so such a request is always denied.
func (s TokenScale) Cost(hits uint64) uint64 {
	if hits > s.Requests {
		return s.Capacity + 1
	}
	return hits * s.PerToken
}

// at is when (µs) a bucket holding tokens at last (µs) holds need: its first
// refill is a whole unit after last.
func (s TokenScale) at(tokens, need uint64, last, nowMicros int64) int64 {
	if tokens >= need {
		return nowMicros
	}
	units := (need - tokens + s.PerUnit - 1) / s.PerUnit
	return last + int64(units)*s.Unit
}

// Decision answers a token-bucket request from the tokens left after it (taken or
// not) at last, the bucket's time (µs) as Refill leaves it: at most now, and less
// than a unit before it, unless a request decided at a later time reached the
// bucket first. denyUntil (µs) is when a one-hit request could next be allowed, 0
// when now.
func (s TokenScale) Decision(allowed bool, tokens uint64, last int64, hits uint64, nowMicros int64, window time.Duration) (d quota.Decision, denyUntil int64) {
	d.Allowed = allowed
	d.Remaining = tokens / s.PerToken
	if hits > s.Requests {
		d.ResetAfter = window
	} else if t := s.at(tokens, s.Cost(hits), last, nowMicros); t > nowMicros {
		d.ResetAfter = time.Duration(t-nowMicros) * time.Microsecond
	}
	switch {
	case s.Requests == 0:
		denyUntil = nowMicros + window.Microseconds()
	case tokens < s.PerToken:
		denyUntil = s.at(tokens, s.PerToken, last, nowMicros)
	}
	return d, denyUntil
}

// FullAfter is how long (µs) after now (µs) a bucket holding tokens at last (µs)
// is full again; after it, forgetting the bucket changes nothing.
func (s TokenScale) FullAfter(tokens uint64, last, nowMicros int64) int64 {
	if tokens >= s.Capacity {
		return 0
	}
	return max(0, s.at(tokens, s.Capacity, last, nowMicros)-nowMicros)
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func floorMod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}
