package check

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluicemesh/sluice/templates/authorization"
)

func testCacheMetrics() *metrics {
	return &metrics{cacheHits: prometheus.NewCounter(prometheus.CounterOpts{Name: "h"}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{Name: "m"}), cacheEvictions: prometheus.NewCounter(prometheus.CounterOpts{Name: "e"}),
		cacheSkips: prometheus.NewCounter(prometheus.CounterOpts{Name: "s"})}
}

// TestCacheKeyBound: an answer whose key is longer than maxKeyBytes is not kept
// (the client chooses the values a key is made of), and is counted.
func TestCacheKeyBound(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	m := testCacheMetrics()
	c := newCache(100, m)
	for _, n := range []int{maxKeyBytes, maxKeyBytes + 1, 60 << 10} {
		c.put(make([]byte, n), authorization.Result{}, "r", t0.Add(time.Minute))
		_, _, hit := c.get(make([]byte, n), t0)
		if want := n <= maxKeyBytes; hit != want {
			t.Errorf("a key of %d bytes: cached %v, want %v", n, hit, want)
		}
	}
	if got := testutil.ToFloat64(m.cacheSkips); got != 2 {
		t.Errorf("%v answers counted as not cached, want 2", got)
	}
	if n := c.len(); n != 1 {
		t.Errorf("%d entries, want 1", n)
	}
}

// TestCacheLRU: a full shard evicts its least recently used entry, a hit makes an
// entry recent, an expired entry is not served, and a put of a present key updates it.
func TestCacheLRU(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	type op struct {
		put   bool
		key   string
		rule  string        // put: the value stored; get: the value wanted, "" for a miss
		valid time.Duration // put: how long the entry holds
		at    time.Duration // get: when, after t0
	}
	for _, tc := range []struct {
		name      string
		perCap    int // entries the one shard holds
		ops       []op
		evictions float64
	}{
		{"a miss, then a hit", 2, []op{
			{key: "a"},
			{put: true, key: "a", rule: "r1", valid: time.Minute},
			{key: "a", rule: "r1"},
		}, 0},
		{"the least recently used goes first", 2, []op{
			{put: true, key: "a", rule: "ra", valid: time.Minute},
			{put: true, key: "b", rule: "rb", valid: time.Minute},
			{key: "a", rule: "ra"}, // a is now more recent than b
			{put: true, key: "c", rule: "rc", valid: time.Minute},
			{key: "b"},
			{key: "a", rule: "ra"},
			{key: "c", rule: "rc"},
		}, 1},
		{"an update keeps one entry", 2, []op{
			{put: true, key: "a", rule: "old", valid: time.Minute},
			{put: true, key: "a", rule: "new", valid: time.Minute},
			{put: true, key: "b", rule: "rb", valid: time.Minute},
			{key: "a", rule: "new"},
			{key: "b", rule: "rb"},
		}, 0},
		{"an expired entry is a miss, and frees its place", 2, []op{
			{put: true, key: "a", rule: "ra", valid: time.Second},
			{key: "a", at: 2 * time.Second},
			{put: true, key: "b", rule: "rb", valid: time.Minute},
			{put: true, key: "c", rule: "rc", valid: time.Minute},
			{key: "b", rule: "rb"},
			{key: "c", rule: "rc"},
		}, 0},
		{"a shard of one keeps the last", 1, []op{
			{put: true, key: "a", rule: "ra", valid: time.Minute},
			{put: true, key: "b", rule: "rb", valid: time.Minute},
			{put: true, key: "c", rule: "rc", valid: time.Minute},
			{key: "a"},
			{key: "b"},
			{key: "c", rule: "rc"},
		}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := testCacheMetrics()
			c := newCache(16*tc.perCap, m)
			// One shard for every key, so that the shard's capacity is what is tested.
			c.shards = c.shards[:1]
			for i, o := range tc.ops {
				if o.put {
					c.put([]byte(o.key), authorization.Result{}, o.rule, t0.Add(o.valid))
					continue
				}
				_, rule, hit := c.get([]byte(o.key), t0.Add(o.at))
				if hit != (o.rule != "") || rule != o.rule {
					t.Errorf("op %d: get %s = %q, hit %v; want %q", i, o.key, rule, hit, o.rule)
				}
			}
			if got := testutil.ToFloat64(m.cacheEvictions); got != tc.evictions {
				t.Errorf("%v evictions, want %v", got, tc.evictions)
			}
			if n := c.len(); n > c.shards[0].limit {
				t.Errorf("%d entries in a shard of %d", n, c.shards[0].limit)
			}
		})
	}
}

// TestCacheSizeBound: the shards' limits add up to the size asked for, however it
// divides, so that --check-cache-size is the bound of the whole cache; a size below
// the shard count makes that many shards of one.
func TestCacheSizeBound(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	for _, size := range []int{1, 2, 15, 16, 17, 160, 10000} {
		c := newCache(size, testCacheMetrics())
		if want := min(size, maxShards); len(c.shards) != want {
			t.Errorf("size %d: %d shards, want %d", size, len(c.shards), want)
		}
		sum := 0
		for i := range c.shards {
			if c.shards[i].limit < 1 {
				t.Errorf("size %d: shard %d holds %d", size, i, c.shards[i].limit)
			}
			sum += c.shards[i].limit
		}
		if sum != size {
			t.Errorf("size %d: the shards hold %d", size, sum)
		}
		// Enough distinct keys to fill every shard: the whole holds exactly size.
		for k := range 20*size + 100 {
			c.put(fmt.Appendf(nil, "key-%d", k), authorization.Result{}, "r", t0.Add(time.Minute))
		}
		if n := c.len(); n != size {
			t.Errorf("size %d: %d entries once full", size, n)
		}
	}
}
