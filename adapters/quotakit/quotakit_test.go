package quotakit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/adaptertest"
	"github.com/sluicemesh/sluice/templates/quota"
)

func i64(v int64) *int64 { return &v }

func TestValidateQuotas(t *testing.T) {
	ok := func() Quota { return Quota{Name: "rq", MaxAmount: 10, ValidDuration: time.Second} }
	with := func(f func(*Quota)) []Quota {
		q := ok()
		f(&q)
		return []Quota{ok(), q}
	}
	over := func(o Override) []Quota { return with(func(q *Quota) { q.Name = "b"; q.Overrides = []Override{o} }) }
	tests := []struct {
		name string
		qs   []Quota
		path string // the FieldError path, "" when valid
	}{
		{"valid", []Quota{ok(), {Name: "ns/b", MaxAmount: 1, ValidDuration: time.Hour, Algorithm: "token_bucket"}}, ""},
		{"valid override", over(Override{Dimensions: map[string]string{"a": "b"}, MaxAmount: i64(0)}), ""},
		{"valid override window", over(Override{Dimensions: map[string]string{"a": "b"}, ValidDuration: time.Minute}), ""},
		{"no name", with(func(q *Quota) { q.Name = "" }), "quotas[1].name"},
		{"bad name", with(func(q *Quota) { q.Name = "a/b/c" }), "quotas[1].name"},
		{"empty namespace", with(func(q *Quota) { q.Name = "/b" }), "quotas[1].name"},
		{"duplicate", with(func(*Quota) {}), "quotas[1].name"},
		{"no maxAmount", with(func(q *Quota) { q.Name = "b"; q.MaxAmount = 0 }), "quotas[1].maxAmount"},
		{"negative maxAmount", with(func(q *Quota) { q.Name = "b"; q.MaxAmount = -1 }), "quotas[1].maxAmount"},
		{"huge maxAmount", with(func(q *Quota) { q.Name = "b"; q.MaxAmount = MaxRequests + 1 }), "quotas[1].maxAmount"},
		{"no window", with(func(q *Quota) { q.Name = "b"; q.ValidDuration = 0 }), "quotas[1].validDuration"},
		{"short window", with(func(q *Quota) { q.Name = "b"; q.ValidDuration = time.Microsecond }), "quotas[1].validDuration"},
		{"fractional window", with(func(q *Quota) { q.Name = "b"; q.ValidDuration = time.Second + 1 }), "quotas[1].validDuration"},
		{"bad algorithm", with(func(q *Quota) { q.Name = "b"; q.Algorithm = "leaky_bucket" }), "quotas[1].algorithm"},
		{"inexact token bucket", with(func(q *Quota) {
			q.Name, q.Algorithm, q.MaxAmount, q.ValidDuration = "b", "token_bucket", MaxRequests-1, 1001*time.Millisecond+time.Microsecond
		}), "quotas[1]"},
		{"override without dimensions", over(Override{MaxAmount: i64(1)}), "quotas[1].overrides[0].dimensions"},
		{"override empty dimension", over(Override{Dimensions: map[string]string{"": "x"}}), "quotas[1].overrides[0].dimensions"},
		{"override negative", over(Override{Dimensions: map[string]string{"a": "b"}, MaxAmount: i64(-1)}), "quotas[1].overrides[0].maxAmount"},
		{"override short window", over(Override{Dimensions: map[string]string{"a": "b"}, ValidDuration: time.Nanosecond}), "quotas[1].overrides[0].validDuration"},
		{"duplicate override", with(func(q *Quota) {
			q.Name = "b"
			q.Overrides = []Override{{Dimensions: map[string]string{"a": "b"}}, {Dimensions: map[string]string{"a": "b"}}}
		}), "quotas[1].overrides[1].dimensions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			adaptertest.WantFieldError(t, ValidateQuotas(tt.qs), tt.path)
		})
	}
}

func TestTableOverrides(t *testing.T) {
	qs := []Quota{
		{Name: "rq", MaxAmount: 100, ValidDuration: time.Second, Algorithm: "sliding_window", Overrides: []Override{
			{Dimensions: map[string]string{"src": "a"}, MaxAmount: i64(10)},
			{Dimensions: map[string]string{"dst": "x"}, MaxAmount: i64(20)}, // as specific as the first: listed later, loses
			{Dimensions: map[string]string{"src": "a", "dst": "x"}, MaxAmount: i64(30), ValidDuration: time.Minute},
			{Dimensions: map[string]string{"src": "b"}, ValidDuration: time.Hour},
		}},
		{Name: "other/rq", MaxAmount: 7, ValidDuration: time.Second},
	}
	if err := ValidateQuotas(qs); err != nil {
		t.Fatal(err)
	}
	tab, err := NewTable(qs, []string{"ns/rq"})
	if err != nil {
		t.Fatal(err)
	}
	sw := quota.SlidingWindow
	for _, tc := range []struct {
		inst string
		dims map[string]string
		want quota.Limit
	}{
		{"ns/rq", nil, quota.Limit{Requests: 100, Window: time.Second, Algorithm: sw}},
		{"ns/rq", map[string]string{"src": "c"}, quota.Limit{Requests: 100, Window: time.Second, Algorithm: sw}},
		{"ns/rq", map[string]string{"src": "a"}, quota.Limit{Requests: 10, Window: time.Second, Algorithm: sw}},
		{"ns/rq", map[string]string{"src": "a", "dst": "y"}, quota.Limit{Requests: 10, Window: time.Second, Algorithm: sw}},
		{"ns/rq", map[string]string{"src": "c", "dst": "x"}, quota.Limit{Requests: 20, Window: time.Second, Algorithm: sw}},
		{"ns/rq", map[string]string{"src": "a", "dst": "x"}, quota.Limit{Requests: 30, Window: time.Minute, Algorithm: sw}},
		{"ns/rq", map[string]string{"src": "b"}, quota.Limit{Requests: 100, Window: time.Hour, Algorithm: sw}},
		{"ns/rq", map[string]string{"SRC": "a"}, quota.Limit{Requests: 100, Window: time.Second, Algorithm: sw}},
		// Not bound at New, resolved by name: other/rq matches exactly, before rq.
		{"other/rq", nil, quota.Limit{Requests: 7, Window: time.Second, Algorithm: quota.FixedWindow}},
		{"third/rq", nil, quota.Limit{Requests: 100, Window: time.Second, Algorithm: sw}},
	} {
		r, err := tab.Request(&quota.Instance{Name: tc.inst, Dimensions: tc.dims}, 3)
		if err != nil {
			t.Errorf("%s %v: %v", tc.inst, tc.dims, err)
			continue
		}
		if r.Limit != tc.want || r.Hits != 3 || r.Key != InstanceKey(tc.inst, tc.dims) {
			t.Errorf("%s %v: %+v, want limit %+v", tc.inst, tc.dims, r, tc.want)
		}
	}
	if _, err := tab.Request(&quota.Instance{Name: "ns/none"}, 1); err == nil {
		t.Error("an instance without a quota got a request")
	}
}

func TestNewTableBinding(t *testing.T) {
	qs := []Quota{{Name: "a", MaxAmount: 1, ValidDuration: time.Second}, {Name: "ns/a", MaxAmount: 1, ValidDuration: time.Second}}
	for _, tc := range []struct {
		instances []string
		path      string
	}{
		{nil, ""},
		{[]string{"x/a"}, ""},
		{[]string{"x/b"}, "quotas"},
		{[]string{"ns/a"}, "quotas[1].name"},
	} {
		_, err := NewTable(qs, tc.instances)
		var fe *adapters.FieldError
		switch {
		case tc.path == "" && err != nil:
			t.Errorf("%v: %v", tc.instances, err)
		case tc.path != "" && (!errors.As(err, &fe) || fe.Path != tc.path):
			t.Errorf("%v: error %v, want one at %s", tc.instances, err, tc.path)
		}
	}
}

func TestInstanceKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		dims map[string]string
		want string
	}{
		{"ns/rq", nil, "ns/rq"},
		{"ns/rq", map[string]string{"b": "2", "a": "1", "c": ""}, "ns/rq;a=1;b=2;c="},
		{"ns/rq", map[string]string{"a": "x;b=y"}, "ns/rq;a=x%3Bb%3Dy"},
		{"ns/rq", map[string]string{"a": "{tag}", "%": "%"}, "ns/rq;%25=%25;a=%7Btag%7D"},
	} {
		if got := InstanceKey(tc.name, tc.dims); got != tc.want {
			t.Errorf("InstanceKey(%s, %v) = %q, want %q", tc.name, tc.dims, got, tc.want)
		}
	}
	// Values that would forge a structure stay distinct.
	a := InstanceKey("ns/rq", map[string]string{"a": "x;b=y"})
	b := InstanceKey("ns/rq", map[string]string{"a": "x", "b": "y"})
	if a == b {
		t.Errorf("two dimension sets share the key %q", a)
	}
	// Stable: map order never shows.
	dims := map[string]string{}
	for i := range 20 {
		dims[fmt.Sprint("d", i)] = fmt.Sprint(i)
	}
	first := InstanceKey("ns/rq", dims)
	for range 20 {
		if InstanceKey("ns/rq", dims) != first {
			t.Fatal("the key depends on map order")
		}
	}
}

// TestBoundKey: a key up to MaxKeyBytes is itself; a longer one, which a client
// sending long values makes, is kept as MaxKeyBytes, and still tells keys apart.
func TestBoundKey(t *testing.T) {
	short := InstanceKey("ns/rq", map[string]string{"user": strings.Repeat("u", 400)})
	if got := BoundKey(short); got != short {
		t.Errorf("a key of %d bytes changed", len(short))
	}
	long := func(v string) string {
		return InstanceKey("ns/rq", map[string]string{"user": strings.Repeat("u", 64<<10) + v})
	}
	a, b := BoundKey(long("a")), BoundKey(long("b"))
	if len(a) != MaxKeyBytes || len(b) != MaxKeyBytes {
		t.Errorf("bounded keys of %d and %d bytes, want %d", len(a), len(b), MaxKeyBytes)
	}
	if a == b {
		t.Error("two long keys differing at their end share a bounded key")
	}
	if BoundKey(long("a")) != a {
		t.Error("a bounded key is not stable")
	}
	if !strings.HasPrefix(a, "ns/rq;user=uuu") {
		t.Errorf("a bounded key %.20q… does not start as its key", a)
	}
}

func TestClusterKey(t *testing.T) {
	for _, tc := range []struct{ prefix, id, want string }{
		{"sluice:fw:", "ns/rq;a=1", "sluice:fw:{ns/rq;a=1}"},
		{"sluice:fw:", "ns/rq;a=%7B", "sluice:fw:{ns/rq;a=%257B}"},
		{"sluice:fw:", "evil}{x", "sluice:fw:{evil%7D%7Bx}"},
	} {
		got := string(AppendClusterKey(nil, tc.prefix, tc.id))
		if got != tc.want {
			t.Errorf("AppendClusterKey(%q) = %q, want %q", tc.id, got, tc.want)
		}
		// Redis Cluster hashes what is between the first { and the next }: the
		// whole id, whatever it holds.
		open := strings.IndexByte(got, '{')
		end := strings.IndexByte(got[open+1:], '}') + open + 1
		if end != len(got)-1 {
			t.Errorf("%q: the hash tag ends at %d, not at the end", got, end)
		}
	}
}

func TestTokenScale(t *testing.T) {
	for _, tc := range []struct {
		l    quota.Limit
		want TokenScale
		err  bool
	}{
		{quota.Limit{Requests: 4, Window: time.Second}, TokenScale{Unit: 1, Window: 1e6, PerUnit: 1, PerToken: 250000, Capacity: 1e6, Requests: 4}, false},
		{quota.Limit{Requests: 3, Window: time.Second}, TokenScale{Unit: 1, Window: 1e6, PerUnit: 3, PerToken: 1e6, Capacity: 3e6, Requests: 3}, false},
		// Too fine in µs: counted in seconds.
		{quota.Limit{Requests: 999999937, Window: 24 * time.Hour}, TokenScale{Unit: 1e6, Window: 86400, PerUnit: 999999937, PerToken: 86400, Capacity: 999999937 * 86400, Requests: 999999937}, false},
		{quota.Limit{Requests: MaxRequests - 1, Window: 1001*time.Millisecond + time.Microsecond}, TokenScale{}, true},
		{quota.Limit{Requests: 0, Window: time.Second}, TokenScale{Unit: 1, Window: 1e6, PerToken: 1}, false},
	} {
		got, err := NewTokenScale(tc.l)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("NewTokenScale(%+v) = %+v, %v; want %+v", tc.l, got, err, tc.want)
		}
		if err == nil && got.Capacity > maxExact {
			t.Errorf("%+v: capacity %d is not exact in a double", tc.l, got.Capacity)
		}
	}
}

// TestTokenScaleRefill: a refill credits the whole units elapsed since the
// bucket's time and carries the rest of a unit; it never credits a unit for a turn
// of the clock's second alone.
func TestTokenScaleRefill(t *testing.T) {
	day, err := NewTokenScale(quota.Limit{Requests: 100000007, Window: 24 * time.Hour})
	if err != nil || day.Unit != 1e6 {
		t.Fatalf("%+v, %v: want units of a second", day, err)
	}
	fine, err := NewTokenScale(quota.Limit{Requests: 4, Window: time.Second})
	if err != nil || fine.Unit != 1 {
		t.Fatalf("%+v, %v: want units of a µs", fine, err)
	}
	const sec = 1000000
	for _, tc := range []struct {
		name       string
		s          TokenScale
		tokens     uint64
		last, now  int64
		wantTokens uint64
		wantLast   int64
	}{
		{"a µs after a drain at .999999", day, 0, sec - 1, sec, 0, sec - 1},
		{"a unit after", day, 0, sec - 1, 2*sec - 1, day.PerUnit, 2*sec - 1},
		{"a unit and a half after: half a unit carried", day, 0, sec - 1, 5*sec/2 - 1, day.PerUnit, 2*sec - 1},
		{"two units and a µs after", day, 5, sec - 1, 3 * sec, 5 + 2*day.PerUnit, 3*sec - 1},
		{"the clock went back", day, 7, 2 * sec, sec, 7, 2 * sec},
		{"refilled to full: full now", day, day.Capacity - 1, 0, sec + 1, day.Capacity, sec + 1},
		{"a window later", day, 0, 0, 86400 * sec, day.Capacity, 86400 * sec},
		{"a full bucket is full now, even before its time", day, day.Capacity, 5 * sec, 3 * sec, day.Capacity, 3 * sec},
		{"µs units: every µs counts", fine, 0, 10, 11, 1, 11},
	} {
		tokens, last := tc.s.Refill(tc.tokens, tc.last, tc.now)
		if tokens != tc.wantTokens || last != tc.wantLast {
			t.Errorf("%s: Refill(%d, %d, %d) = %d, %d; want %d, %d", tc.name, tc.tokens, tc.last, tc.now, tokens, last, tc.wantTokens, tc.wantLast)
		}
	}

	// Answers after a drain at .999999: a request of 1157 hits (a second's
	// refill) waits a second from the drain, not to the clock's next second.
	cost := day.Cost(1157)
	for _, tc := range []struct {
		now           int64
		wantReset     time.Duration
		wantDenyUntil int64
		wantFull      int64
	}{
		{sec, 999999 * time.Microsecond, 2*sec - 1, 86400*sec - 1},
		{2*sec - 2, time.Microsecond, 2*sec - 1, 86400*sec - 1 - (sec - 2)},
	} {
		d, denyUntil := day.Decision(false, 0, sec-1, 1157, tc.now, 24*time.Hour)
		if want := (quota.Decision{ResetAfter: tc.wantReset}); d != want || denyUntil != tc.wantDenyUntil {
			t.Errorf("at %d: Decision = %+v, %d; want %+v, %d", tc.now, d, denyUntil, want, tc.wantDenyUntil)
		}
		if got := day.FullAfter(0, sec-1, tc.now); got != tc.wantFull {
			t.Errorf("at %d: FullAfter = %d, want %d", tc.now, got, tc.wantFull)
		}
	}
	if tokens, _ := day.Refill(0, sec-1, 2*sec-1); tokens < cost {
		t.Errorf("a unit after the drain, %d < %d: the request would still wait", tokens, cost)
	}
}

func TestFixedWindowStart(t *testing.T) {
	for _, tc := range []struct{ now, w, want int64 }{
		{1_000_000, 1_000_000, 1_000_000},
		{1_999_999, 1_000_000, 1_000_000},
		{-1, 1_000_000, -1_000_000},
		{1893456000_000000, 7_000_000, 1893455998_000000},
	} {
		if got := FixedWindowStart(tc.now, tc.w); got != tc.want {
			t.Errorf("FixedWindowStart(%d, %d) = %d, want %d", tc.now, tc.w, got, tc.want)
		}
	}
}

func TestSlidingQuantum(t *testing.T) {
	for _, tc := range []struct {
		l    quota.Limit
		want int64
	}{
		{quota.Limit{Requests: 4096, Window: time.Second}, 1},
		{quota.Limit{Requests: 4097, Window: time.Second}, 245},
		{quota.Limit{Requests: 1e9, Window: time.Hour}, 878907},
	} {
		if got := SlidingQuantum(tc.l); got != tc.want {
			t.Errorf("SlidingQuantum(%+v) = %d, want %d", tc.l, got, tc.want)
		}
	}
	if got := SlidingEntryTime(1000, 245); got != 1225 {
		t.Errorf("SlidingEntryTime = %d", got)
	}
	if got := SlidingEntryTime(1225, 245); got != 1225 {
		t.Errorf("SlidingEntryTime = %d", got)
	}
}

func TestDenyCache(t *testing.T) {
	c := NewDenyCache(64)
	k := DenyKey{Key: "sluice:sw:{k}", Requests: 5, Window: time.Hour}
	if _, ok := c.Lookup(k, 1, 100); ok {
		t.Fatal("an empty cache answered")
	}
	c.Add(k, 500, false, 100)
	for _, tc := range []struct {
		key  DenyKey
		hits uint64
		now  int64
		want bool
	}{
		{k, 1, 100, true},
		{k, 1, 499, true},
		{k, 0, 200, false}, // a query goes to the backend
		{k, 2, 200, false}, // not exact for more hits
		{DenyKey{Key: "sluice:sw:{k}", Requests: 6, Window: time.Hour}, 1, 200, false},   // a raised limit
		{DenyKey{Key: "sluice:sw:{k}", Requests: 5, Window: time.Second}, 1, 200, false}, // a shorter window
		{k, 1, 500, false}, // expired
	} {
		d, ok := c.Lookup(tc.key, tc.hits, tc.now)
		if ok != tc.want {
			t.Errorf("Lookup(%v, %d hits, %d) = %v, want %v", tc.key, tc.hits, tc.now, ok, tc.want)
		}
		if ok && (d.Allowed || d.Remaining != 0 || d.ResetAfter != time.Duration(500-tc.now)*time.Microsecond) {
			t.Errorf("cached decision %+v", d)
		}
	}
	fixed := DenyKey{Key: "sluice:fw:{k}:1000000:0", Requests: 5}
	c.Add(fixed, 1000, true, 100)
	if _, ok := c.Lookup(fixed, 7, 200); !ok {
		t.Error("a fixed window's denial did not answer a request of 7 hits")
	}
	c.Add(fixed, 100, true, 100) // not after now: nothing
	if d, _ := c.Lookup(fixed, 1, 200); d.ResetAfter != 800*time.Microsecond {
		t.Errorf("an expired Add replaced a live entry: %+v", d)
	}

	// Bounded: a full cache drops entries, expired ones first.
	small := NewDenyCache(16) // one per shard
	for i := range 1000 {
		small.Add(DenyKey{Key: fmt.Sprint("k", i)}, 1_000_000, false, int64(i))
	}
	if n := small.Len(); n > 16 {
		t.Errorf("%d entries, bound 16", n)
	}
	var nilCache *DenyCache
	nilCache.Add(k, 500, true, 0)
	if _, ok := nilCache.Lookup(k, 1, 0); ok || nilCache.Len() != 0 {
		t.Error("a nil cache cached")
	}
}

type recStats struct {
	mu      sync.Mutex
	errors  map[string]int
	dropped map[string]int
}

func (s *recStats) Error(r string) { s.mu.Lock(); s.errors[r]++; s.mu.Unlock() }
func (s *recStats) Dropped(n int, r string) {
	s.mu.Lock()
	s.dropped[r] += n
	s.mu.Unlock()
}

type netTimeout struct{}

func (netTimeout) Error() string   { return "i/o timeout" }
func (netTimeout) Timeout() bool   { return true }
func (netTimeout) Temporary() bool { return true }

func TestGuard(t *testing.T) {
	reqs := []quota.Request{
		{Key: "a", Limit: quota.Limit{Requests: 10, Window: time.Minute}, Hits: 3},
		{Key: "b", Limit: quota.Limit{Requests: 2, Window: 100 * time.Millisecond}, Hits: 5},
	}
	for _, tc := range []struct {
		policy FailPolicy
		err    error
		reason string
		want   []quota.Decision
	}{
		// b asks for more hits than its limit: denied whatever the count, and so
		// whatever the policy.
		{FailOpen, errors.New("connection refused"), ReasonError, []quota.Decision{{Allowed: true, Remaining: 7, ByPolicy: true}, {ResetAfter: 100 * time.Millisecond}}},
		{FailOpen, fmt.Errorf("pipeline: %w", context.DeadlineExceeded), ReasonTimeout, []quota.Decision{{Allowed: true, Remaining: 7, ByPolicy: true}, {ResetAfter: 100 * time.Millisecond}}},
		{FailClosed, netTimeout{}, ReasonTimeout, []quota.Decision{{ResetAfter: time.Second, ByPolicy: true}, {ResetAfter: 100 * time.Millisecond}}},
	} {
		st := &recStats{errors: map[string]int{}, dropped: map[string]int{}}
		g := NewGuard(adapters.Env{Stats: st}, 50*time.Millisecond, tc.policy)
		out := make([]quota.Decision, 2)
		if err := g.Fail(context.Background(), tc.err, reqs, out, []int{0, 1}); err != nil {
			t.Fatal(err)
		}
		for i := range out {
			if out[i] != tc.want[i] {
				t.Errorf("%s, %v: decision %d = %+v, want %+v", tc.policy, tc.err, i, out[i], tc.want[i])
			}
		}
		drop := ReasonFailOpen
		if tc.policy == FailClosed {
			drop = ReasonFailClosed
		}
		// One decision by policy; b's denial is not the policy's.
		if st.errors[tc.reason] != 1 || st.dropped[drop] != 1 || len(st.errors) != 1 || len(st.dropped) != 1 {
			t.Errorf("%s, %v: counted errors %v, drops %v", tc.policy, tc.err, st.errors, st.dropped)
		}
		// b alone: the backend's failure is counted, no decision by policy.
		st = &recStats{errors: map[string]int{}, dropped: map[string]int{}}
		g = NewGuard(adapters.Env{Stats: st}, 50*time.Millisecond, tc.policy)
		if err := g.Fail(context.Background(), tc.err, reqs, out, []int{1}); err != nil {
			t.Fatal(err)
		}
		if st.errors[tc.reason] != 1 || len(st.dropped) != 0 {
			t.Errorf("%s, %v, over the limit whatever the count: counted errors %v, drops %v", tc.policy, tc.err, st.errors, st.dropped)
		}
	}

	// A caller that gave up gets an error, and nothing is counted.
	st := &recStats{errors: map[string]int{}, dropped: map[string]int{}}
	g := NewGuard(adapters.Env{Stats: st}, time.Second, FailOpen)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.Fail(ctx, context.Canceled, reqs, make([]quota.Decision, 2), []int{0}); !errors.Is(err, context.Canceled) {
		t.Errorf("Fail with a canceled caller = %v", err)
	}
	if len(st.errors)+len(st.dropped) != 0 {
		t.Errorf("a canceled caller was counted: %v %v", st.errors, st.dropped)
	}
	// The timeout bounds the deadline; a caller's sooner one is kept.
	if dl := g.Deadline(context.Background()); time.Until(dl) > time.Second || time.Until(dl) < 900*time.Millisecond {
		t.Errorf("deadline in %v with a timeout of a second", time.Until(dl))
	}
	later, lcancel := context.WithTimeout(context.Background(), time.Hour)
	defer lcancel()
	if dl := g.Deadline(later); time.Until(dl) > time.Second {
		t.Errorf("under a deadline an hour away: deadline in %v", time.Until(dl))
	}
	sooner, scancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer scancel()
	if dl, _ := sooner.Deadline(); !g.Deadline(sooner).Equal(dl) {
		t.Errorf("under a deadline 20ms away: deadline in %v", time.Until(g.Deadline(sooner)))
	}
}

// TestGuardLogsOncePerBurst: a burst of failures is logged when it starts, once a
// minute while it lasts, and when the backend answers again.
func TestGuardLogsOncePerBurst(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	env := adapters.Env{Logger: slog.New(slog.NewTextHandler(&buf, nil)), Now: clock,
		Stats: &recStats{errors: map[string]int{}, dropped: map[string]int{}}}
	g := NewGuard(env, time.Second, FailClosed)
	reqs := []quota.Request{{Key: "a", Limit: quota.Limit{Requests: 1, Window: time.Second}, Hits: 1}}
	out := make([]quota.Decision, 1)
	fail := func(n int) {
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = g.Fail(context.Background(), errors.New("down"), reqs, make([]quota.Decision, 1), []int{0})
			}()
		}
		wg.Wait()
	}
	lines := func() int { return strings.Count(buf.String(), "\n") }
	g.Succeeded() // nothing failed: nothing to say
	fail(100)
	if lines() != 1 || !strings.Contains(buf.String(), "quota backend failing") {
		t.Fatalf("after a burst of 100 failures the log holds:\n%s", buf.String())
	}
	advance(30 * time.Second)
	fail(100)
	if lines() != 1 {
		t.Fatalf("logged again within a minute:\n%s", buf.String())
	}
	advance(31 * time.Second)
	fail(1)
	if lines() != 2 || !strings.Contains(buf.String(), "still failing") || !strings.Contains(buf.String(), "decisions=201") {
		t.Fatalf("no reminder after a minute:\n%s", buf.String())
	}
	g.Succeeded() // too soon after the last failure: the burst goes on
	advance(BurstQuiet - time.Millisecond)
	g.Succeeded()
	fail(1) // still the same burst
	if lines() != 2 {
		t.Fatalf("a flapping backend was logged again:\n%s", buf.String())
	}
	advance(BurstQuiet)
	g.Succeeded()
	g.Succeeded()
	if lines() != 3 || !strings.Contains(buf.String(), "recovered") || !strings.Contains(buf.String(), "decisions=202") {
		t.Fatalf("recovery not logged once:\n%s", buf.String())
	}
	fail(1)
	if lines() != 4 {
		t.Fatalf("a new burst was not logged:\n%s", buf.String())
	}
	_ = out
}

func TestParseFailPolicy(t *testing.T) {
	for in, want := range map[string]FailPolicy{"": FailOpen, "open": FailOpen, "closed": FailClosed} {
		if got, err := ParseFailPolicy(in); err != nil || got != want {
			t.Errorf("ParseFailPolicy(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseFailPolicy("ajar"); err == nil {
		t.Error("ajar was accepted")
	}
}

// TestCheckOverrideDimensions: an override naming a dimension that a quota instance
// it applies to does not have could never match, and is refused at its name.
func TestCheckOverrideDimensions(t *testing.T) {
	qs := []Quota{
		{Name: "a", MaxAmount: 5, ValidDuration: time.Second, Overrides: []Override{
			{Dimensions: map[string]string{"user": "batch"}, MaxAmount: i64(1)},
			{Dimensions: map[string]string{"user": "x", "path": "/y"}, MaxAmount: i64(1)},
		}},
		{Name: "ns/b", MaxAmount: 5, ValidDuration: time.Second, Overrides: []Override{
			{Dimensions: map[string]string{"usr": "batch"}, MaxAmount: i64(1)},
		}},
	}
	for _, tc := range []struct {
		name string
		dims map[string][]string
		path string
	}{
		{"no instances bound", nil, ""},
		{"every override dimension is there", map[string][]string{"x/a": {"path", "user"}}, ""},
		{"a quota no instance uses is not checked", map[string][]string{"x/a": {"path", "user"}, "other/b": {}}, ""},
		{"one of two dimensions missing", map[string][]string{"x/a": {"user"}}, "quotas[0].overrides[1].dimensions.path"},
		{"a misspelt dimension", map[string][]string{"x/a": {"path", "user"}, "ns/b": {"user"}}, "quotas[1].overrides[0].dimensions.usr"},
		{"an instance without dimensions", map[string][]string{"y/a": {}}, "quotas[0].overrides[0].dimensions.user"},
		{"every instance a quota serves", map[string][]string{"x/a": {"path", "user"}, "y/a": {"user"}}, "quotas[0].overrides[1].dimensions.path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckOverrideDimensions(qs, tc.dims)
			var fe *adapters.FieldError
			switch {
			case tc.path == "" && err != nil:
				t.Errorf("%v", err)
			case tc.path != "" && (!errors.As(err, &fe) || fe.Path != tc.path):
				t.Errorf("error %v, want one at %s", err, tc.path)
			}
		})
	}
}
