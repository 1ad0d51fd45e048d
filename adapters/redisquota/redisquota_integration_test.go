//go:build integration

package redisquota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/adaptertest"
	"github.com/sluicemesh/sluice/adapters/memquota"
	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/adapters/quotakit/quotatest"
	"github.com/sluicemesh/sluice/templates/quota"
)

type testHandler struct {
	*Handler
	stats *quotatest.Stats
	log   *adaptertest.LogBuffer
}

func newTestHandler(t *testing.T, addr string, mod func(*Params), instances ...string) testHandler {
	t.Helper()
	return newClockedHandler(t, addr, time.Now, mod, instances...)
}

// newClockedHandler builds a handler whose Env.Now (the guard's clock for failure
// bursts) is now.
func newClockedHandler(t *testing.T, addr string, now func() time.Time, mod func(*Params), instances ...string) testHandler {
	t.Helper()
	p := defaults()
	p.RedisServerURL = addr
	// These tests count decisions: at the 50 ms default, a stall of the race
	// detector on two shared cores would be decided by the fail policy instead.
	// Tests of timeouts set their own.
	p.Timeout = time.Second
	if mod != nil {
		mod(p)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	th := testHandler{stats: &quotatest.Stats{}, log: &adaptertest.LogBuffer{}}
	env := adapters.Env{Name: "ns/redis", Stats: th.stats, Logger: slog.New(slog.NewTextHandler(th.log, nil)), Now: now}
	h, err := New(context.Background(), env, p, instances)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close(context.Background()) })
	th.Handler = h
	return th
}

// TestIntegrationSequences: Redis answers the scripted sequences exactly as memquota
// does, with the local cache of denied keys and without it.
func TestIntegrationSequences(t *testing.T) {
	s := startRedis(t)
	for _, size := range []int{DefaultLocalCacheSize, 0} {
		t.Run(fmt.Sprint("localCacheSize=", size), func(t *testing.T) {
			h := newTestHandler(t, s.addr, func(p *Params) { p.LocalCacheSize = size })
			quotatest.RunSequences(t, h, fmt.Sprint("cache", size))
			quotatest.RunBatch(t, h, fmt.Sprint("cache", size))
		})
	}
}

// TestIntegrationReplicas: two handlers ("replicas") share one Redis; many goroutines
// race on one key at the same injected times. Every round's allowed count must be
// the reference model's, and each algorithm's guarantee must hold.
func TestIntegrationReplicas(t *testing.T) {
	s := startRedis(t)
	for i, c := range []quotatest.Concurrent{
		{Limit: quota.Limit{Requests: 20, Window: time.Second, Algorithm: quota.FixedWindow}},
		{Limit: quota.Limit{Requests: 20, Window: time.Second, Algorithm: quota.SlidingWindow}},
		{Limit: quota.Limit{Requests: 20, Window: time.Second, Algorithm: quota.TokenBucket}},
		// Counted in units of a second (1157.4 tokens each): drained at .999999
		// of a second, then asked for more than it refills.
		{Limit: quota.Limit{Requests: 100000007, Window: 24 * time.Hour, Algorithm: quota.TokenBucket},
			Unit: time.Second, Start: 999999 * time.Microsecond, FirstHits: 5000000, Hits: 400, MaxStep: 2 * time.Second},
	} {
		t.Run(fmt.Sprint(c.Limit.Algorithm, "/", c.Limit.Requests, "/", c.Limit.Window), func(t *testing.T) {
			a := newTestHandler(t, s.addr, nil)
			b := newTestHandler(t, s.addr, func(p *Params) { p.LocalCacheSize = 0 }) // one replica without the cache
			c.Rounds, c.Workers, c.PerWorker, c.Seed = 40, 16, 2, uint64(10+i)
			if c.MaxStep == 0 {
				c.MaxStep = 250 * time.Millisecond
			}
			c.Run(t, []quota.RateLimiter{a, b}, fmt.Sprint("replicas", i))
			if n := a.stats.Drops(quotakit.ReasonFailOpen) + b.stats.Drops(quotakit.ReasonFailOpen); n > 0 {
				t.Errorf("%d decisions failed open", n)
			}
		})
	}
}

// TestIntegrationSharedPipelines: many callers, each on keys of its own with a
// limit of its own and batches of different sizes, share pipelines; every caller
// must get the answers of its own requests, in order.
func TestIntegrationSharedPipelines(t *testing.T) {
	s := startRedis(t)
	for _, inflight := range []int{1, DefaultMaxInFlight} {
		t.Run(fmt.Sprint("maxInFlight=", inflight), func(t *testing.T) {
			h := newTestHandler(t, s.addr, func(p *Params) { p.MaxInFlight = inflight; p.LocalCacheSize = 0 })
			now := time.Now()
			const callers, rounds = 48, 12
			var wg sync.WaitGroup
			for c := range callers {
				wg.Go(func() {
					// Caller c sends c%3+1 requests per call, each on its own key with
					// limit 100+c+j, and counts one hit per key and round.
					n := c%3 + 1
					reqs := make([]quota.Request, n)
					for j := range reqs {
						reqs[j] = quota.Request{
							Key:   fmt.Sprintf("shared/%s/%d/%d", t.Name(), c, j),
							Limit: quota.Limit{Requests: uint64(100 + c + j), Window: time.Hour, Algorithm: quota.FixedWindow},
							Hits:  1,
						}
					}
					out := make([]quota.Decision, n)
					for r := range rounds {
						if err := h.Allow(context.Background(), now, reqs, out); err != nil {
							t.Error(err)
							return
						}
						for j, d := range out {
							if want := uint64(100+c+j) - uint64(r+1); !d.Allowed || d.Remaining != want {
								t.Errorf("caller %d round %d request %d: %+v, want allowed with %d remaining", c, r, j, d, want)
								return
							}
						}
					}
				})
			}
			wg.Wait()
			if n := h.stats.Drops(quotakit.ReasonFailOpen); n > 0 {
				t.Errorf("%d decisions failed open", n)
			}
			var m dto.Metric
			if err := h.pipelineCalls.Write(&m); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d script calls in %d pipelines", uint64(m.GetHistogram().GetSampleSum()), m.GetHistogram().GetSampleCount())
		})
	}
}

// TestIntegrationFixedWindowRealClock: two replicas and many goroutines on the real
// clock for several windows: exactly the limit is allowed in every window, never more.
func TestIntegrationFixedWindowRealClock(t *testing.T) {
	s := startRedis(t)
	replicas := []testHandler{newTestHandler(t, s.addr, nil), newTestHandler(t, s.addr, nil)}
	l := quota.Limit{Requests: 25, Window: 100 * time.Millisecond}
	key := fmt.Sprint("realclock-", time.Now().UnixNano())
	var mu sync.Mutex
	allowed := map[int64]int{}
	denied := map[int64]int{}
	stop := time.Now().Add(700 * time.Millisecond)
	var wg sync.WaitGroup
	for w := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := replicas[w%2]
			for time.Now().Before(stop) {
				now := time.Now()
				var out [1]quota.Decision
				if err := h.Allow(context.Background(), now, []quota.Request{{Key: key, Limit: l, Hits: 1}}, out[:]); err != nil {
					t.Error(err)
					return
				}
				win := now.UnixMicro() / l.Window.Microseconds()
				mu.Lock()
				if out[0].Allowed {
					allowed[win]++
				} else {
					denied[win]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	full := 0
	for win, n := range allowed {
		if n > int(l.Requests) {
			t.Errorf("window %d: %d allowed, limit %d", win, n, l.Requests)
		}
		if denied[win] > 0 {
			full++
			if n != int(l.Requests) {
				t.Errorf("window %d: %d allowed with %d denied, want exactly %d", win, n, denied[win], l.Requests)
			}
		}
	}
	if full < 4 {
		t.Errorf("only %d windows were saturated", full)
	}
	for _, h := range replicas {
		if n := h.stats.Drops(quotakit.ReasonFailOpen); n > 0 {
			t.Errorf("%d decisions failed open", n)
		}
	}
}

// TestIntegrationLocalCache: once a key is denied, its requests are answered in the
// replica until the key could allow again; Redis sees only the decisions it must
// make, counted by its own INFO commandstats.
func TestIntegrationLocalCache(t *testing.T) {
	s := startRedis(t)
	now := quotatest.Base()
	for _, tc := range []struct {
		l     quota.Limit
		calls int // EVALSHA calls for 100 one-hit requests at one time
	}{
		{quota.Limit{Requests: 5, Window: time.Minute}, 5}, // the 5th fills the window
		{quota.Limit{Requests: 5, Window: time.Minute, Algorithm: quota.SlidingWindow}, 5},
		{quota.Limit{Requests: 5, Window: time.Minute, Algorithm: quota.TokenBucket}, 5},
	} {
		for _, size := range []int{100, 0} {
			h := newTestHandler(t, s.addr, func(p *Params) { p.LocalCacheSize = size })
			key := fmt.Sprintf("cache/%s/%d", tc.l.Algorithm, size)
			s.resetStats()
			n := 0
			for range 100 {
				if quotatest.AllowOne(t, h, now, quota.Request{Key: key, Limit: tc.l, Hits: 1}).Allowed {
					n++
				}
			}
			want := tc.calls
			if size == 0 {
				want = 100
			}
			if got := s.calls("evalsha"); got != want || n != 5 {
				t.Errorf("%s, localCacheSize %d: %d EVALSHA calls (want %d), %d allowed", tc.l.Algorithm, size, got, want, n)
			}
			// A config change that shortens the window is not answered from the
			// denial of the old one: five seconds on, a one-second window allows.
			shorter := tc.l
			shorter.Window = time.Second
			if d := quotatest.AllowOne(t, h, now.Add(5*time.Second), quota.Request{Key: key, Limit: shorter, Hits: 1}); !d.Allowed {
				t.Errorf("%s, localCacheSize %d: a one-second window denied from the one-minute window's denial: %+v", tc.l.Algorithm, size, d)
			}
			// Once the key could allow again, the cache lets requests through.
			later := now.Add(time.Minute)
			if d := quotatest.AllowOne(t, h, later, quota.Request{Key: key, Limit: tc.l, Hits: 1}); !d.Allowed {
				t.Errorf("%s, localCacheSize %d: denied after the reset: %+v", tc.l.Algorithm, size, d)
			}
		}
	}
}

// TestIntegrationScriptCacheFlushed: after SCRIPT FLUSH the scripts are sent in full
// (EVAL), counted, and decisions go on.
func TestIntegrationScriptCacheFlushed(t *testing.T) {
	s := startRedis(t)
	h := newTestHandler(t, s.addr, func(p *Params) { p.LocalCacheSize = 0 })
	l := quota.Limit{Requests: 2, Window: time.Minute, Algorithm: quota.SlidingWindow}
	now := quotatest.Base()
	if !quotatest.AllowOne(t, h, now, quota.Request{Key: "flush", Limit: l, Hits: 1}).Allowed {
		t.Fatal("denied")
	}
	if err := s.client.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	s.resetStats()
	reqs := []quota.Request{{Key: "flush", Limit: l, Hits: 1}, {Key: "flush", Limit: l, Hits: 1}}
	out := make([]quota.Decision, 2)
	if err := h.Allow(context.Background(), now, reqs, out); err != nil {
		t.Fatal(err)
	}
	if !out[0].Allowed || out[1].Allowed {
		t.Errorf("after the flush: %+v", out)
	}
	if s.calls("eval") != 2 || h.stats.Drops(quotakit.ReasonFailOpen) != 0 {
		t.Errorf("%d EVAL calls, %d failed open", s.calls("eval"), h.stats.Drops(quotakit.ReasonFailOpen))
	}
	if n := h.stats.Errors(reasonScriptMissing); n != 1 {
		t.Errorf("%d pipelines counted as sent again for lost scripts, want 1", n)
	}
}

// TestIntegrationRedisDown: while Redis is down every decision follows the fail
// policy, is counted, and the burst is logged once; after a restart (an empty
// server, without the scripts) decisions come from Redis again.
func TestIntegrationRedisDown(t *testing.T) {
	s := startRedis(t)
	var offset atomic.Int64 // lets the test skip the quiet time that ends a burst
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	open := newTestHandler(t, s.addr, nil)
	closed := newClockedHandler(t, s.addr, clock, func(p *Params) { p.FailPolicy = "closed" })
	l := quota.Limit{Requests: 1, Window: time.Hour}
	key := func(i int) quota.Request { return quota.Request{Key: fmt.Sprint("down", i), Limit: l, Hits: 1} }
	now := quotatest.Base()
	if !quotatest.AllowOne(t, open, now, key(0)).Allowed || quotatest.AllowOne(t, closed, now, key(0)).Allowed {
		t.Fatal("Redis did not decide")
	}
	// A key denied before the outage stays denied from the local cache, even
	// failing open: the denial is known.
	if d := quotatest.AllowOne(t, open, now, key(0)); d.Allowed {
		t.Errorf("a cached denial was forgotten: %+v", d)
	}
	s.stop()
	start := time.Now()
	for i := range 50 {
		if d := quotatest.AllowOne(t, open, now, key(i+1)); !d.Allowed {
			t.Fatalf("fail open denied: %+v", d)
		}
		if d := quotatest.AllowOne(t, closed, now, key(i+1)); d.Allowed {
			t.Fatalf("fail closed allowed: %+v", d)
		}
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("100 decisions took %v with Redis down", el)
	}
	for _, tc := range []struct {
		h      testHandler
		reason string
	}{{open, quotakit.ReasonFailOpen}, {closed, quotakit.ReasonFailClosed}} {
		if n := tc.h.stats.Drops(tc.reason); n != 50 {
			t.Errorf("%s: %d counted, want 50", tc.reason, n)
		}
		if n := tc.h.stats.Errors(quotakit.ReasonError) + tc.h.stats.Errors(quotakit.ReasonTimeout); n != 50 {
			t.Errorf("%s: %d backend errors counted, want 50", tc.reason, n)
		}
		if n := strings.Count(tc.h.log.String(), "quota backend failing"); n != 1 {
			t.Errorf("%s: the outage was logged %d times:\n%s", tc.reason, n, tc.h.log.String())
		}
	}
	s.restart()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := closed.stats.Drops(quotakit.ReasonFailClosed)
		d := quotatest.AllowOne(t, closed, now, key(1000))
		if closed.stats.Drops(quotakit.ReasonFailClosed) == before {
			if !d.Allowed {
				t.Errorf("Redis back, a fresh key denied: %+v", d)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("decisions did not come back from Redis within 10s of its restart")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Contains(closed.log.String(), "quota backend recovered") {
		t.Errorf("recovery logged before a quiet time without failures:\n%s", closed.log.String())
	}
	offset.Add(int64(quotakit.BurstQuiet))
	quotatest.AllowOne(t, closed, now, key(1001))
	if !strings.Contains(closed.log.String(), "quota backend recovered") {
		t.Errorf("recovery not logged:\n%s", closed.log.String())
	}
	if s.calls("eval") == 0 {
		t.Error("the restarted server was never sent the script in full")
	}
}

// TestIntegrationConnectionKilled: a handler's pipelines keep connections of
// their own. One that Redis closed while it idled is replaced before use, found
// by a peek at its socket; one closed while in use fails its next pipeline, which
// is decided by the fail policy and counted, and the handler connects again.
func TestIntegrationConnectionKilled(t *testing.T) {
	s := startRedis(t)
	h := newTestHandler(t, s.addr, func(p *Params) { p.FailPolicy = "closed" })
	l := quota.Limit{Requests: 100, Window: time.Hour}
	now := quotatest.Base()
	req := func(k string) quota.Request { return quota.Request{Key: k, Limit: l, Hits: 1} }
	kill := func() {
		t.Helper()
		if err := s.client.Do(context.Background(), "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").Err(); err != nil {
			t.Fatal(err)
		}
	}
	if !quotatest.AllowOne(t, h, now, req("warm")).Allowed {
		t.Fatal("Redis did not decide")
	}
	kill()
	time.Sleep(slotIdle + 100*time.Millisecond)
	if d := quotatest.AllowOne(t, h, now, req("after-idle")); !d.Allowed || d.Remaining != 99 {
		t.Errorf("after an idle connection was killed: %+v", d)
	}
	if n := h.stats.Drops(quotakit.ReasonFailClosed); n != 0 {
		t.Errorf("%d decisions failed after an idle connection was killed", n)
	}
	kill()
	failed := 0
	for i := range DefaultMaxInFlight + 1 {
		if d := quotatest.AllowOne(t, h, now, req(fmt.Sprint("after-kill", i))); !d.Allowed {
			failed++
		}
	}
	if failed > 1 || h.stats.Drops(quotakit.ReasonFailClosed) != failed {
		t.Errorf("%d of %d decisions failed after a connection in use was killed, %d counted",
			failed, DefaultMaxInFlight+1, h.stats.Drops(quotakit.ReasonFailClosed))
	}
	if d := quotatest.AllowOne(t, h, now, req("after-kill")); !d.Allowed || d.Remaining != 99 {
		t.Errorf("Redis did not decide again: %+v", d)
	}
}

// TestIntegrationLateCall: a call whose deadline has passed before its pipeline
// goes out sends nothing and leaves the slot its connection.
func TestIntegrationLateCall(t *testing.T) {
	s := startRedis(t)
	h := newTestHandler(t, s.addr, nil)
	l := quota.Limit{Requests: 10, Window: time.Hour}
	now := quotatest.Base()
	quotatest.AllowOne(t, h, now, quota.Request{Key: "warm", Limit: l, Hits: 1})
	conns := func() []*respConn { // every slot is free between calls
		h.pipes.mu.Lock()
		defer h.pipes.mu.Unlock()
		var cs []*respConn
		for _, sl := range h.pipes.free {
			cs = append(cs, sl.rc)
		}
		return cs
	}
	before, sent := conns(), s.calls("evalsha")
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Millisecond))
	defer cancel()
	var out [1]quota.Decision
	if err := h.Allow(ctx, now, []quota.Request{{Key: "late", Limit: l, Hits: 1}}, out[:]); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a call past its deadline: %v", err)
	}
	if got := conns(); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Errorf("slot connections %v, were %v", got, before)
	}
	if n := s.calls("evalsha") - sent; n != 0 {
		t.Errorf("%d scripts sent for a call past its deadline", n)
	}
	if d := quotatest.AllowOne(t, h, now, quota.Request{Key: "warm", Limit: l, Hits: 1}); !d.Allowed || d.Remaining != 8 {
		t.Errorf("the next call: %+v", d)
	}
}

// TestIntegrationSlowRedis: a Redis that does not answer within the timeout (all
// clients paused) is a failure: decided by policy in about the timeout, counted as
// backend_timeout.
func TestIntegrationSlowRedis(t *testing.T) {
	s := startRedis(t)
	for _, policy := range []string{"open", "closed"} {
		h := newTestHandler(t, s.addr, func(p *Params) { p.FailPolicy = policy; p.Timeout = 50 * time.Millisecond })
		l := quota.Limit{Requests: 10, Window: time.Hour, Algorithm: quota.TokenBucket}
		now := quotatest.Base()
		quotatest.AllowOne(t, h, now, quota.Request{Key: "slow-warm-" + policy, Limit: l, Hits: 1})
		if err := s.client.Do(context.Background(), "CLIENT", "PAUSE", "600", "ALL").Err(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		d := quotatest.AllowOne(t, h, now, quota.Request{Key: "slow-" + policy, Limit: l, Hits: 1})
		el := time.Since(start)
		if d.Allowed != (policy == "open") {
			t.Errorf("%s: %+v", policy, d)
		}
		if el < 40*time.Millisecond || el > 400*time.Millisecond {
			t.Errorf("%s: decided in %v with a 50ms timeout", policy, el)
		}
		if h.stats.Errors(quotakit.ReasonTimeout) != 1 || h.stats.Drops("fail_"+policy) != 1 {
			t.Errorf("%s: %d timeouts, %d drops counted", policy, h.stats.Errors(quotakit.ReasonTimeout), h.stats.Drops("fail_"+policy))
		}
		if err := s.client.Do(context.Background(), "CLIENT", "UNPAUSE").Err(); err != nil {
			t.Fatal(err)
		}
		if d := quotatest.AllowOne(t, h, now, quota.Request{Key: "slow-after-" + policy, Limit: l, Hits: 1}); !d.Allowed || d.Remaining != 9 {
			t.Errorf("%s: after the pause: %+v", policy, d)
		}
	}
}

// TestIntegrationRoundTripMetric: every pipeline's round trip is observed, and a
// Redis that holds its answers (all clients paused for 150 ms) shows in the tail.
func TestIntegrationRoundTripMetric(t *testing.T) {
	s := startRedis(t)
	h := newTestHandler(t, s.addr, nil)
	l := quota.Limit{Requests: 10, Window: time.Hour}
	now := quotatest.Base()
	for i := range 3 {
		quotatest.AllowOne(t, h, now, quota.Request{Key: fmt.Sprint("rtt-", i), Limit: l, Hits: 1})
	}
	if err := s.client.Do(context.Background(), "CLIENT", "PAUSE", "150", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	if d := quotatest.AllowOne(t, h, now, quota.Request{Key: "rtt-paused", Limit: l, Hits: 1}); !d.Allowed || d.Remaining != 9 {
		t.Errorf("the call during the pause: %+v", d)
	}
	var rtt, calls dto.Metric
	if err := h.roundTrips.Write(&rtt); err != nil {
		t.Fatal(err)
	}
	if err := h.pipelineCalls.Write(&calls); err != nil {
		t.Fatal(err)
	}
	got := rtt.GetHistogram()
	if n := got.GetSampleCount(); n < 4 || n != calls.GetHistogram().GetSampleCount() {
		t.Errorf("%d round trips observed, %d pipelines sent; want one per pipeline, at least 4", n, calls.GetHistogram().GetSampleCount())
	}
	var upTo100ms uint64
	for _, b := range got.GetBucket() {
		if b.GetUpperBound() == 0.1024 {
			upTo100ms = b.GetCumulativeCount()
		}
	}
	if slow := got.GetSampleCount() - upTo100ms; slow < 1 || got.GetSampleSum() < 0.14 {
		t.Errorf("%d round trips over 102.4 ms, %.3f s in all; want the paused one (150 ms) among them", slow, got.GetSampleSum())
	}
}

// TestIntegrationKeysExpire: every key is written with an expiry, and is gone once
// its state no longer matters (plus a second of slack, and a fixed window's jitter).
func TestIntegrationKeysExpire(t *testing.T) {
	s := startRedis(t)
	h := newTestHandler(t, s.addr, func(p *Params) { p.LocalCacheSize = 0 })
	now := time.Now()
	for i, alg := range []quota.Algorithm{quota.FixedWindow, quota.SlidingWindow, quota.TokenBucket} {
		l := quota.Limit{Requests: 3, Window: 200 * time.Millisecond, Algorithm: alg}
		for range 5 {
			quotatest.AllowOne(t, h, now, quota.Request{Key: fmt.Sprint("ttl", i), Limit: l, Hits: 1})
		}
	}
	ctx := context.Background()
	keys, err := s.client.Keys(ctx, "sluice:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 4 { // a fixed window's counter, a sliding log and its hits, a bucket
		t.Errorf("keys %q", keys)
	}
	var longest time.Duration
	for _, k := range keys {
		ttl, err := s.client.PTTL(ctx, k).Result()
		// The window and the slack; a fixed window's counter also its jitter, of
		// less than one window.
		limit := 1300 * time.Millisecond
		if strings.HasPrefix(k, fixedPrefix) {
			limit += 200 * time.Millisecond
		}
		if err != nil || ttl <= 0 || ttl > limit {
			t.Errorf("%s: PTTL %v, %v", k, ttl, err)
		}
		longest = max(longest, ttl)
	}
	// EXISTS, not DBSIZE: Redis reclaims expired keys lazily or by sampling, so
	// DBSIZE may still count a key whose TTL has passed.
	time.Sleep(longest + 50*time.Millisecond)
	if n, err := s.client.Exists(ctx, keys...).Result(); err != nil || n != 0 {
		t.Errorf("%d of %q left after their TTL, %v", n, keys, err)
	}
}

// TestIntegrationOldBucketIgnored: a bucket an earlier version wrote (its time in
// the scale's units, under sluice:tb:) is not read as a time in µs: the bucket of
// the same limit lives under a key of its own, and the old key is left to expire.
func TestIntegrationOldBucketIgnored(t *testing.T) {
	s := startRedis(t)
	h := newTestHandler(t, s.addr, func(p *Params) { p.LocalCacheSize = 0 })
	ctx := context.Background()
	l := quota.Limit{Requests: 100000007, Window: 24 * time.Hour, Algorithm: quota.TokenBucket}
	now := quotatest.Base()
	old := "sluice:tb:{old}:100000007:86400000000"
	// Empty, at the current second (in units of a second).
	if err := s.client.HSet(ctx, old, "k", "0", "l", fmt.Sprint(now.Unix())).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.client.PExpire(ctx, old, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	want := quota.Decision{Allowed: true, Remaining: 100000007 - 1157}
	if d := quotatest.AllowOne(t, h, now, quota.Request{Key: "old", Limit: l, Hits: 1157}); d != want {
		t.Errorf("got %+v, want %+v (a full bucket)", d, want)
	}
	if d := quotatest.AllowOne(t, h, now.Add(time.Microsecond), quota.Request{Key: "old", Limit: l, Hits: 1}); !d.Allowed || d.Remaining != want.Remaining-1 {
		t.Errorf("a µs later: %+v", d)
	}
	if v, err := s.client.HGet(ctx, old, "l").Result(); err != nil || v != fmt.Sprint(now.Unix()) {
		t.Errorf("the old bucket's time is %q, %v: it was written over", v, err)
	}
}

// TestIntegrationQuotaInstances: quota instances resolve to their quota and override,
// and count per dimension set.
func TestIntegrationQuotaInstances(t *testing.T) {
	s := startRedis(t)
	one := int64(1)
	h := newTestHandler(t, s.addr, func(p *Params) {
		p.Quotas = []quotakit.Quota{{Name: "rq", MaxAmount: 3, ValidDuration: time.Minute, Algorithm: "sliding_window",
			Overrides: []quotakit.Override{{Dimensions: map[string]string{"user": "greedy"}, MaxAmount: &one}}}}
	}, "ns/rq")
	now := quotatest.Base()
	count := func(dims map[string]string) int {
		n := 0
		for range 5 {
			d, err := h.Quota(context.Background(), now, &quota.Instance{Name: "ns/rq", Dimensions: dims}, 1)
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed {
				n++
			}
		}
		return n
	}
	if a, b, c := count(map[string]string{"user": "a"}), count(map[string]string{"user": "b"}), count(map[string]string{"user": "greedy"}); a != 3 || b != 3 || c != 1 {
		t.Errorf("allowed a=%d b=%d greedy=%d, want 3 3 1", a, b, c)
	}
}

// TestIntegrationCluster: a three-node Redis Cluster (created with redis-cli
// --cluster create). The sliding window's two keys share a hash tag, or Redis would
// refuse the script (CROSSSLOT); limits spread over the nodes.
func TestIntegrationCluster(t *testing.T) {
	dir := t.TempDir()
	var nodes []*redisServer
	for i := range 3 {
		nodes = append(nodes, startRedis(t, "--cluster-enabled", "yes", "--dir", dir,
			"--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d.conf", i)), "--cluster-node-timeout", "2000"))
	}
	args := []string{"--cluster", "create"}
	for _, n := range nodes {
		args = append(args, n.addr)
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, n := range nodes {
		for {
			info, _ := n.client.ClusterInfo(context.Background()).Result()
			if strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster not ok on %s: %s", n.addr, info)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	addrs := []string{nodes[0].addr, nodes[1].addr, nodes[2].addr}
	mod := func(p *Params) { p.RedisServerURL = ""; p.ClusterAddresses = addrs; p.Timeout = time.Second }
	a := newTestHandler(t, "", mod)
	if _, ok := a.client.(*redis.ClusterClient); !ok {
		t.Fatalf("client %T", a.client)
	}
	quotatest.RunSequences(t, a, "cluster")
	quotatest.RunBatch(t, a, "cluster")
	b := newTestHandler(t, "", func(p *Params) { mod(p); p.LocalCacheSize = 0 })
	c := quotatest.Concurrent{Limit: quota.Limit{Requests: 20, Window: time.Second, Algorithm: quota.SlidingWindow},
		Rounds: 20, Workers: 8, PerWorker: 2, MaxStep: 250 * time.Millisecond, Seed: 7}
	c.Run(t, []quota.RateLimiter{a, b}, "cluster-replicas")
	// One batch over many limits: one pipeline, split by go-redis per node.
	reqs := make([]quota.Request, 60)
	for i := range reqs {
		reqs[i] = quota.Request{Key: fmt.Sprint("spread", i), Limit: quota.Limit{Requests: 1, Window: time.Minute, Algorithm: quota.SlidingWindow}, Hits: 1}
	}
	out := make([]quota.Decision, len(reqs))
	if err := a.Allow(context.Background(), quotatest.Base(), reqs, out); err != nil {
		t.Fatal(err)
	}
	for i, d := range out {
		if !d.Allowed {
			t.Errorf("request %d: %+v", i, d)
		}
	}
	for _, n := range nodes {
		if size, _ := n.client.DBSize(context.Background()).Result(); size == 0 {
			t.Errorf("node %s holds no keys", n.addr)
		}
	}
	if n := a.stats.Drops(quotakit.ReasonFailOpen) + b.stats.Drops(quotakit.ReasonFailOpen); n > 0 {
		t.Errorf("%d decisions failed open:\n%s", n, a.log.String())
	}
}

// TestIntegrationSameAsMemquota feeds random batches (times going back now and then,
// zero hits, more hits than the limit) to memquota and to Redis: the two backends
// must answer every request identically.
func TestIntegrationSameAsMemquota(t *testing.T) {
	s := startRedis(t)
	red := newTestHandler(t, s.addr, func(p *Params) { p.LocalCacheSize = 0 })
	mem, err := memquota.New(adapters.Env{}, &memquota.Params{MaxKeys: 1000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close(context.Background())
	rng := rand.New(rand.NewPCG(42, 7))
	// Each limit with the longest step between batches (3/40 of which a step may
	// go back), the most hits of a request of many, and whether its first batch
	// drains both keys' buckets.
	type limit struct {
		quota.Limit
		step  time.Duration
		hits  uint64
		drain bool
	}
	var limits []limit
	for _, alg := range []quota.Algorithm{quota.FixedWindow, quota.SlidingWindow, quota.TokenBucket} {
		for _, n := range []uint64{1, 3, 7, 5000} {
			for _, w := range []time.Duration{time.Second, 1500 * time.Millisecond, 7 * time.Second} {
				limits = append(limits, limit{quota.Limit{Requests: n, Window: w, Algorithm: alg}, w / 3, n, false})
			}
		}
	}
	// Token buckets counted in coarse units (quotakit.TokenScale): 1s (1157.4
	// tokens a unit) and 1ms (4.5 tokens), drained first, then with steps of a
	// few units, mostly between units' turns, and hits of a few units' refills.
	limits = append(limits,
		limit{quota.Limit{Requests: 100000007, Window: 24 * time.Hour, Algorithm: quota.TokenBucket}, 3 * time.Second, 4000, true},
		limit{quota.Limit{Requests: 4503607, Window: 1000 * time.Second, Algorithm: quota.TokenBucket}, 3 * time.Millisecond, 16, true})
	for li, l := range limits {
		now := quotatest.Base()
		keys := []string{fmt.Sprint("diff", li, "a"), fmt.Sprint("diff", li, "b")}
		for step := range 150 {
			now = now.Add(time.Duration(rng.Int64N(int64(l.step/time.Microsecond))-int64(l.step/time.Microsecond)*3/40) * time.Microsecond)
			reqs := make([]quota.Request, 1+rng.IntN(3))
			for i := range reqs {
				hits := uint64(1)
				switch rng.IntN(10) {
				case 0:
					hits = 0
				case 1:
					hits = l.Requests + 1
				case 2, 3:
					hits = 1 + rng.Uint64N(l.hits)
				}
				reqs[i] = quota.Request{Key: keys[rng.IntN(2)], Limit: l.Limit, Hits: hits}
			}
			if step == 0 && l.drain {
				reqs = []quota.Request{{Key: keys[0], Limit: l.Limit, Hits: l.Requests}, {Key: keys[1], Limit: l.Limit, Hits: l.Requests}}
			}
			a, b := make([]quota.Decision, len(reqs)), make([]quota.Decision, len(reqs))
			if err := mem.Allow(context.Background(), now, reqs, a); err != nil {
				t.Fatal(err)
			}
			if err := red.Allow(context.Background(), now, reqs, b); err != nil {
				t.Fatal(err)
			}
			for i := range reqs {
				if a[i] != b[i] {
					t.Fatalf("%+v step %d request %d (%d hits at +%v): memquota %+v, redisquota %+v",
						l.Limit, step, i, reqs[i].Hits, now.Sub(quotatest.Base()), a[i], b[i])
				}
			}
		}
	}
	if n := red.stats.Drops(quotakit.ReasonFailOpen); n > 0 {
		t.Errorf("%d decisions failed open", n)
	}
}

// TestIntegrationPasswordAndDB: AUTH and SELECT, from params or from a redis:// URL;
// a wrong password is a backend failure, decided by the fail policy.
func TestIntegrationPasswordAndDB(t *testing.T) {
	s := startRedis(t, "--requirepass", "s3cret")
	l := quota.Limit{Requests: 1, Window: time.Minute}
	now := quotatest.Base()
	for i, mod := range []func(*Params){
		func(p *Params) { p.Password, p.DB = "s3cret", 2 },
		func(p *Params) { p.RedisServerURL = "redis://:s3cret@" + s.addr + "/2" },
	} {
		h := newTestHandler(t, s.addr, mod)
		key := fmt.Sprint("auth", i)
		if d := quotatest.AllowOne(t, h, now, quota.Request{Key: key, Limit: l, Hits: 1}); !d.Allowed {
			t.Errorf("case %d: %+v", i, d)
		}
		if d := quotatest.AllowOne(t, h, now, quota.Request{Key: key, Limit: l, Hits: 1}); d.Allowed {
			t.Errorf("case %d: the second hit was allowed: %+v", i, d)
		}
		if n := h.stats.Drops(quotakit.ReasonFailOpen); n != 0 {
			t.Errorf("case %d: %d decisions failed open", i, n)
		}
	}
	admin := redis.NewClient(&redis.Options{Addr: s.addr, Password: "s3cret", DB: 2})
	defer admin.Close()
	if n, err := admin.DBSize(context.Background()).Result(); err != nil || n != 2 {
		t.Errorf("db 2 holds %d keys (%v), want 2", n, err)
	}
	wrong := newTestHandler(t, s.addr, func(p *Params) { p.Password = "guess"; p.FailPolicy = "closed" })
	if d := quotatest.AllowOne(t, wrong, now, quota.Request{Key: "auth-wrong", Limit: l, Hits: 1}); d.Allowed {
		t.Errorf("a wrong password allowed: %+v", d)
	}
	if wrong.stats.Drops(quotakit.ReasonFailClosed) != 1 {
		t.Errorf("the failure was not counted")
	}
}
