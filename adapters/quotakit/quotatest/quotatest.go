// Package quotatest is the conformance kit of quota backends: scripted sequences with
// exact expected answers, and concurrent runs checked against a reference model.
package quotatest

import (
	"context"
	"fmt"
	"math/big"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicemesh/sluice/templates/quota"
)

// Base is the time the sequences start at: midnight, so that windows of a second, a
// minute or an hour start there (windows are aligned to the Unix epoch).
func Base() time.Time { return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) }

// Step is one request of a sequence: Hits at Base+At, and the expected answer.
type Step struct {
	At   time.Duration
	Hits uint64
	Want quota.Decision
}

// Sequence is a run of requests against one key and limit.
type Sequence struct {
	Name  string
	Limit quota.Limit
	Steps []Step
}

func allow(rem uint64, reset time.Duration) quota.Decision {
	return quota.Decision{Allowed: true, Remaining: rem, ResetAfter: reset}
}

func deny(reset time.Duration) quota.Decision {
	return quota.Decision{Allowed: false, ResetAfter: reset}
}

const ms = time.Millisecond

// Sequences are the scripted runs every backend must answer exactly so. They avoid
// one place where backends may differ: a fixed-window request denied by a local
// cache of denied keys is not added to the shared count, so a later zero-hit query
// of a window whose count stood exactly at the limit may be allowed (with nothing
// remaining) where a backend that counted the denied hit denies it.
func Sequences() []Sequence {
	return []Sequence{
		{"fixed window counts denied hits, like envoyproxy/ratelimit", quota.Limit{Requests: 3, Window: time.Second, Algorithm: quota.FixedWindow}, []Step{
			{0, 1, allow(2, time.Second)},
			{100 * ms, 1, allow(1, 900*ms)},
			{200 * ms, 1, allow(0, 800*ms)},
			{300 * ms, 1, deny(700 * ms)},
			{1000 * ms, 1, allow(2, time.Second)},
			{1500 * ms, 3, deny(500 * ms)},
			{1600 * ms, 1, deny(400 * ms)}, // the denied 3 hits counted
			{1700 * ms, 0, deny(300 * ms)}, // a query: the count (4 or 5) is over the limit
			{2000 * ms, 0, allow(3, time.Second)},
			{2000 * ms, 4, deny(time.Second)},
			{2500 * ms, 1, deny(500 * ms)},
			{3250 * ms, 2, allow(1, 750*ms)},
		}},
		{"fixed windows are aligned to the Unix epoch", quota.Limit{Requests: 2, Window: 7 * time.Second}, []Step{
			// Base is 2 s into a 7 s window.
			{0, 1, allow(1, 5*time.Second)},
			{4999 * ms, 1, allow(0, ms)},
			{5000 * ms, 1, allow(1, 7*time.Second)},
		}},
		{"sliding window", quota.Limit{Requests: 3, Window: time.Second, Algorithm: quota.SlidingWindow}, []Step{
			{0, 1, allow(2, 0)},
			{100 * ms, 1, allow(1, 0)},
			{200 * ms, 1, allow(0, 800*ms)}, // the next hit waits for the one at 0
			{500 * ms, 1, deny(500 * ms)},
			{1000 * ms, 1, allow(0, 100*ms)},      // the hit at 0 has left
			{1050 * ms, 2, deny(150 * ms)},        // two must leave: at 100 and 200
			{1050 * ms, 4, deny(time.Second)},     // more than the limit: never
			{1050 * ms, 0, allow(0, 0)},           // a query
			{900 * ms, 1, deny(200 * ms)},         // late: decided at 1050
			{1200 * ms, 2, allow(0, time.Second)}, // 100 and 200 left; 1000 and 1200 hold 3
			{2000 * ms, 1, allow(0, 200*ms)},      // 1000 left
			{2200 * ms, 0, allow(2, 0)},           // 1200 left
			{3500 * ms, 3, allow(0, 1000*ms)},     // all gone
			{3600 * ms, 1, deny(900 * ms)},        // denied hits are not logged
			{4500 * ms, 3, allow(0, time.Second)}, // so the window is free again
			{4500 * ms, 1, deny(time.Second)},     // waits for the 3 at 4500
			{5499 * ms, 1, deny(1 * ms)},
			{5500 * ms, 2, allow(1, time.Second)},
			{5500 * ms, 1, allow(0, time.Second)},
			{5500 * ms, 1, deny(time.Second)},
		}},
		{"sliding window above 4096 logs at a coarser time", quota.Limit{Requests: 10000, Window: time.Second, Algorithm: quota.SlidingWindow}, []Step{
			// The quantum is 245µs; Base+75µs is the next multiple.
			{0, 10000, allow(0, time.Second+75*time.Microsecond)},
			{time.Second, 1, deny(75 * time.Microsecond)},
			{time.Second + 75*time.Microsecond, 1, allow(9999, 0)},
		}},
		{"token bucket", quota.Limit{Requests: 4, Window: time.Second, Algorithm: quota.TokenBucket}, []Step{
			{0, 1, allow(3, 0)},
			{0, 3, allow(0, 750*ms)},              // three more tokens take 750ms
			{100 * ms, 1, deny(150 * ms)},         // 0.4 tokens
			{250 * ms, 1, allow(0, 250*ms)},       // one token
			{1250 * ms, 4, allow(0, time.Second)}, // full again
			{1250 * ms, 5, deny(time.Second)},     // more than the bucket: never
			{1250 * ms, 0, allow(0, 0)},           // a query
			{1000 * ms, 1, deny(500 * ms)},        // late: the bucket is at 1250
			{1500 * ms, 1, allow(0, 250*ms)},
		}},
		{"token bucket with an uneven rate", quota.Limit{Requests: 3, Window: time.Second, Algorithm: quota.TokenBucket}, []Step{
			{0, 3, allow(0, time.Second)},
			{100 * ms, 1, deny(233334 * time.Microsecond)}, // 0.3 tokens; 0.7 more take 233333.3µs
			{333334 * time.Microsecond, 1, allow(0, 333333*time.Microsecond)},
			{2 * time.Second, 2, allow(1, 333334*time.Microsecond)},
		}},
		// 100000007 per day is counted in units of a second (quotakit.TokenScale):
		// 1157.4 tokens a second, refilled a whole second after the bucket's time,
		// never at a second's turn on the clock (which would refill a whole
		// second's tokens a microsecond after a drain at .999999).
		{"token bucket with a coarse unit refills whole units since its time", quota.Limit{Requests: 100000007, Window: 24 * time.Hour, Algorithm: quota.TokenBucket}, []Step{
			{999999 * time.Microsecond, 100000007, allow(0, 24*time.Hour)},
			{time.Second, 1157, deny(999999 * time.Microsecond)}, // 1µs later: 0.001 tokens, not 1157
			{1999998 * time.Microsecond, 1, deny(time.Microsecond)},
			{1999999 * time.Microsecond, 1157, allow(0, time.Second)}, // a second after the drain: 1157.4 tokens
			{1999999 * time.Microsecond, 1, deny(time.Second)},
			{2999999 * time.Microsecond, 1158, quota.Decision{Remaining: 1157, ResetAfter: time.Second}},     // 1157.8 tokens
			{1500 * ms, 1, allow(1156, 0)},                                                                   // late: the bucket is at 2999999µs
			{24*time.Hour + 10*time.Second, 1, allow(100000006, 0)},                                          // full again
			{24*time.Hour + 10500*ms, 100000007, quota.Decision{Remaining: 100000006, ResetAfter: 500 * ms}}, // the bucket's time is 24h+10s
			{24*time.Hour + 10999999*time.Microsecond, 2, allow(100000004, 0)},
		}},
		{"a zero limit denies every hit", quota.Limit{Requests: 0, Window: time.Second, Algorithm: quota.SlidingWindow}, []Step{
			{0, 1, deny(time.Second)},
			{0, 0, allow(0, 0)},
		}},
		{"a zero token bucket denies every hit", quota.Limit{Requests: 0, Window: time.Second, Algorithm: quota.TokenBucket}, []Step{
			{0, 1, deny(time.Second)},
			{5 * time.Second, 1, deny(time.Second)},
		}},
	}
}

// AllowOne decides r alone at now, failing the test on an error.
func AllowOne(t testing.TB, lim quota.RateLimiter, now time.Time, r quota.Request) quota.Decision {
	t.Helper()
	var out [1]quota.Decision
	if err := lim.Allow(context.Background(), now, []quota.Request{r}, out[:]); err != nil {
		t.Fatal(err)
	}
	return out[0]
}

// RunSequences checks lim against every sequence, each under its own key: keyPrefix
// and the sequence's index.
func RunSequences(t *testing.T, lim quota.RateLimiter, keyPrefix string) {
	t.Helper()
	for i, seq := range Sequences() {
		t.Run(seq.Name, func(t *testing.T) {
			key := fmt.Sprintf("%s/seq%d", keyPrefix, i)
			for j, st := range seq.Steps {
				var out [1]quota.Decision
				req := []quota.Request{{Key: key, Limit: seq.Limit, Hits: st.Hits}}
				if err := lim.Allow(context.Background(), Base().Add(st.At), req, out[:]); err != nil {
					t.Fatalf("step %d: %v", j, err)
				}
				if out[0] != st.Want {
					t.Errorf("step %d (%v, %d hits): got %+v, want %+v", j, st.At, st.Hits, out[0], st.Want)
				}
			}
		})
	}
}

// RunBatch checks that a batch is decided in order: a request that repeats a key
// sees the hits of the requests before it.
func RunBatch(t *testing.T, lim quota.RateLimiter, keyPrefix string) {
	t.Helper()
	for _, alg := range []quota.Algorithm{quota.FixedWindow, quota.SlidingWindow, quota.TokenBucket} {
		l := quota.Limit{Requests: 2, Window: time.Minute, Algorithm: alg}
		a, b := keyPrefix+"/batch/a/"+string(alg), keyPrefix+"/batch/b/"+string(alg)
		r := func(key string, hits uint64) quota.Request { return quota.Request{Key: key, Limit: l, Hits: hits} }
		reqs := []quota.Request{r(a, 1), r(a, 1), r(b, 1), r(a, 1), r(b, 2)}
		out := make([]quota.Decision, len(reqs))
		if err := lim.Allow(context.Background(), Base(), reqs, out); err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		want := []bool{true, true, true, false, false}
		for i := range want {
			if out[i].Allowed != want[i] {
				t.Errorf("%s: request %d allowed=%v, want %v (%+v)", alg, i, out[i].Allowed, want[i], out)
			}
		}
	}
}

// Concurrent describes a concurrent run: Rounds rounds, the first at Base+Start,
// each other at a time a random step (up to MaxStep) after the last, in which
// Workers goroutines, spread over the replicas, send PerWorker batches of one or two
// requests for one key, all at the round's time, and all of the round's hits: the
// first round's FirstHits, the others' Hits (one when zero). Demand exceeds what the
// limit allows, so the allowed count of every round is determined by the
// algorithm, whatever the interleaving: the run checks it against a reference
// model, and checks the algorithm's guarantee.
type Concurrent struct {
	Limit     quota.Limit
	Rounds    int
	Workers   int
	PerWorker int
	MaxStep   time.Duration
	Seed      uint64

	// Token buckets only (the other models count one-hit requests).
	Start     time.Duration
	FirstHits uint64
	Hits      uint64
	// Unit is the time unit of a token bucket's refills (see quotakit.TokenScale),
	// one microsecond when zero: the model credits the whole units elapsed since
	// the bucket's time.
	Unit time.Duration
}

// hits is the hits of each request of round k.
func (c Concurrent) hits(k int) uint64 {
	h := c.Hits
	if k == 0 && c.FirstHits != 0 {
		h = c.FirstHits
	}
	return max(h, 1)
}

// Run runs c against replicas sharing one count, under key.
func (c Concurrent) Run(t *testing.T, replicas []quota.RateLimiter, key string) {
	t.Helper()
	if c.Limit.Algorithm != quota.TokenBucket && (c.hits(0) != 1 || c.hits(1) != 1) {
		t.Fatalf("%s: only token buckets are modelled with more than one hit a request", c.Limit.Algorithm)
	}
	rng := rand.New(rand.NewPCG(c.Seed, 1))
	now := Base().Add(c.Start)
	times := make([]time.Time, c.Rounds)
	allowed := make([]int, c.Rounds)
	demand := make([]int, c.Rounds)
	for k := range c.Rounds {
		if k > 0 {
			now = now.Add(time.Duration(rng.Int64N(int64(c.MaxStep/time.Microsecond)+1)) * time.Microsecond)
		}
		times[k] = now
		sizes := make([]int, c.Workers*c.PerWorker)
		for i := range sizes {
			sizes[i] = 1 + rng.IntN(2)
			demand[k] += sizes[i]
		}
		var got atomic.Int64
		var wg sync.WaitGroup
		for w := range c.Workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lim := replicas[w%len(replicas)]
				for i := range c.PerWorker {
					n := sizes[w*c.PerWorker+i]
					reqs := make([]quota.Request, n)
					for j := range reqs {
						reqs[j] = quota.Request{Key: key, Limit: c.Limit, Hits: c.hits(k)}
					}
					out := make([]quota.Decision, n)
					if err := lim.Allow(context.Background(), now, reqs, out); err != nil {
						t.Errorf("round %d: %v", k, err)
						return
					}
					for _, d := range out {
						if d.Allowed {
							got.Add(1)
						}
					}
				}
			}()
		}
		wg.Wait()
		allowed[k] = int(got.Load())
	}
	want := c.model(times, demand)
	for k := range allowed {
		if allowed[k] != want[k] {
			t.Errorf("round %d at +%v: %d allowed, the model allows %d (demand %d)", k, times[k].Sub(Base()), allowed[k], want[k], demand[k])
		}
	}
	c.checkGuarantee(t, times, allowed)
}

// model is the reference: what an exact backend allows in each round, written
// independently of the backends, with exact rational arithmetic for the bucket.
func (c Concurrent) model(times []time.Time, demand []int) []int {
	n := int(c.Limit.Requests)
	w := c.Limit.Window
	out := make([]int, len(times))
	switch c.Limit.Algorithm {
	case "", quota.FixedWindow:
		used := map[int64]int{}
		for k, t := range times {
			win := t.UnixMicro() / w.Microseconds()
			out[k] = max(0, min(demand[k], n-used[win]))
			used[win] += demand[k] // denied hits count too
		}
	case quota.SlidingWindow:
		for k, t := range times {
			inWindow := 0
			for j := range k {
				if times[j].After(t.Add(-w)) {
					inWindow += out[j]
				}
			}
			out[k] = max(0, min(demand[k], n-inWindow))
		}
	case quota.TokenBucket:
		// Refills come in whole units: a bucket's time (last) advances by the
		// units credited, and a full bucket's time is now.
		unit := max(c.Unit.Microseconds(), 1)
		tokens := new(big.Rat).SetInt64(int64(n))
		capacity := new(big.Rat).SetInt64(int64(n))
		last := times[0].UnixMicro()
		for k, t := range times {
			now := t.UnixMicro()
			units := (now - last) / unit
			refill := new(big.Rat).SetFrac(new(big.Int).Mul(big.NewInt(int64(n)), big.NewInt(units*unit)), big.NewInt(w.Microseconds()))
			tokens.Add(tokens, refill)
			last += units * unit
			if tokens.Cmp(capacity) >= 0 {
				tokens.Set(capacity)
				last = now
			}
			h := new(big.Rat).SetInt64(int64(c.hits(k)))
			q := new(big.Rat).Quo(tokens, h)
			whole := new(big.Int).Quo(q.Num(), q.Denom())
			out[k] = int(min(int64(demand[k]), whole.Int64()))
			tokens.Sub(tokens, new(big.Rat).Mul(h, new(big.Rat).SetInt64(int64(out[k]))))
		}
	}
	return out
}

// checkGuarantee checks what the algorithm promises, as the issue states it.
func (c Concurrent) checkGuarantee(t *testing.T, times []time.Time, allowed []int) {
	t.Helper()
	n := int(c.Limit.Requests)
	w := c.Limit.Window
	switch c.Limit.Algorithm {
	case "", quota.FixedWindow:
		// Exactly the limit in every window with demand, never more.
		per := map[int64]int{}
		for k, t := range times {
			per[t.UnixMicro()/w.Microseconds()] += allowed[k]
		}
		for win, got := range per {
			if got != n {
				t.Errorf("fixed window starting %v: %d allowed, want exactly %d", time.UnixMicro(win*w.Microseconds()).UTC(), got, n)
			}
		}
	case quota.SlidingWindow:
		for i := range times {
			// Never more than the limit in [t_i, t_i+W): every interval of length W
			// holds no more than the one starting at its first allowed hit.
			sum := 0
			for j := i; j < len(times) && times[j].Before(times[i].Add(w)); j++ {
				sum += allowed[j]
			}
			if sum > n {
				t.Errorf("sliding window: %d allowed in [%v, +%v), limit %d", sum, times[i].Sub(Base()), w, n)
			}
			// At least the limit minus one in every full window, demand being steady.
			if times[i].Sub(times[0]) >= w {
				in := 0
				for j := 0; j <= i; j++ {
					if times[j].After(times[i].Add(-w)) {
						in += allowed[j]
					}
				}
				if in < n-1 {
					t.Errorf("sliding window: only %d allowed in (%v, %v], limit %d", in, times[i].Add(-w).Sub(Base()), times[i].Sub(Base()), n)
				}
			}
		}
	case quota.TokenBucket:
		// Over any interval T, never more than burst + rate × T (in hits).
		for i := range times {
			sum := new(big.Int)
			for j := i; j < len(times); j++ {
				sum.Add(sum, new(big.Int).Mul(big.NewInt(int64(allowed[j])), new(big.Int).SetUint64(c.hits(j))))
				span := times[j].Sub(times[i])
				bound := new(big.Rat).SetFrac(new(big.Int).Mul(big.NewInt(int64(n)), big.NewInt(span.Microseconds())), big.NewInt(w.Microseconds()))
				bound.Add(bound, new(big.Rat).SetInt64(int64(n)))
				if new(big.Rat).SetInt(sum).Cmp(bound) > 0 {
					t.Errorf("token bucket: %v hits allowed over %v from +%v, more than %d + %d/%v × T", sum, span, times[i].Sub(Base()), n, n, w)
				}
			}
		}
	}
}

// Stats records what a handler counts through adapters.Stats.
type Stats struct {
	mu      sync.Mutex
	errors  map[string]int
	dropped map[string]int
}

// Error implements adapters.Stats.
func (s *Stats) Error(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.errors == nil {
		s.errors = map[string]int{}
	}
	s.errors[reason]++
}

// Dropped implements adapters.Stats.
func (s *Stats) Dropped(n int, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dropped == nil {
		s.dropped = map[string]int{}
	}
	s.dropped[reason] += n
}

// Errors is the count of errors of reason.
func (s *Stats) Errors(reason string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errors[reason]
}

// Drops is the count of drops of reason.
func (s *Stats) Drops(reason string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped[reason]
}
