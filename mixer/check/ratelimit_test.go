package check_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
	"github.com/sluicemesh/sluice/mixer/mixertest"
)

// clock is a test clock that only moves when told.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type server struct {
	*mixertest.Server
	conn      *grpc.ClientConn // to the gRPC port
	checkConn *grpc.ClientConn // to the lean check listener (--check-addr)
	clock     *clock
	url       string
}

// via is the connection to a listener: "grpc" or "check".
func (s *server) via(listener string) *grpc.ClientConn {
	if listener == "check" {
		return s.checkConn
	}
	return s.conn
}

// forListeners runs a test once against each listener that serves checks: the gRPC
// port (grpc-go) and the lean HTTP/2 check listener, which must answer alike.
func forListeners(t *testing.T, test func(t *testing.T, listener string)) {
	for _, l := range []string{"grpc", "check"} {
		t.Run(l, func(t *testing.T) { test(t, l) })
	}
}

// startServer runs a whole Sluice on loopback with files as its config directory and
// a clock that only moves when told.
// writeConfig writes files (name to content) into a new directory, for startServer.
func writeConfig(t testing.TB, files map[string]string) []string {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

func startServer(t testing.TB, mod func(*mixer.Options), files ...string) *server {
	t.Helper()
	dir := t.TempDir()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Midnight UTC, so that every window of the tests starts with the test.
	c := &clock{now: time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)}
	opts := mixer.Options{ConfigDir: dir, Now: c.Now, CheckAddr: "127.0.0.1:0"}
	if mod != nil {
		mod(&opts)
	}
	s := mixertest.Start(t, opts)
	checkConn, err := grpc.NewClient(s.CheckAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { checkConn.Close() })
	return &server{Server: s, conn: s.Dial(t), checkConn: checkConn, clock: c, url: s.AdminURL + "/metrics"}
}

func descriptor(kv ...string) *rlcommon.RateLimitDescriptor {
	d := &rlcommon.RateLimitDescriptor{}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Entries = append(d.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return d
}

// want is the expected status of one descriptor; remaining -1 is not checked, and
// rpu 0 means no current limit.
type want struct {
	code      rlsv3.RateLimitResponse_Code
	rpu       uint32
	unit      rlsv3.RateLimitResponse_RateLimit_Unit
	remaining int64
}

var (
	ok      = rlsv3.RateLimitResponse_OK
	over    = rlsv3.RateLimitResponse_OVER_LIMIT
	second  = rlsv3.RateLimitResponse_RateLimit_SECOND
	minute  = rlsv3.RateLimitResponse_RateLimit_MINUTE
	hour    = rlsv3.RateLimitResponse_RateLimit_HOUR
	day     = rlsv3.RateLimitResponse_RateLimit_DAY
	noLimit = want{code: rlsv3.RateLimitResponse_OK, remaining: 0}
)

type step struct {
	name    string
	advance time.Duration
	domain  string
	descs   []*rlcommon.RateLimitDescriptor
	repeat  int // send this many times; the wants are checked on the last
	overall rlsv3.RateLimitResponse_Code
	want    []want
}

// TestREADMECompatibility feeds the examples of envoyproxy/ratelimit's README, written
// as test data from its documentation, and checks the answers it documents.
func TestREADMECompatibility(t *testing.T) {
	forListeners(t, func(t *testing.T, listener string) {
		files, err := filepath.Glob("testdata/ratelimit-readme/*.yaml")
		if err != nil {
			t.Fatal(err)
		}
		s := startServer(t, nil, files...)
		client := rlsv3.NewRateLimitServiceClient(s.via(listener))
		steps := []step{
			{name: "1: database users", domain: "mongo_cps", descs: []*rlcommon.RateLimitDescriptor{descriptor("database", "users")},
				overall: ok, want: []want{{ok, 500, second, 499}}},
			{name: "1: an unconfigured value has no limit", domain: "mongo_cps", descs: []*rlcommon.RateLimitDescriptor{descriptor("database", "other")},
				overall: ok, want: []want{noLimit}},
			{name: "2: five marketing messages a day", domain: "messaging", repeat: 5,
				descs:   []*rlcommon.RateLimitDescriptor{descriptor("message_type", "marketing", "to_number", "2061111111")},
				overall: ok, want: []want{{ok, 5, day, 0}}},
			{name: "2: the sixth is over the limit", domain: "messaging",
				descs:   []*rlcommon.RateLimitDescriptor{descriptor("message_type", "marketing", "to_number", "2061111111")},
				overall: over, want: []want{{over, 5, day, 0}}},
			{name: "2: another number has its own five", domain: "messaging",
				descs:   []*rlcommon.RateLimitDescriptor{descriptor("message_type", "marketing", "to_number", "2062222222")},
				overall: ok, want: []want{{ok, 5, day, 4}}},
			{name: "2: both descriptors, a logical OR", domain: "messaging",
				descs:   []*rlcommon.RateLimitDescriptor{descriptor("message_type", "marketing", "to_number", "2061111111"), descriptor("to_number", "2061111111")},
				overall: over, want: []want{{over, 5, day, 0}, {ok, 100, day, 99}}},
			{name: "3: any address gets ten a second", domain: "edge_proxy_per_ip", repeat: 10,
				descs: []*rlcommon.RateLimitDescriptor{descriptor("remote_address", "50.0.0.1")}, overall: ok, want: []want{{ok, 10, second, 0}}},
			{name: "3: the eleventh is over", domain: "edge_proxy_per_ip",
				descs: []*rlcommon.RateLimitDescriptor{descriptor("remote_address", "50.0.0.1")}, overall: over, want: []want{{over, 10, second, 0}}},
			{name: "3: the most specific match wins: blacklisted", domain: "edge_proxy_per_ip",
				descs: []*rlcommon.RateLimitDescriptor{descriptor("remote_address", "50.0.0.5")}, overall: over, want: []want{{over, 0, second, 0}}},
			{name: "3: a new second resets the window", advance: time.Second, domain: "edge_proxy_per_ip",
				descs: []*rlcommon.RateLimitDescriptor{descriptor("remote_address", "50.0.0.1")}, overall: ok, want: []want{{ok, 10, second, 9}}},
			{name: "4: two tuples do not match a one-level config", domain: "example4",
				descs: []*rlcommon.RateLimitDescriptor{descriptor("key", "value", "subkey", "subvalue")}, overall: ok, want: []want{noLimit}},
			{name: "4: but match a nested one", domain: "example4_nested",
				descs: []*rlcommon.RateLimitDescriptor{descriptor("key", "value", "subkey", "subvalue")}, overall: ok, want: []want{{ok, 300, second, 299}}},
			{name: "5: unlimited answers OK with MaxUint32 remaining", domain: "internal", repeat: 3,
				descs: []*rlcommon.RateLimitDescriptor{descriptor("ldap", "cn=admin")}, overall: ok, want: []want{{ok, 0, 0, math.MaxUint32}}},
			{name: "5: azure a hundred a minute", domain: "internal",
				descs: []*rlcommon.RateLimitDescriptor{descriptor("azure", "x")}, overall: ok, want: []want{{ok, 100, minute, 99}}},
			{name: "6: user-a in shadow mode is never limited", domain: "example6", repeat: 15,
				descs: []*rlcommon.RateLimitDescriptor{descriptor("service", "auth-service", "user", "user-a")}, overall: ok, want: []want{{ok, 10, second, 0}}},
			{name: "6: user-b is limited to twenty", domain: "example6", repeat: 21,
				descs: []*rlcommon.RateLimitDescriptor{descriptor("service", "auth-service", "user", "user-b")}, overall: over, want: []want{{over, 20, second, 0}}},
			{name: "7: alone, the specific limit is five", advance: time.Second, domain: "example7", repeat: 5,
				descs: []*rlcommon.RateLimitDescriptor{descriptor("key_1", "value_1", "user", "bkthomps")}, overall: ok, want: []want{{ok, 5, second, 0}}},
			{name: "7: together, it is replaced and ten apply", domain: "example7", repeat: 10,
				descs:   []*rlcommon.RateLimitDescriptor{descriptor("key_1", "value_1", "user", "bkthomps"), descriptor("key_2", "value_2", "user", "bkthomps")},
				overall: ok, want: []want{noLimit, {ok, 10, second, 0}}},
			{name: "7: the replaced limit was not charged", domain: "example7",
				descs: []*rlcommon.RateLimitDescriptor{descriptor("key_1", "value_1", "user", "bkthomps")}, overall: over, want: []want{{over, 5, second, 0}}},
			{name: "8: unspecified values have their own limit", domain: "example8", repeat: 10,
				descs: []*rlcommon.RateLimitDescriptor{descriptor("key1", "unspecified_value")}, overall: ok, want: []want{{ok, 10, minute, 0}}},
			{name: "8: and value1 its twenty", domain: "example8",
				descs: []*rlcommon.RateLimitDescriptor{descriptor("key1", "value1")}, overall: ok, want: []want{{ok, 20, minute, 19}}},
			{name: "9: wildcard values", domain: "example9",
				descs:   []*rlcommon.RateLimitDescriptor{descriptor("key1", "value_1"), descriptor("key1", "value_2"), descriptor("key1", "other")},
				overall: ok, want: []want{{ok, 20, minute, 19}, {ok, 20, minute, 19}, noLimit}},
			{name: "share_threshold: matching values share one count", domain: "algorithms", repeat: 3,
				descs: []*rlcommon.RateLimitDescriptor{descriptor("wild", "tenant-a")}, overall: ok, want: []want{{ok, 3, hour, 0}}},
			{name: "share_threshold: a second tenant finds it spent", domain: "algorithms",
				descs: []*rlcommon.RateLimitDescriptor{descriptor("wild", "tenant-b")}, overall: over, want: []want{{over, 3, hour, 0}}},
			{name: "an unknown domain is not limited", domain: "no-such-domain",
				descs: []*rlcommon.RateLimitDescriptor{descriptor("a", "b")}, overall: ok, want: []want{noLimit}},
		}
		for _, st := range steps {
			s.clock.Advance(st.advance)
			n := max(st.repeat, 1)
			var resp *rlsv3.RateLimitResponse
			for i := 0; i < n; i++ {
				var err error
				resp, err = client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: st.domain, Descriptors: st.descs})
				if err != nil {
					t.Fatalf("%s: %v", st.name, err)
				}
			}
			checkResponse(t, st.name, resp, st.overall, st.want)
		}
		f, err := loadtest.Scrape(context.Background(), s.url)
		if err != nil {
			t.Fatal(err)
		}
		for labels, wantN := range map[[3]string]float64{
			{"example6", "service.user_user-a", "shadow_over_limit"}: 5,
			{"example8", "key1_unspecified_value", "ok"}:             10,
			{"example8", "key1_value1", "ok"}:                        1,
			{"mongo_cps", "database_users", "ok"}:                    1,
			{"messaging", "message_type_marketing.to_number", "ok"}:  6,
			{"", "", "unknown_domain"}:                               1,
		} {
			got := f.Sum("sluice_ratelimit_descriptors_total", map[string]string{"domain": labels[0], "descriptor": labels[1], "result": labels[2]})
			if got != wantN {
				t.Errorf("sluice_ratelimit_descriptors_total%v = %v, want %v", labels, got, wantN)
			}
		}
	})
}

func checkResponse(t *testing.T, name string, resp *rlsv3.RateLimitResponse, overall rlsv3.RateLimitResponse_Code, ws []want) {
	t.Helper()
	if resp.GetOverallCode() != overall {
		t.Errorf("%s: overall %v, want %v", name, resp.GetOverallCode(), overall)
	}
	if len(resp.GetStatuses()) != len(ws) {
		t.Fatalf("%s: %d statuses, want %d", name, len(resp.GetStatuses()), len(ws))
	}
	for i, w := range ws {
		st := resp.GetStatuses()[i]
		if st.GetCode() != w.code {
			t.Errorf("%s: descriptor %d code %v, want %v", name, i, st.GetCode(), w.code)
		}
		if got := st.GetCurrentLimit().GetRequestsPerUnit(); w.rpu != 0 && (got != w.rpu || st.GetCurrentLimit().GetUnit() != w.unit) {
			t.Errorf("%s: descriptor %d limit %d/%v, want %d/%v", name, i, got, st.GetCurrentLimit().GetUnit(), w.rpu, w.unit)
		}
		if w.rpu == 0 && w.unit == 0 && w.remaining == 0 && st.GetCurrentLimit() != nil {
			t.Errorf("%s: descriptor %d has limit %v, want none", name, i, st.GetCurrentLimit())
		}
		if w.remaining >= 0 && int64(st.GetLimitRemaining()) != w.remaining {
			t.Errorf("%s: descriptor %d remaining %d, want %d", name, i, st.GetLimitRemaining(), w.remaining)
		}
	}
}

// TestRateLimitRunsInline: on the lean listener, a Sluice that only answers rate
// limits runs them inline once it has seen its config is in memory, as it does
// ext_authz checks: no goroutine and no deadline timer per call. Before that, a
// call that may wait runs on the idle reader: no goroutine either.
func TestRateLimitRunsInline(t *testing.T) {
	s := startServer(t, nil, "testdata/ratelimit-readme/example1.yaml")
	client := rlsv3.NewRateLimitServiceClient(s.via("check"))
	for range 3 {
		if _, err := client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "mongo_cps",
			Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("database", "users")}}); err != nil {
			t.Fatal(err)
		}
	}
	f, err := loadtest.Scrape(context.Background(), s.url)
	if err != nil {
		t.Fatal(err)
	}
	mode := func(m string) float64 { return f.Sum("sluice_h2unary_calls_total", map[string]string{"mode": m}) }
	// The first call, before the plan is known, may wait: with nothing else to
	// read, it runs on the reader all the same (Method.OnReader).
	if inline, reader, goroutine := mode("inline"), mode("reader"), mode("goroutine"); inline != 2 || reader != 1 || goroutine != 0 {
		t.Errorf("calls inline %v, on the reader %v, on goroutines %v; want the first on the reader and the last two inline", inline, reader, goroutine)
	}
}

// TestRateLimitLabelsOutliveRequests: the lean listener reuses an inline call's
// request bytes for the next request, so a metric label taken from a request (its
// domain) must be a copy, or later requests would rewrite it.
func TestRateLimitLabelsOutliveRequests(t *testing.T) {
	s := startServer(t, nil, "testdata/ratelimit-readme/example1.yaml")
	client := rlsv3.NewRateLimitServiceClient(s.via("check"))
	send := func(domain string) {
		t.Helper()
		if _, err := client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: domain,
			Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("database", "users")}}); err != nil {
			t.Fatal(err)
		}
	}
	send("zzzzzzzzz") // the first call runs on a goroutine, and makes the next ones inline
	send("mongo_cps") // inline: its label is created from this request
	for range 5 {
		send("zzzzzzzzz") // the same length, at the same place in the message
	}
	f, err := loadtest.Scrape(context.Background(), s.url)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range f.Series("sluice_ratelimit_descriptors_total", nil) {
		l := loadtest.Labels(m)
		if d := l["domain"]; d != "mongo_cps" && d != "" {
			t.Errorf("series with domain %q (%v); want only mongo_cps and the unknown domains' empty one", d, l)
		}
	}
	if got := f.Sum("sluice_ratelimit_descriptors_total", map[string]string{"domain": "mongo_cps"}); got != 1 {
		t.Errorf("mongo_cps descriptors counted %v, want 1", got)
	}
}

func TestRateLimitBadInput(t *testing.T) {
	forListeners(t, func(t *testing.T, listener string) {
		s := startServer(t, nil, "testdata/ratelimit-readme/example1.yaml")
		client := rlsv3.NewRateLimitServiceClient(s.via(listener))
		for name, req := range map[string]*rlsv3.RateLimitRequest{
			"no domain":      {Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("a", "b")}},
			"no descriptors": {Domain: "mongo_cps"},
		} {
			_, err := client.ShouldRateLimit(context.Background(), req)
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("%s: %v, want INVALID_ARGUMENT", name, err)
			}
		}
		// An empty descriptor and negative hits get defined answers.
		resp, err := client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "mongo_cps", Descriptors: []*rlcommon.RateLimitDescriptor{
			{}, {Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "database", Value: "users"}}, IsNegativeHits: true},
		}})
		if err != nil {
			t.Fatal(err)
		}
		checkResponse(t, "empty and negative", resp, ok, []want{noLimit, noLimit})
		// hits_addend counts as that many hits.
		resp, err = client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "mongo_cps", HitsAddend: 499,
			Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("database", "users")}})
		if err != nil {
			t.Fatal(err)
		}
		checkResponse(t, "hits_addend", resp, ok, []want{{ok, 500, second, 1}})
		resp, _ = client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "mongo_cps", HitsAddend: 2,
			Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("database", "users")}})
		checkResponse(t, "hits_addend over", resp, over, []want{{over, 500, second, 0}})
		// Hits past anything a limit holds are over it (an error would let Envoy,
		// failing open by default, through), and spend the window as upstream's
		// count of them would.
		s.clock.Advance(time.Second)
		for _, c := range []struct {
			name string
			req  *rlsv3.RateLimitRequest
		}{
			{"huge descriptor hits", &rlsv3.RateLimitRequest{Domain: "mongo_cps", Descriptors: []*rlcommon.RateLimitDescriptor{{
				Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "database", Value: "users"}}, HitsAddend: wrapperspb.UInt64(1 << 62)}}}},
			{"huge request hits", &rlsv3.RateLimitRequest{Domain: "mongo_cps", HitsAddend: math.MaxUint32, Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("database", "users")}}},
			{"one hit after them", &rlsv3.RateLimitRequest{Domain: "mongo_cps", Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("database", "users")}}},
		} {
			name := c.name
			resp, err := client.ShouldRateLimit(context.Background(), c.req)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			checkResponse(t, name, resp, over, []want{{over, 500, second, 0}})
		}
		// An override in months counts 30 days, as upstream's; one in no unit is
		// refused, by its name.
		resp, err = client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "mongo_cps", Descriptors: []*rlcommon.RateLimitDescriptor{{
			Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "database", Value: "users"}},
			Limit:   &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 5, Unit: typev3.RateLimitUnit_MONTH}}}})
		if err != nil {
			t.Fatal(err)
		}
		checkResponse(t, "override in months", resp, ok, []want{{ok, 5, rlsv3.RateLimitResponse_RateLimit_MONTH, 4}})
		_, err = client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "mongo_cps", Descriptors: []*rlcommon.RateLimitDescriptor{{
			Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "database", Value: "users"}},
			Limit:   &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 5, Unit: typev3.RateLimitUnit_UNKNOWN}}}})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "UNKNOWN") {
			t.Errorf("override in no unit: %v", err)
		}
		// A domain that is not UTF-8 gets INTERNAL from both listeners, as grpc-go
		// answers an undecodable request.
		var out []byte
		err = s.via(listener).Invoke(context.Background(), "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
			[]byte{0x0a, 0x01, 0xff}, &out, grpc.ForceCodec(rawCodec{}))
		if status.Code(err) != codes.Internal {
			t.Errorf("undecodable request: %v", err)
		}
	})
}

// TestRateLimitUpstreamParity: answers where envoyproxy/ratelimit's behaviour is
// set by its code more than its README.
func TestRateLimitUpstreamParity(t *testing.T) {
	forListeners(t, func(t *testing.T, listener string) {
		s := startServer(t, func(o *mixer.Options) { o.RateLimitHeaders = true }, "testdata/ratelimit-parity.yaml")
		client := rlsv3.NewRateLimitServiceClient(s.via(listener))
		ask := func(name string, ds ...*rlcommon.RateLimitDescriptor) *rlsv3.RateLimitResponse {
			t.Helper()
			resp, err := client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "parity", Descriptors: ds})
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return resp
		}
		override := func(d *rlcommon.RateLimitDescriptor, rpu uint32) *rlcommon.RateLimitDescriptor {
			d.Limit = &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: rpu, Unit: typev3.RateLimitUnit_SECOND}
			return d
		}
		perSecond := func(code rlsv3.RateLimitResponse_Code, remaining int64) want {
			return want{code, 1, second, remaining}
		}
		// An override is a limit of its own: the shadow mode of the descriptor it
		// matches does not apply to it...
		checkResponse(t, "override of a shadowed limit", ask("shadowed", override(descriptor("shadowed", "x"), 1)), ok, []want{perSecond(ok, 0)})
		checkResponse(t, "override of a shadowed limit, again", ask("shadowed", override(descriptor("shadowed", "x"), 1)), over, []want{perSecond(over, 0)})
		// ...nor its name, which a limit matched beside it replaces.
		for i, code := range []rlsv3.RateLimitResponse_Code{ok, over} {
			resp := ask("override of a replaced limit", override(descriptor("named", "x"), 1), descriptor("narrow", "x"))
			checkResponse(t, fmt.Sprintf("override of a replaced limit, request %d", i), resp, code, []want{perSecond(code, 0), {ok, 100, minute, int64(99 - i)}})
		}
		// Overrides of one descriptor in two units are two limits, which do not
		// reset each other's count.
		for i, code := range []rlsv3.RateLimitResponse_Code{ok, ok, over, over} {
			unit := []typev3.RateLimitUnit{typev3.RateLimitUnit_HOUR, typev3.RateLimitUnit_DAY}[i%2]
			d := descriptor("remote", "1.2.3.4")
			d.Limit = &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1, Unit: unit}
			if got := ask("overrides in two units", d).GetOverallCode(); got != code {
				t.Errorf("override of 1 per %v, request %d: %v, want %v", unit, i, got, code)
			}
		}
		// An unlimited limit stays unlimited when a matched limit replaces its name,
		// as upstream marks it unlimited before replacing anything.
		if st := ask("replaced unlimited", descriptor("unl", "x"), descriptor("repl", "x")).GetStatuses(); len(st) != 2 ||
			st[0].GetCode() != ok || st[0].GetLimitRemaining() != math.MaxUint32 || st[0].GetCurrentLimit() != nil {
			t.Errorf("a replaced unlimited limit answered %v, want OK, unlimited", st)
		}
		// Overlapping wildcards: the first in the file wins.
		checkResponse(t, "overlapping wildcards", ask("tenant", descriptor("tenant", "abc")), ok, []want{{ok, 10, minute, 9}})
		// A value holding a counting key's separators is one value: it spends
		// its own count, not that of the nested descriptor it spells.
		for i, code := range []rlsv3.RateLimitResponse_Code{ok, ok, over} {
			checkResponse(t, fmt.Sprintf("forged key, request %d", i), ask("forged", descriptor("user", "bob|path=/x")), code, []want{{code, 2, minute, int64(max(1-i, 0))}})
		}
		checkResponse(t, "the key it spells", ask("nested", descriptor("user", "bob", "path", "/x")), ok, []want{{ok, 100, minute, 99}})
		// The RateLimit-* headers describe the descriptor over its limit, not an
		// earlier one that merely has nothing left.
		for range 10 {
			ask("burst", descriptor("burst", "x"))
		}
		resp := ask("daily and burst", descriptor("daily", "x"), descriptor("burst", "x"))
		checkResponse(t, "daily and burst", resp, over, []want{{ok, 1, day, 0}, {over, 10, second, 0}})
		hdrs := map[string]string{}
		for _, h := range resp.GetResponseHeadersToAdd() {
			hdrs[h.GetKey()] = h.GetValue()
		}
		if hdrs["RateLimit-Limit"] != "10" || hdrs["RateLimit-Remaining"] != "0" || hdrs["RateLimit-Reset"] != "1" {
			t.Errorf("RateLimit headers %v, want the per-second limit's: 10, 0, 1", hdrs)
		}
		// duration_until_reset is whole seconds, rounded up, as upstream answers it:
		// Envoy reads only its seconds.
		s.clock.Advance(300 * time.Millisecond)
		for _, st := range ask("whole seconds", descriptor("burst", "y"), descriptor("daily", "y"), descriptor("tenant", "abz")).GetStatuses() {
			if d := st.GetDurationUntilReset(); d == nil || d.GetNanos() != 0 || d.GetSeconds() < 1 {
				t.Errorf("duration_until_reset %v, want whole seconds, at least one", d)
			}
		}
	})
}

func TestRateLimitHeadersAndAlgorithms(t *testing.T) {
	forListeners(t, func(t *testing.T, listener string) {
		s := startServer(t, func(o *mixer.Options) { o.RateLimitHeaders = true }, "testdata/ratelimit-readme/algorithms.yaml")
		client := rlsv3.NewRateLimitServiceClient(s.via(listener))
		s.clock.Advance(30 * time.Second) // the middle of a minute window
		ask := func(key string) *rlsv3.RateLimitResponse {
			t.Helper()
			resp, err := client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "algorithms",
				Descriptors: []*rlcommon.RateLimitDescriptor{descriptor(key, "x")}})
			if err != nil {
				t.Fatal(err)
			}
			return resp
		}
		for _, key := range []string{"fixed", "sliding", "bucket"} {
			for i := 0; i < 4; i++ {
				if r := ask(key); r.GetOverallCode() != ok {
					t.Fatalf("%s: request %d refused", key, i)
				}
			}
			if r := ask(key); r.GetOverallCode() != over {
				t.Errorf("%s: the fifth request within a minute was allowed", key)
			}
		}
		// 31 s later the fixed window has turned over; the sliding window has not.
		s.clock.Advance(31 * time.Second)
		if ask("fixed").GetOverallCode() != ok {
			t.Error("fixed: a new window did not reset the count")
		}
		if ask("sliding").GetOverallCode() != over {
			t.Error("sliding: the boundary let a burst through")
		}
		// The token bucket refills 4 per minute: after 31 s, two tokens.
		var codes []rlsv3.RateLimitResponse_Code
		for range 3 {
			codes = append(codes, ask("bucket").GetOverallCode())
		}
		if codes[0] != ok || codes[1] != ok || codes[2] != over {
			t.Errorf("bucket: after 31 s, answers %v; refill is not 4 per minute", codes)
		}
		hdrs := map[string]string{}
		for _, h := range ask("fixed").GetResponseHeadersToAdd() {
			hdrs[h.GetKey()] = h.GetValue()
		}
		if hdrs["RateLimit-Limit"] != "4" || hdrs["RateLimit-Remaining"] != "2" || hdrs["RateLimit-Reset"] != "59" {
			t.Errorf("RateLimit headers %v", hdrs)
		}
	})
}

// TestRateLimitDetailedMetricBound: detailed_metric names a descriptor by the
// request's values, so a client choosing them could add series to
// sluice_ratelimit_descriptors_total without end. The first names are kept, as
// upstream names them; later ones, and names too long, are counted as
// descriptor="overflow" and in sluice_series_overflow_total, and no decision goes
// uncounted.
func TestRateLimitDetailedMetricBound(t *testing.T) {
	forListeners(t, func(t *testing.T, listener string) {
		const bound, sent = 50, 200
		s := startServer(t, func(o *mixer.Options) { o.MaxDetailedDescriptors = bound }, "testdata/ratelimit-readme/example8.yaml")
		client := rlsv3.NewRateLimitServiceClient(s.via(listener))
		var descs []*rlcommon.RateLimitDescriptor
		for i := range sent {
			descs = append(descs, descriptor("key1", fmt.Sprintf("user-%d", i)))
		}
		if _, err := client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "example8", Descriptors: descs}); err != nil {
			t.Fatal(err)
		}
		// A long name folds even while there is room; a kept name stays kept.
		for _, v := range []string{strings.Repeat("x", 2<<10), "user-0"} {
			if _, err := client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "example8",
				Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("key1", v)}}); err != nil {
				t.Fatal(err)
			}
		}
		f, err := loadtest.Scrape(context.Background(), s.url)
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]bool{}
		for _, m := range f.Series("sluice_ratelimit_descriptors_total", map[string]string{"domain": "example8"}) {
			names[loadtest.Labels(m)["descriptor"]] = true
		}
		if len(names) > bound+1 {
			t.Errorf("%d descriptor names, want at most %d and overflow", len(names), bound)
		}
		if !names["key1_user-0"] {
			t.Error("the first detailed name is not kept as upstream names it")
		}
		over := f.Sum("sluice_ratelimit_descriptors_total", map[string]string{"domain": "example8", "descriptor": "overflow"})
		folded := f.Sum("sluice_series_overflow_total", map[string]string{"metric": "sluice_ratelimit_descriptors_total"})
		if over != sent-bound+1 || folded != over {
			t.Errorf("overflow series %v, sluice_series_overflow_total %v; want %d each", over, folded, sent-bound+1)
		}
		if got := f.Sum("sluice_ratelimit_descriptors_total", map[string]string{"domain": "example8"}); got != sent+2 {
			t.Errorf("descriptors counted %v, want every one (%d)", got, sent+2)
		}
	})
}
