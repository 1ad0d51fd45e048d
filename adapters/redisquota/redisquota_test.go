package redisquota

import (
	"context"
	"fmt"
	"hash/maphash"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.yaml.in/yaml/v3"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/adaptertest"
	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/adapters/quotakit/quotatest"
	"github.com/sluicemesh/sluice/templates/quota"
)

func defaults() *Params { return Factory().NewParams().(*Params) }

func TestValidate(t *testing.T) {
	with := func(f func(*Params)) Params {
		p := defaults()
		p.RedisServerURL = "127.0.0.1:6379"
		f(p)
		return *p
	}
	tests := []struct {
		name string
		p    Params
		path string // the FieldError path, "" when valid
	}{
		{"valid", with(func(*Params) {}), ""},
		{"url", with(func(p *Params) { p.RedisServerURL = "redis://:secret@redis:6380/2" }), ""},
		{"comma list is a cluster", with(func(p *Params) { p.RedisServerURL = "a:1, b:2,c:3" }), ""},
		{"cluster addresses", with(func(p *Params) { p.RedisServerURL = ""; p.ClusterAddresses = []string{"a:1"} }), ""},
		{"quotas", with(func(p *Params) {
			p.Quotas = []quotakit.Quota{{Name: "rq", MaxAmount: 1, ValidDuration: time.Second, Algorithm: "sliding_window"}}
		}), ""},
		{"no server", with(func(p *Params) { p.RedisServerURL = "" }), "redisServerUrl"},
		{"no port", with(func(p *Params) { p.RedisServerURL = "redis" }), "redisServerUrl"},
		{"bad port", with(func(p *Params) { p.RedisServerURL = "redis:http" }), "redisServerUrl"},
		{"bad list", with(func(p *Params) { p.RedisServerURL = "a:1,b" }), "redisServerUrl"},
		{"bad url", with(func(p *Params) { p.RedisServerURL = "redis://h:1/notadb" }), "redisServerUrl"},
		{"url port out of range", with(func(p *Params) { p.RedisServerURL = "redis://h:99999" }), "redisServerUrl"},
		{"url port zero", with(func(p *Params) { p.RedisServerURL = "rediss://h:0" }), "redisServerUrl"},
		{"url without a port", with(func(p *Params) { p.RedisServerURL = "rediss://h" }), ""},
		{"unix socket url", with(func(p *Params) { p.RedisServerURL = "unix:///run/redis.sock" }), ""},
		{"client name", with(func(p *Params) { p.RedisServerURL = "redis://h:1/0?client_name=sluice-a.1" }), ""},
		{"client name with a space", with(func(p *Params) { p.RedisServerURL = "redis://h:1/0?client_name=a%20b" }), "redisServerUrl"},
		{"client name with a newline", with(func(p *Params) { p.RedisServerURL = "redis://h:1/0?client_name=a%0Ab" }), "redisServerUrl"},
		{"both", with(func(p *Params) { p.ClusterAddresses = []string{"a:1"} }), "clusterAddresses"},
		{"bad cluster address", with(func(p *Params) { p.RedisServerURL = ""; p.ClusterAddresses = []string{"a:1", ":2"} }), "clusterAddresses[1]"},
		{"db in a cluster", with(func(p *Params) { p.RedisServerURL = "a:1,b:2"; p.DB = 1 }), "db"},
		{"negative db", with(func(p *Params) { p.DB = -1 }), "db"},
		{"negative pool", with(func(p *Params) { p.ConnectionPoolSize = -1 }), "connectionPoolSize"},
		{"negative maxInFlight", with(func(p *Params) { p.MaxInFlight = -1 }), "maxInFlight"},
		{"no timeout", with(func(p *Params) { p.Timeout = 0 }), "timeout"},
		{"fail policy", with(func(p *Params) { p.FailPolicy = "sometimes" }), "failPolicy"},
		{"negative cache", with(func(p *Params) { p.LocalCacheSize = -1 }), "localCacheSize"},
		{"quota", with(func(p *Params) { p.Quotas = []quotakit.Quota{{Name: "rq", MaxAmount: 1}} }), "quotas[0].validDuration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			adaptertest.WantFieldError(t, tt.p.Validate(), tt.path)
		})
	}
}

// TestValidateHidesCredentials: an address that does not parse is refused without
// repeating its credentials, which would reach logs and /api/config.
func TestValidateHidesCredentials(t *testing.T) {
	for _, tc := range []struct{ url, cluster string }{
		{url: "redis://:hunter2@h:port"},
		{url: "redis://:hunter2@h:6379,redis://:hunter2@g:6379"},
		{url: "redis://:hun%zzter2@h"},
		{url: "user:hunter2@h:6379"},
		{cluster: "redis://:hunter2@h:6379"},
	} {
		p := defaults()
		p.RedisServerURL = tc.url
		if tc.cluster != "" {
			p.ClusterAddresses = []string{tc.cluster}
		}
		err := p.Validate()
		if err == nil {
			t.Errorf("%q %q: accepted", tc.url, tc.cluster)
			continue
		}
		if strings.Contains(err.Error(), "hunter") || strings.Contains(err.Error(), "zz") {
			t.Errorf("%q %q: %v", tc.url, tc.cluster, err)
		}
	}
}

func TestDefaults(t *testing.T) {
	p := defaults()
	if p.Timeout != 50*time.Millisecond || p.FailPolicy != "open" || p.LocalCacheSize != 10000 {
		t.Errorf("defaults %+v", p)
	}
}

func TestClients(t *testing.T) {
	for _, tc := range []struct {
		p        Params
		cluster  bool
		protocol int // RESP2 unless the URL asks for RESP3
	}{
		{Params{RedisServerURL: "127.0.0.1:1", Timeout: time.Second}, false, 2},
		{Params{RedisServerURL: "redis://127.0.0.1:1/3", Timeout: time.Second}, false, 2},
		{Params{RedisServerURL: "redis://127.0.0.1:1/3?protocol=3", Timeout: time.Second}, false, 3},
		{Params{RedisServerURL: "127.0.0.1:1,127.0.0.1:2", Timeout: time.Second}, true, 2},
		{Params{ClusterAddresses: []string{"127.0.0.1:1"}, Timeout: time.Second}, true, 2},
	} {
		c, err := newClient(&tc.p)
		if err != nil {
			t.Fatal(err)
		}
		_, isCluster := c.(*redis.ClusterClient)
		if isCluster != tc.cluster {
			t.Errorf("%+v: cluster client %v, want %v", tc.p, isCluster, tc.cluster)
		}
		if cl, ok := c.(*redis.Client); ok && strings.Contains(tc.p.RedisServerURL, "/3") && cl.Options().DB != 3 {
			t.Errorf("db %d from the URL", cl.Options().DB)
		}
		protocol := 0
		switch cl := c.(type) {
		case *redis.Client:
			protocol = cl.Options().Protocol
		case *redis.ClusterClient:
			protocol = cl.Options().Protocol
		}
		if protocol != tc.protocol {
			t.Errorf("%+v: protocol %d, want %d", tc.p, protocol, tc.protocol)
		}
		_ = c.Close()
	}
	// The hot path's connections are set up as the URL says.
	for _, tc := range []struct {
		url, network, addr, user, password string
		db                                 int
		tls                                bool
	}{
		{"127.0.0.1:6379", "tcp", "127.0.0.1:6379", "", "", 0, false},
		{"redis://u:pw@127.0.0.1:6380/3", "tcp", "127.0.0.1:6380", "u", "pw", 3, false},
		{"rediss://:pw@redis.example:6380", "tcp", "redis.example:6380", "", "pw", 0, true},
		{"unix:///run/redis.sock?db=2", "unix", "/run/redis.sock", "", "", 2, false},
	} {
		c, err := newClient(&Params{RedisServerURL: tc.url, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		d := newRespDialer(c.(*redis.Client).Options(), time.Second)
		if d.network != tc.network || d.addr != tc.addr || d.username != tc.user || d.password != tc.password || d.db != tc.db || (d.tls != nil) != tc.tls {
			t.Errorf("%s: dialer %s %s user %q password %q db %d TLS %v", tc.url, d.network, d.addr, d.username, d.password, d.db, d.tls != nil)
		}
		_ = c.Close()
	}
}

// TestPlanKeys: every key of a limit carries the limit's identity in one hash tag,
// and the keys tell algorithms, windows and limits apart where their state would
// mean something else.
func TestPlanKeys(t *testing.T) {
	h := &Handler{fixed: newScript(fixedWindowScript), sliding: newScript(slidingWindowScript), bucket: newScript(tokenBucketScript), seed: maphash.MakeSeed()}
	now := quotakit.Micros(quotatest.Base().Add(1500 * time.Millisecond))
	for _, tc := range []struct {
		l    quota.Limit
		keys []string
		// args: the command after the script, as Redis reads it; the fixed
		// window's last, its TTL, has a jitter and is checked by TestExpiryJitter.
		args string
	}{
		{quota.Limit{Requests: 5, Window: time.Second}, []string{"sluice:fw:{ns/rq;a=1}:1000000:1893456001000000"},
			"1 sluice:fw:{ns/rq;a=1}:1000000:1893456001000000 1"},
		{quota.Limit{Requests: 5, Window: time.Second, Algorithm: quota.SlidingWindow}, []string{"sluice:sw:{ns/rq;a=1}:log", "sluice:sw:{ns/rq;a=1}:hits"},
			"2 sluice:sw:{ns/rq;a=1}:log sluice:sw:{ns/rq;a=1}:hits 1893456001500000 1000000 5 1 1 1000"},
		// A bucket's time is in µs, under a prefix of its own (buckets of the
		// sluice:tb: prefix kept theirs in the scale's units): now is sent in µs.
		{quota.Limit{Requests: 5, Window: time.Minute, Algorithm: quota.TokenBucket}, []string{"sluice:tb2:{ns/rq;a=1}:5:60000000"},
			"1 sluice:tb2:{ns/rq;a=1}:5:60000000 1893456001500000 60000000 1 60000000 12000000 1 1000"},
		{quota.Limit{Requests: 100000007, Window: 24 * time.Hour, Algorithm: quota.TokenBucket}, []string{"sluice:tb2:{ns/rq;a=1}:100000007:86400000000"},
			"1 sluice:tb2:{ns/rq;a=1}:100000007:86400000000 1893456001500000 8640000604800 100000007 86400 86400 1000000 1000"},
	} {
		var o op
		r := quota.Request{Key: "ns/rq;a=1", Limit: tc.l, Hits: 1}
		if err := h.plan(&o, &r, now); err != nil {
			t.Fatal(err)
		}
		if strings.Join(o.keys, " ") != strings.Join(tc.keys, " ") {
			t.Errorf("%s: keys %q, want %q", tc.l.Algorithm, o.keys, tc.keys)
		}
		args := sent(&o)
		if tc.l.Algorithm == "" {
			args = args[:strings.LastIndexByte(args, ' ')]
		}
		if args != tc.args {
			t.Errorf("%s: command %q, want %q", tc.l.Algorithm, args, tc.args)
		}
	}
	var o op
	if err := h.plan(&o, &quota.Request{Key: "k", Limit: quota.Limit{Requests: 1}}, now); err == nil {
		t.Error("a zero window was planned")
	}
	// A key of a client's long values is sent, and denied locally, in its bounded
	// form: Redis and the deny cache keep at most MaxKeyBytes of it.
	for _, alg := range []quota.Algorithm{quota.FixedWindow, quota.SlidingWindow, quota.TokenBucket} {
		var o op
		r := quota.Request{Key: "ns/rq;a=" + strings.Repeat("v", 1<<20), Limit: quota.Limit{Requests: 5, Window: time.Second, Algorithm: alg}, Hits: 1}
		if err := h.plan(&o, &r, now); err != nil {
			t.Fatal(err)
		}
		for _, k := range append(o.keys, o.deny.Key) {
			if len(k) > quotakit.MaxKeyBytes+64 {
				t.Errorf("%s: a key of %d bytes", alg, len(k))
			}
		}
	}
}

// sent renders o's command after the script as the Redis client writes it: the
// pointers it holds are written as what they point at.
func sent(o *op) string {
	var b strings.Builder
	for i, a := range o.cmd[2:] {
		if i > 0 {
			b.WriteByte(' ')
		}
		switch v := a.(type) {
		case *string:
			b.WriteString(*v)
		case *int64:
			fmt.Fprint(&b, *v)
		default:
			fmt.Fprint(&b, v)
		}
	}
	return b.String()
}

// TestExpiryJitter: the counters of one fixed window expire spread over up to one
// window (five minutes at most) past its end and the slack, not all at once.
func TestExpiryJitter(t *testing.T) {
	h := &Handler{fixed: newScript(fixedWindowScript), seed: maphash.MakeSeed()}
	now := quotakit.Micros(quotatest.Base().Add(250 * time.Millisecond))
	for _, tc := range []struct {
		window, span time.Duration // span: how far the expiries may spread
	}{
		{time.Second, time.Second},
		{time.Minute, time.Minute},
		{time.Hour, maxExpiryJitter},
		{500 * time.Microsecond, 0},
	} {
		l := quota.Limit{Requests: 5, Window: tc.window}
		w := tc.window.Microseconds()
		end := (quotakit.FixedWindowStart(now, w)+w-now+999)/1000 + keySlack.Milliseconds() // ms
		const keys = 1000
		lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
		for i := range keys {
			var o op
			if err := h.plan(&o, &quota.Request{Key: fmt.Sprint("user-", i), Limit: l, Hits: 1}, now); err != nil {
				t.Fatal(err)
			}
			ttl := *o.cmd[len(o.cmd)-1].(*int64)
			if ttl < end || ttl >= end+max(tc.span.Milliseconds(), 1) {
				t.Fatalf("%v window: key %d expires in %d ms, want [%d, %d+%d)", tc.window, i, ttl, end, end, tc.span.Milliseconds())
			}
			lo, hi = min(lo, ttl), max(hi, ttl)
		}
		// A thousand keys cover nearly all of the span (a uniform spread leaves
		// about a thousandth at each end).
		if spread := hi - lo; float64(spread) < 0.95*float64(tc.span.Milliseconds()-1) {
			t.Errorf("%v window: expiries spread over %d ms of %v", tc.window, spread, tc.span)
		}
	}
}

// TestRedisDown: with nothing listening, New succeeds and every request is decided
// by the fail policy, counted, and fast.
func TestRedisDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close() // a port nothing listens on
	for _, policy := range []string{"open", "closed"} {
		st := &quotatest.Stats{}
		p := defaults()
		p.RedisServerURL, p.FailPolicy = addr, policy
		h, err := New(context.Background(), adapters.Env{Stats: st}, p, nil)
		if err != nil {
			t.Fatal(err)
		}
		reqs := []quota.Request{{Key: "a", Limit: quota.Limit{Requests: 5, Window: time.Second}, Hits: 1}, {Key: "b", Limit: quota.Limit{Requests: 5, Window: time.Second, Algorithm: quota.TokenBucket}, Hits: 1}}
		out := make([]quota.Decision, 2)
		start := time.Now()
		for range 10 {
			if err := h.Allow(context.Background(), time.Now(), reqs, out); err != nil {
				t.Fatal(err)
			}
			for _, d := range out {
				if d.Allowed != (policy == "open") {
					t.Errorf("%s: %+v", policy, d)
				}
			}
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("%s: 10 batches took %v with Redis down", policy, el)
		}
		if st.Errors(quotakit.ReasonError)+st.Errors(quotakit.ReasonTimeout) != 10 || st.Drops("fail_"+policy) != 20 {
			t.Errorf("%s: counted errors %d+%d, drops %d", policy, st.Errors(quotakit.ReasonError), st.Errors(quotakit.ReasonTimeout), st.Drops("fail_"+policy))
		}
		_ = h.Close(context.Background())
	}
}

// TestParamsYAML decodes params as a Handler's spec.params are written, strictly.
func TestParamsYAML(t *testing.T) {
	const doc = `
redisServerUrl: redis.sluice-system:6379
password: hunter2
db: 1
connectionPoolSize: 64
timeout: 20ms
failPolicy: closed
localCacheSize: 50000
maxInFlight: 4
quotas:
- name: requestcount
  maxAmount: 5000
  validDuration: 1s
  algorithm: token_bucket
  overrides:
  - dimensions: {destination: ratings}
    maxAmount: 100
`
	p := defaults()
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if p.Timeout != 20*time.Millisecond || p.FailPolicy != "closed" || p.DB != 1 || p.MaxInFlight != 4 || p.Quotas[0].Algorithm != "token_bucket" {
		t.Errorf("decoded %+v", p)
	}
}
