package memquota

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/adaptertest"
	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/adapters/quotakit/quotatest"
	"github.com/sluicemesh/sluice/templates/quota"
)

func newHandler(t *testing.T, p *Params, instances ...string) (*Handler, *quotatest.Stats) {
	t.Helper()
	if p.MaxKeys == 0 {
		p.MaxKeys = DefaultMaxKeys
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	st := &quotatest.Stats{}
	h, err := New(adapters.Env{Name: "ns/mem", Stats: st, Now: quotatest.Base}, p, instances)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close(context.Background()) })
	return h, st
}

func TestValidate(t *testing.T) {
	ok := quotakit.Quota{Name: "rq", MaxAmount: 10, ValidDuration: time.Second}
	tests := []struct {
		name string
		p    Params
		path string // the FieldError path, "" when valid
	}{
		{"valid", Params{MaxKeys: 10, Quotas: []quotakit.Quota{ok}}, ""},
		{"no quotas", Params{MaxKeys: 1}, ""},
		{"maxKeys", Params{MaxKeys: 0, Quotas: []quotakit.Quota{ok}}, "maxKeys"},
		{"quota field", Params{MaxKeys: 10, Quotas: []quotakit.Quota{ok, {Name: "b", ValidDuration: time.Second}}}, "quotas[1].maxAmount"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			adaptertest.WantFieldError(t, tt.p.Validate(), tt.path)
		})
	}
}

func TestSequences(t *testing.T) {
	h, _ := newHandler(t, &Params{})
	quotatest.RunSequences(t, h, "mem")
}

func TestBatch(t *testing.T) {
	h, _ := newHandler(t, &Params{})
	quotatest.RunBatch(t, h, "mem")
}

// TestConcurrent races goroutines on one key with an injected clock; the allowed
// count of every round must be the reference model's, and each algorithm's
// guarantee must hold.
func TestConcurrent(t *testing.T) {
	for i, c := range []quotatest.Concurrent{
		{Limit: quota.Limit{Requests: 20, Window: time.Second, Algorithm: quota.FixedWindow}},
		{Limit: quota.Limit{Requests: 20, Window: time.Second, Algorithm: quota.SlidingWindow}},
		{Limit: quota.Limit{Requests: 20, Window: time.Second, Algorithm: quota.TokenBucket}},
		coarseBucket,
	} {
		t.Run(fmt.Sprint(c.Limit.Algorithm, "/", c.Limit.Requests, "/", c.Limit.Window), func(t *testing.T) {
			h, _ := newHandler(t, &Params{})
			c.Rounds, c.Workers, c.PerWorker, c.Seed = 60, 8, 3, uint64(i+1)
			if c.MaxStep == 0 {
				c.MaxStep = 250 * time.Millisecond
			}
			c.Run(t, []quota.RateLimiter{h, h}, "concurrent")
		})
	}
}

// coarseBucket is a token bucket counted in units of a second (1157.4 tokens
// each): drained at .999999 of a second, then asked for 400 hits a request more
// often than it refills.
var coarseBucket = quotatest.Concurrent{
	Limit:     quota.Limit{Requests: 100000007, Window: 24 * time.Hour, Algorithm: quota.TokenBucket},
	Unit:      time.Second,
	Start:     999999 * time.Microsecond,
	FirstHits: 5000000,
	Hits:      400,
	MaxStep:   2 * time.Second,
}

func TestQuotaOverrides(t *testing.T) {
	zero := int64(0)
	five := int64(5)
	h, _ := newHandler(t, &Params{Quotas: []quotakit.Quota{{
		Name: "rq", MaxAmount: 2, ValidDuration: time.Minute,
		Overrides: []quotakit.Override{
			{Dimensions: map[string]string{"source": "batch"}, MaxAmount: &zero},
			{Dimensions: map[string]string{"source": "batch", "dest": "db"}, MaxAmount: &five},
		},
	}}}, "ns/rq")
	ctx := context.Background()
	now := quotatest.Base()
	charge := func(dims map[string]string, n int) (allowed int) {
		for range n {
			d, err := h.Quota(ctx, now, &quota.Instance{Name: "ns/rq", Dimensions: dims}, 1)
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed {
				allowed++
			}
		}
		return allowed
	}
	for _, tc := range []struct {
		dims map[string]string
		want int
	}{
		{map[string]string{"source": "web"}, 2},
		{map[string]string{"source": "web", "dest": "db"}, 2}, // its own key: other dimensions
		{map[string]string{"source": "batch"}, 0},
		{map[string]string{"source": "batch", "dest": "db"}, 5},  // the more specific override
		{map[string]string{"source": "batch", "dest": "api"}, 0}, // only the first matches
	} {
		if got := charge(tc.dims, 10); got != tc.want {
			t.Errorf("%v: %d allowed, want %d", tc.dims, got, tc.want)
		}
	}
	if _, err := h.Quota(ctx, now, &quota.Instance{Name: "ns/other"}, 1); err == nil {
		t.Error("an instance without a quota was charged")
	}
}

func TestBind(t *testing.T) {
	f := Factory()
	p := f.NewParams().(*Params)
	p.Quotas = []quotakit.Quota{{Name: "rq", MaxAmount: 1, ValidDuration: time.Second}, {Name: "ns/rq", MaxAmount: 1, ValidDuration: time.Second}}
	for _, tc := range []struct {
		instances []string
		path      string
	}{
		{[]string{"other/rq"}, ""},
		{[]string{"ns/missing"}, "quotas"},
		{[]string{"ns/rq"}, "quotas[1].name"}, // matched by both
	} {
		_, err := f.Bind(adapters.Binding{Params: p, Instances: adapters.Instances{Quotas: tc.instances}})
		var fe *adapters.FieldError
		switch {
		case tc.path == "" && err != nil:
			t.Errorf("%v: %v", tc.instances, err)
		case tc.path != "" && (!errors.As(err, &fe) || fe.Path != tc.path):
			t.Errorf("%v: error %v, want one at %s", tc.instances, err, tc.path)
		}
	}
}

func TestMaxKeysEvictsLeastRecent(t *testing.T) {
	h, st := newHandler(t, &Params{MaxKeys: 3})
	if len(h.shards) != 2 {
		t.Fatalf("%d shards for 3 keys, want 2", len(h.shards))
	}
	now := quotatest.Base()
	l := quota.Limit{Requests: 1, Window: time.Minute}
	take := func(key string) bool {
		return quotatest.AllowOne(t, h, now, quota.Request{Key: key, Limit: l, Hits: 1}).Allowed
	}
	for i := range 50 {
		take(fmt.Sprint("k", i))
		if n := h.Len(); n > 3 {
			t.Fatalf("%d keys held, maxKeys 3", n)
		}
	}
	// Keys spread over the shards by hash: every key not held was evicted.
	evicted := st.Drops("key_evicted")
	if want := 50 - h.Len(); evicted != want {
		t.Errorf("%d evictions counted, want %d", evicted, want)
	}
	// The most recent key is still counted: its one hit is spent.
	if take("k49") {
		t.Error("the most recent key was forgotten")
	}
	// Keys whose state has expired make room without counting an eviction.
	now = now.Add(time.Hour)
	take("late")
	if got := st.Drops("key_evicted"); got != evicted {
		t.Errorf("an expired key counted as evicted: %d, was %d", got, evicted)
	}
}

// TestLongKeysBounded: maxKeys bounds the keys held, and MaxKeyBytes what each
// holds: keys made of long values (a client's 64 KiB header as a dimension) are
// kept as their bounded form, and each still has its own count.
func TestLongKeysBounded(t *testing.T) {
	h, _ := newHandler(t, &Params{})
	now := quotatest.Base()
	l := quota.Limit{Requests: 1, Window: time.Minute}
	long := strings.Repeat("v", 64<<10)
	const n = 100
	for i := range n {
		key := fmt.Sprint("api|user=", long, i)
		if !quotatest.AllowOne(t, h, now, quota.Request{Key: key, Limit: l, Hits: 1}).Allowed {
			t.Fatalf("key %d: the first hit was denied", i)
		}
		if quotatest.AllowOne(t, h, now, quota.Request{Key: key, Limit: l, Hits: 1}).Allowed {
			t.Fatalf("key %d: the second hit was allowed", i)
		}
	}
	held := 0
	for i := range h.shards {
		for k := range h.shards[i].keys {
			held += len(k.key)
		}
	}
	if held > n*quotakit.MaxKeyBytes {
		t.Errorf("%d keys hold %d bytes of key, want at most %d", h.Len(), held, n*quotakit.MaxKeyBytes)
	}
}

// TestMaxKeysHoldsLiveKeys: no live key is forgotten while the handler holds fewer
// than maxKeys keys, however the keys fall into its shards; so every user's count
// holds and an over-limit request is denied. At maxKeys, each new key forgets one
// other, counted as evicted.
func TestMaxKeysHoldsLiveKeys(t *testing.T) {
	l := quota.Limit{Requests: 2, Window: time.Minute}
	for _, tc := range []struct{ maxKeys, users int }{
		{100, 10},
		{1000, 600},
		{100, 100},
		{1000, 1000},
		{64, 64},
		{65, 65},
		{3, 3},
		{1, 1},
	} {
		t.Run(fmt.Sprintf("maxKeys=%d/users=%d", tc.maxKeys, tc.users), func(t *testing.T) {
			for trial := range 5 { // each handler hashes with a seed of its own
				h, st := newHandler(t, &Params{MaxKeys: tc.maxKeys})
				now := quotatest.Base()
				take := func(key string) bool {
					return quotatest.AllowOne(t, h, now, quota.Request{Key: key, Limit: l, Hits: 1}).Allowed
				}
				for round := range 3 {
					for u := range tc.users {
						if got, want := take(fmt.Sprint("user-", u)), round < 2; got != want {
							t.Fatalf("trial %d: user-%d's hit %d: allowed=%v, want %v", trial, u, round+1, got, want)
						}
					}
				}
				if n := st.Drops("key_evicted"); n != 0 {
					t.Fatalf("trial %d: %d keys evicted, %d held of at most %d", trial, n, h.Len(), tc.maxKeys)
				}
				if n := h.Len(); n != tc.users {
					t.Fatalf("trial %d: %d keys held, want %d", trial, n, tc.users)
				}
				if tc.users < tc.maxKeys {
					continue
				}
				// Full: a new key forgets one, and the bound holds.
				for i := range 10 {
					take(fmt.Sprint("new-", i))
					if n := h.Len(); n != tc.maxKeys {
						t.Fatalf("trial %d: %d keys held after new-%d, want %d", trial, n, i, tc.maxKeys)
					}
					if n := st.Drops("key_evicted"); n != i+1 {
						t.Fatalf("trial %d: %d evictions counted after %d new keys", trial, n, i+1)
					}
				}
			}
		})
	}
}

// TestMaxKeysConcurrent: goroutines bringing new keys at once into every shard
// leave the handler holding exactly maxKeys, every forgotten (live) key counted.
func TestMaxKeysConcurrent(t *testing.T) {
	const maxKeys, workers, perWorker = 200, 8, 500
	h, st := newHandler(t, &Params{MaxKeys: maxKeys})
	l := quota.Limit{Requests: 1, Window: time.Minute, Algorithm: quota.TokenBucket}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out [1]quota.Decision
			for i := range perWorker {
				req := []quota.Request{{Key: fmt.Sprint("w", w, "-", i), Limit: l, Hits: 1}}
				if err := h.Allow(context.Background(), quotatest.Base(), req, out[:]); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := h.Len(); n != maxKeys {
		t.Errorf("%d keys held, want %d", n, maxKeys)
	}
	if n, want := st.Drops("key_evicted"), workers*perWorker-maxKeys; n != want {
		t.Errorf("%d evictions counted, want %d", n, want)
	}
}

// TestForgottenStatesReused: the state of a forgotten key serves a new key, which
// starts afresh under every algorithm; a new fixed-window key then allocates
// nothing.
func TestForgottenStatesReused(t *testing.T) {
	h, _ := newHandler(t, &Params{MaxKeys: 1})
	ctx := context.Background()
	now := quotatest.Base()
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = fmt.Sprint("user-", i)
	}
	reqs, out := make([]quota.Request, 1), make([]quota.Decision, 1)
	take := func(key string, l quota.Limit) quota.Decision {
		reqs[0] = quota.Request{Key: key, Limit: l, Hits: 1}
		if err := h.Allow(ctx, now, reqs, out); err != nil {
			t.Fatal(err)
		}
		return out[0]
	}
	for _, alg := range []quota.Algorithm{quota.FixedWindow, quota.SlidingWindow, quota.TokenBucket} {
		l := quota.Limit{Requests: 2, Window: time.Minute, Algorithm: alg}
		for _, k := range keys[:20] {
			take(k, l) // each evicts the one before
			if d := take(k, l); !d.Allowed || d.Remaining != 0 {
				t.Fatalf("%s: key %s's second hit: %+v, want allowed with none left", alg, k, d)
			}
		}
	}
	l := quota.Limit{Requests: 2, Window: time.Minute}
	i := 0
	if n := testing.AllocsPerRun(100, func() { take(keys[i%len(keys)], l); i++ }); n != 0 {
		t.Errorf("a new key allocates %.1f times", n)
	}
	// Below the bound too: a new key takes the state of the shard's least recent
	// key once that has expired, so that a shard holds hardly more than its live
	// keys and a new key allocates nothing.
	var sh shard
	var held atomic.Int64
	sh.init(1000, &held)
	at := int64(0)
	newKey := func(k string) {
		e, _ := sh.get(stateKey{key: k}, at)
		e.expires = at + time.Second.Microseconds()
		at += (100 * time.Millisecond).Microseconds()
	}
	for _, k := range keys[:50] {
		newKey(k)
	}
	if n := len(sh.keys); n > 11 {
		t.Errorf("%d keys held, of which 10 are live", n)
	}
	i = 0
	if n := testing.AllocsPerRun(100, func() { newKey(keys[50+i%150]); i++ }); n != 0 {
		t.Errorf("below the bound, a new key allocates %.1f times", n)
	}
}

func TestSweepForgetsIdleKeys(t *testing.T) {
	h, _ := newHandler(t, &Params{})
	ctx := context.Background()
	now := quotatest.Base()
	reqs := []quota.Request{
		{Key: "f", Limit: quota.Limit{Requests: 5, Window: time.Second}, Hits: 1},
		{Key: "s", Limit: quota.Limit{Requests: 5, Window: 2 * time.Second, Algorithm: quota.SlidingWindow}, Hits: 1},
		{Key: "t", Limit: quota.Limit{Requests: 5, Window: 4 * time.Second, Algorithm: quota.TokenBucket}, Hits: 5},
	}
	out := make([]quota.Decision, len(reqs))
	if err := h.Allow(ctx, now, reqs, out); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		after time.Duration
		left  int
	}{
		{999 * time.Millisecond, 3},
		{time.Second, 2},     // the fixed window ended
		{2 * time.Second, 1}, // the hit left the sliding window
		{4 * time.Second, 0}, // the bucket is full again
	} {
		h.sweep(quotakit.Micros(now.Add(tc.after)))
		if got := h.Len(); got != tc.left {
			t.Errorf("after %v: %d keys, want %d", tc.after, got, tc.left)
		}
	}
}

// TestFixedWindowLateRequest: a request of the previous window that reaches the
// lock after the window turned counts in its own window.
func TestFixedWindowLateRequest(t *testing.T) {
	h, _ := newHandler(t, &Params{})
	l := quota.Limit{Requests: 2, Window: time.Second}
	base := quotatest.Base()
	steps := []struct {
		at   time.Duration
		want bool
	}{
		{900 * time.Millisecond, true},
		{1000 * time.Millisecond, true},
		{950 * time.Millisecond, true}, // window 0 has room for one more
		{960 * time.Millisecond, false},
		{1001 * time.Millisecond, true}, // window 1 kept its count
		{1002 * time.Millisecond, false},
	}
	for i, s := range steps {
		var out [1]quota.Decision
		if err := h.Allow(context.Background(), base.Add(s.at), []quota.Request{{Key: "k", Limit: l, Hits: 1}}, out[:]); err != nil {
			t.Fatal(err)
		}
		if out[0].Allowed != s.want {
			t.Errorf("step %d at %v: allowed=%v, want %v", i, s.at, out[0].Allowed, s.want)
		}
	}
}

// TestSlidingLogIsBounded: a very large limit keeps at most 4097 log entries.
func TestSlidingLogIsBounded(t *testing.T) {
	h, _ := newHandler(t, &Params{})
	l := quota.Limit{Requests: 1 << 40, Window: time.Second, Algorithm: quota.SlidingWindow}
	now := quotatest.Base()
	for i := range 20000 {
		var out [1]quota.Decision
		at := now.Add(time.Duration(i) * 97 * time.Microsecond)
		if err := h.Allow(context.Background(), at, []quota.Request{{Key: "big", Limit: l, Hits: 1}}, out[:]); err != nil {
			t.Fatal(err)
		}
	}
	s := &h.shards[0]
	for i := range h.shards {
		if len(h.shards[i].keys) > 0 {
			s = &h.shards[i]
		}
	}
	e := s.keys[stateKey{key: "big", alg: slidingWindow}]
	if e == nil {
		t.Fatal("no state")
	}
	// The quantum is 245µs: about 4082 distinct entry times in a second.
	if e.log.n > 4097 || e.log.n < 4000 {
		t.Errorf("log of %d entries", e.log.n)
	}
}

func TestBadRequests(t *testing.T) {
	h, _ := newHandler(t, &Params{})
	for _, l := range []quota.Limit{
		{Requests: 1, Window: 0},
		{Requests: quotakit.MaxRequests + 1, Window: time.Second},
		{Requests: 1, Window: time.Second, Algorithm: "leaky"},
	} {
		var out [1]quota.Decision
		if err := h.Allow(context.Background(), quotatest.Base(), []quota.Request{{Key: "k", Limit: l, Hits: 1}}, out[:]); err == nil {
			t.Errorf("%+v was decided", l)
		}
	}
	if err := h.Allow(context.Background(), quotatest.Base(), make([]quota.Request, 2), make([]quota.Decision, 1)); err == nil {
		t.Error("a short out slice was accepted")
	}
}

func quotaFor(name string) quotakit.Quota {
	return quotakit.Quota{Name: name, MaxAmount: 1000, ValidDuration: time.Second, Algorithm: "sliding_window"}
}

// TestParamsYAML decodes params as a Handler's spec.params are written, strictly.
func TestParamsYAML(t *testing.T) {
	const doc = `
maxKeys: 50000
quotas:
- name: requestcount
  maxAmount: 100
  validDuration: 1s
  algorithm: sliding_window
  overrides:
  - dimensions: {source: batch-job}
    maxAmount: 0
  - dimensions: {source: reviews, destination: ratings}
    maxAmount: 500
    validDuration: 1m
- name: istio-system/perip
  maxAmount: 10
  validDuration: 1m
  algorithm: token_bucket
`
	p := Factory().NewParams().(*Params)
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	q := p.Quotas[0]
	if p.MaxKeys != 50000 || q.ValidDuration != time.Second || *q.Overrides[0].MaxAmount != 0 || q.Overrides[1].ValidDuration != time.Minute {
		t.Errorf("decoded %+v", p)
	}
}
