package memquota

import (
	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/templates/quota"
)

// algorithm selects the kind of state of a key; the same key counted by two
// algorithms has two states.
type algorithm uint8

const (
	fixedWindow algorithm = iota
	slidingWindow
	tokenBucket
)

type stateKey struct {
	key string
	alg algorithm
}

// entry is the state of one key. Times are in microseconds since the Unix epoch.
type entry struct {
	k          stateKey
	prev, next *entry
	// expires is when the state becomes the same as none at all; the sweeper
	// forgets the key from then on.
	expires int64

	// The limit the state was built for: a key whose limit changes (a config
	// reload) starts afresh where the old state would mean something else.
	requests uint64
	window   int64

	// Fixed window: the current window's start and count, and the previous
	// window's, for requests that reach the lock after the window has turned.
	start, prevStart int64
	count, prevCount uint64

	// Token bucket: the tokens at last, the time (µs) up to which refills have
	// been credited (see quotakit.TokenScale).
	scale  quotakit.TokenScale
	tokens uint64
	last   int64

	// Sliding window: the log of allowed hits, and the latest time seen (last):
	// a request that reaches the lock after a later one is decided at the later
	// time, so that the log never forgets hits a later decision relied on.
	log slidingLog
}

// fixed counts hits in the current fixed window, like envoyproxy/ratelimit: the
// count grows even when the request is denied.
func (e *entry) fixed(l quota.Limit, hits uint64, now int64) quota.Decision {
	w := l.Window.Microseconds()
	start := quotakit.FixedWindowStart(now, w)
	if e.window != w {
		e.window, e.start, e.count, e.prevStart, e.prevCount = w, start, 0, 0, 0
	}
	count := &e.count
	switch {
	case start == e.start:
	case start > e.start:
		if start == e.start+w {
			e.prevStart, e.prevCount = e.start, e.count
		} else {
			e.prevStart, e.prevCount = 0, 0
		}
		e.start, e.count = start, 0
	case start == e.prevStart:
		count = &e.prevCount
	default:
		// Older than the previous window: its count is gone. Counting the request
		// against the current window can only deny more.
		start = e.start
	}
	*count = satAdd(*count, quotakit.FixedIncrement(l, hits))
	d, _ := quotakit.FixedDecision(l, *count, start, now)
	e.expires = e.start + w
	return d
}

// sliding decides against the hits of the last window, exactly: a request is
// allowed when the hits logged in (now-window, now] plus its own are within the limit.
func (e *entry) sliding(l quota.Limit, hits uint64, callerNow int64) quota.Decision {
	w := l.Window.Microseconds()
	e.window = w
	now := max(callerNow, e.last)
	e.last = now
	lg := &e.log
	lg.expire(now - w)
	allowed := hits <= l.Requests && lg.sum+hits <= l.Requests
	if allowed && hits > 0 {
		lg.add(quotakit.SlidingEntryTime(now, quotakit.SlidingQuantum(l)), hits)
	}
	var resetAt int64
	if need, ok := quotakit.SlidingNeed(l, lg.sum, hits); !ok {
		resetAt = now + w
	} else if need > 0 {
		resetAt = lg.expiry(need, w, now)
	}
	if lg.n > 0 {
		e.expires = lg.back().at + w
	} else {
		// An empty log protects nothing: forget the time too, as Redis forgets
		// the whole key, so that both backends decide late requests alike.
		e.expires, e.last = now, 0
	}
	return quotakit.SlidingDecision(l, allowed, lg.sum, resetAt, callerNow)
}

// tokenBucket takes hits from a bucket of Requests tokens refilled at Requests per
// window, in whole units of its scale (quotakit.TokenScale).
func (e *entry) tokenBucket(l quota.Limit, hits uint64, now int64) (quota.Decision, error) {
	w := l.Window.Microseconds()
	if e.requests != l.Requests || e.window != w || e.scale.Unit == 0 {
		s, err := quotakit.NewTokenScale(l)
		if err != nil {
			return quota.Decision{}, err
		}
		e.scale, e.requests, e.window = s, l.Requests, w
		e.tokens, e.last = s.Capacity, now
	}
	s := &e.scale
	// Refill credits whole units since the bucket's time and carries the rest; a
	// full bucket has no time of its own (Redis deletes it): it is full now.
	tokens, last := s.Refill(e.tokens, e.last, now)
	cost := s.Cost(hits)
	allowed := cost <= tokens
	if allowed {
		tokens -= cost
	}
	e.tokens, e.last = tokens, last
	e.expires = now + s.FullAfter(tokens, last, now)
	d, _ := s.Decision(allowed, tokens, e.last, hits, now, l.Window)
	return d, nil
}

func satAdd(a, b uint64) uint64 {
	if c := a + b; c >= a {
		return c
	}
	return ^uint64(0)
}

// slidingLog is a ring of (time, hits) entries in time order, with their sum. It
// holds at most one entry per distinct entry time, so at most Requests entries,
// and at most 4097 however large the limit (see quotakit.SlidingQuantum).
type slidingLog struct {
	buf     []slot
	head, n int
	sum     uint64
}

type slot struct {
	at   int64
	hits uint64
}

func (lg *slidingLog) at(i int) *slot { return &lg.buf[(lg.head+i)&(len(lg.buf)-1)] }

func (lg *slidingLog) back() *slot { return lg.at(lg.n - 1) }

// expire drops the entries at or before cutoff.
func (lg *slidingLog) expire(cutoff int64) {
	for lg.n > 0 {
		f := lg.at(0)
		if f.at > cutoff {
			break
		}
		lg.sum -= f.hits
		lg.head = (lg.head + 1) & (len(lg.buf) - 1)
		lg.n--
	}
	if lg.n == 0 {
		lg.head = 0
		if cap(lg.buf) > 64 {
			// An idle key gives back what a burst made it grow.
			lg.buf = nil
		}
	}
}

// add logs hits at at. The log stays in time order: an entry time before the last
// one (the quantum changed with the limit) is moved up to it, which keeps the hits
// longer, never shorter.
func (lg *slidingLog) add(at int64, hits uint64) {
	lg.sum += hits
	if lg.n > 0 {
		if b := lg.back(); b.at >= at {
			b.hits += hits
			return
		}
	}
	if lg.n == len(lg.buf) {
		grown := make([]slot, max(4, 2*len(lg.buf)))
		for i := 0; i < lg.n; i++ {
			grown[i] = *lg.at(i)
		}
		lg.buf, lg.head = grown, 0
	}
	*lg.at(lg.n) = slot{at: at, hits: hits}
	lg.n++
}

// expiry is when (µs) the oldest entries holding need hits have all left the
// window; need is at most the sum.
func (lg *slidingLog) expiry(need uint64, window, now int64) int64 {
	var acc uint64
	for i := 0; i < lg.n; i++ {
		s := lg.at(i)
		if acc += s.hits; acc >= need {
			return s.at + window
		}
	}
	return now + window
}
