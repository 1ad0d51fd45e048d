package check_test

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"

	"github.com/sluicemesh/sluice/adapters/all"
	"github.com/sluicemesh/sluice/adapters/quotakit/quotatest"
	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
	"github.com/sluicemesh/sluice/mixer/envoy"
)

// readmeCheckExamples are the YAML examples of README.md's section on checks, read
// at test time so that a change to them is tested as it is written.
type readmeCheckExamples struct {
	policy    string // Instance, list, rbac and denier Handlers, Rule
	quota     string // a redisquota Handler
	ratelimit string // an envoyproxy/ratelimit file with rate_limit.algorithm
}

func readREADMECheckExamples(t *testing.T) readmeCheckExamples {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const heading = "\n## Checks: policy, quotas and rate limits\n"
	_, section, found := strings.Cut(string(b), heading)
	if !found {
		t.Fatalf("README.md has no section %q", strings.TrimSpace(heading))
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var ex readmeCheckExamples
	blocks := regexp.MustCompile("(?s)\n```yaml\n(.*?)\n```").FindAllStringSubmatch(section, -1)
	for _, m := range blocks {
		switch block := m[1] + "\n"; {
		case strings.HasPrefix(block, "domain:"):
			ex.ratelimit = block
		case strings.Contains(block, "kind: Rule"):
			ex.policy = block
		case strings.Contains(block, "kind: Handler") && strings.Contains(block, "quotas:"):
			ex.quota = block
		default:
			t.Fatalf("README's checks section has a YAML example this test does not know; test it:\n%s", block)
		}
	}
	if len(blocks) != 3 || ex.policy == "" || ex.quota == "" || ex.ratelimit == "" {
		t.Fatalf("README's checks section has %d YAML examples; want the policy, quota and rate-limit ones, once each", len(blocks))
	}
	return ex
}

// editHandler returns a multi-document YAML example with its Handlers' specs given to
// edit, by name, as generic maps (spec.adapter, spec.params), and written back.
func editHandler(t *testing.T, doc string, edit func(name string, spec map[string]any)) string {
	t.Helper()
	var out []string
	for _, part := range strings.Split(doc, "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(part), &m); err != nil {
			t.Fatalf("README example does not parse: %v\n%s", err, part)
		}
		if m["kind"] == "Handler" {
			edit(m["metadata"].(map[string]any)["name"].(string), m["spec"].(map[string]any))
		}
		b, err := yaml.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return strings.Join(out, "---\n")
}

// The config the README's examples leave to the reader: rules for the rbac and
// denier handlers, which its Rule does not reach, and the quota instance its
// quota handler counts, with a rule sending it.
const readmeTestRules = `apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: admin-paths, namespace: shop}
spec:
  match: request.url_path.startsWith("/admin")
  actions: [{handler: admin-policy, instances: [caller]}]
---
apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: retired-v1, namespace: shop}
spec:
  match: request.url_path.startsWith("/v1/")
  actions: [{handler: retired, instances: [caller]}]
`

const readmeTestQuotaRule = `apiVersion: sluice.dev/v1alpha1
kind: Instance
metadata: {name: per-user, namespace: shop}
spec:
  template: quota
  params:
    dimensions:
      user: request.headers["x-user"]
---
apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: user-quotas, namespace: shop}
spec:
  match: destination.service.namespace == "shop"
  actions: [{handler: user-quota, instances: [per-user]}]
`

// readmeStep is one request, or repeat of them, and what the README says of the
// answer to the last. An ext_authz step has authz; a rate-limit step descriptors.
type readmeStep struct {
	name    string
	advance time.Duration
	repeat  int

	authz  *call
	srcIP  string            // the caller's address, if not call's 10.1.0.9
	code   codes.Code        // the check's status
	http   int               // a denial's HTTP status
	body   string            // what a denial's body contains
	added  map[string]string // an allowed request's headers set upstream, all of them
	remove []string          // and the client's copies removed, among others
	denial map[string]string // a denial's headers; "" for any value

	descs   []*rlcommon.RateLimitDescriptor
	overall rlsv3.RateLimitResponse_Code
	want    []want
	resets  []int64           // duration_until_reset per descriptor, in seconds
	headers map[string]string // RateLimit-* headers (--ratelimit-headers)
}

type readmeCase struct {
	name    string
	files   func(t *testing.T) map[string]string // config files by name
	skip    string                               // why the case cannot run here
	refused string                               // the config is refused at startup, naming this
	mod     func(*mixer.Options)
	steps   []readmeStep
	metrics map[string]map[string]string // series that must have counted something
}

// TestREADMECheckExamples loads the YAML examples of README's checks section into a
// running Sluice, as written but for what the reader must supply (a list file, rules
// for the handlers the example Rule does not reach, the quota's instance, a Redis),
// and holds them to what the README's prose says they do.
func TestREADMECheckExamples(t *testing.T) {
	ex := readREADMECheckExamples(t)
	const (
		checkout = "spiffe://cluster.local/ns/shop/sa/checkout" // listed in the file
		outside  = "192.0.2.7"                                  // not in 10.0.0.0/8
	)
	listFile := filepath.Join(t.TempDir(), "callers.txt")
	if err := os.WriteFile(listFile, []byte("# callers of the shop\n"+checkout+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fileLine := regexp.MustCompile(`(?m)^(\s+file:\s*)(\S+)`)
	if !fileLine.MatchString(ex.policy) {
		t.Fatal("README's list example has no file: any more; update this test")
	}
	policy := fileLine.ReplaceAllString(ex.policy, "${1}"+listFile)
	// The denier's "also headers: [{name, value, append}], added to the denial's response".
	retired := false
	policy = editHandler(t, policy, func(name string, spec map[string]any) {
		if name == "retired" {
			retired = true
			spec["params"].(map[string]any)["headers"] = []any{map[string]any{"name": "x-retired", "value": "use /v2", "append": false}}
		}
	})
	if !retired {
		t.Fatal("README's policy example has no denier named retired any more; update this test")
	}
	asMemquota := editHandler(t, ex.quota, func(_ string, spec map[string]any) {
		// "or memquota (same quotas; plus maxKeys)"
		spec["adapter"] = "memquota"
		spec["params"] = map[string]any{"quotas": spec["params"].(map[string]any)["quotas"]}
	})
	withRedis := func(addr string, timeout string) string {
		return editHandler(t, ex.quota, func(_ string, spec map[string]any) {
			params := spec["params"].(map[string]any)
			params["redisServerUrl"] = addr
			if timeout != "" {
				params["timeout"] = timeout
			}
		})
	}

	ask := func(c call, user string) *call {
		c.headers = map[string]string{"x-user": user}
		return &c
	}
	// The quota example: 100 a minute per user in a sliding window, batch-job 10.
	quotaSteps := []readmeStep{
		{name: "a user has a hundred", authz: ask(call{frontend, "GET", "/items", nil}, "alice"), repeat: 100, code: codes.OK,
			added: map[string]string{"x-caller-checked": "true"}},
		{name: "the hundred-and-first is refused", authz: ask(call{frontend, "GET", "/items", nil}, "alice"),
			code: codes.ResourceExhausted, http: 429, denial: map[string]string{"Retry-After": "60", "x-envoy-ratelimited": "true"}},
		{name: "a request the policy refused is not charged", authz: ask(call{stranger, "GET", "/items", nil}, "batch-job"), repeat: 5,
			code: codes.PermissionDenied, http: 403, body: "shop/callers-only"},
		{name: "batch-job has ten", authz: ask(call{frontend, "GET", "/items", nil}, "batch-job"), repeat: 10, code: codes.OK},
		{name: "batch-job's eleventh is refused", authz: ask(call{frontend, "GET", "/items", nil}, "batch-job"),
			code: codes.ResourceExhausted, http: 429, denial: map[string]string{"Retry-After": "60", "x-envoy-ratelimited": "true"}},
		{name: "a sliding window: a second before Retry-After, still refused", advance: 59 * time.Second,
			authz: ask(call{frontend, "GET", "/items", nil}, "alice"), code: codes.ResourceExhausted, http: 429},
		{name: "after Retry-After, a retry passes", advance: time.Second, authz: ask(call{frontend, "GET", "/items", nil}, "alice"), code: codes.OK},
	}

	tests := []readmeCase{
		{
			// "A file that cannot be read ... rejects that config ... at startup".
			name:    "policy as written, its list file missing",
			files:   func(*testing.T) map[string]string { return map[string]string{"policy.yaml": ex.policy} },
			refused: fileLine.FindStringSubmatch(ex.policy)[2],
		},
		{
			name: "policy",
			files: func(*testing.T) map[string]string {
				return map[string]string{"policy.yaml": policy, "rules.yaml": readmeTestRules}
			},
			steps: []readmeStep{
				{name: "a caller in overrides is allowed, allowHeaders added upstream", authz: &call{frontend, "GET", "/items", nil}, code: codes.OK,
					added: map[string]string{"x-caller-checked": "true"}, remove: []string{"x-sluice-policy"}},
				{name: "a caller in the file is allowed", authz: &call{checkout, "GET", "/items", nil}, code: codes.OK,
					added: map[string]string{"x-caller-checked": "true"}},
				{name: "a caller not in the list is denied, the body naming the rule", authz: &call{stranger, "GET", "/items", nil},
					code: codes.PermissionDenied, http: 403, body: "rule shop/callers-only"},
				{name: "a comment of the file is no entry", authz: &call{"# callers of the shop", "GET", "/items", nil},
					code: codes.PermissionDenied, http: 403, body: "rule shop/callers-only"},
				{name: "rbac: an admin over mTLS is allowed by the admins policy", srcIP: outside,
					authz: &call{frontend, "POST", "/admin/users", map[string]string{"x-role": "admin"}}, code: codes.OK,
					added: map[string]string{"x-caller-checked": "true", "x-sluice-policy": "admins"}},
				{name: "rbac: an admin without mTLS is not, the rule before callers-only denying", srcIP: outside,
					authz: &call{"", "POST", "/admin/users", map[string]string{"x-role": "admin"}}, code: codes.PermissionDenied, http: 403, body: "rule shop/admin-paths"},
				{name: "rbac: an internal address is allowed by the internal policy, a forged x-sluice-policy removed",
					authz: &call{frontend, "POST", "/admin/users", map[string]string{"x-sluice-policy": "admins"}}, code: codes.OK,
					added: map[string]string{"x-caller-checked": "true"}, remove: []string{"x-sluice-policy"}},
				{name: "rbac: ALLOW with no policy matching denies", srcIP: outside, authz: &call{frontend, "POST", "/admin/users", nil},
					code: codes.PermissionDenied, http: 403, body: "rule shop/admin-paths"},
				{name: "the denier answers 410", authz: &call{frontend, "GET", "/v1/items", nil},
					code: codes.PermissionDenied, http: 410, body: "rule shop/retired-v1: v1 is retired",
					denial: map[string]string{"x-retired": "use /v2"}},
				{name: "rules run by name, the first denial wins", authz: &call{stranger, "GET", "/v1/items", nil},
					code: codes.PermissionDenied, http: 403, body: "rule shop/callers-only"},
			},
		},
		{
			name: "quota as memquota",
			files: func(*testing.T) map[string]string {
				return map[string]string{"policy.yaml": policy, "quota.yaml": asMemquota, "instance.yaml": readmeTestQuotaRule}
			},
			steps: quotaSteps,
		},
		{
			// A Redis that accepts connections and never answers: the decision
			// times out (timeout: 50ms), and failPolicy: open allows it.
			name: "quota as redisquota, Redis not answering",
			files: func(t *testing.T) map[string]string {
				return map[string]string{"policy.yaml": policy, "quota.yaml": withRedis(blackhole(t), ""), "instance.yaml": readmeTestQuotaRule}
			},
			steps: []readmeStep{
				{name: "failPolicy open allows", authz: ask(call{frontend, "GET", "/items", nil}, "alice"), repeat: 3, code: codes.OK},
			},
			metrics: map[string]map[string]string{
				"sluice_adapter_errors_total":    {"handler": "shop/user-quota", "reason": "backend_timeout"},
				"sluice_instances_dropped_total": {"handler": "shop/user-quota", "reason": "fail_open"},
			},
		},
		{
			name:  "ratelimit",
			files: func(*testing.T) map[string]string { return map[string]string{"api.yaml": ex.ratelimit} },
			mod:   func(o *mixer.Options) { o.RateLimitHeaders = true },
			steps: []readmeStep{
				{name: "token bucket: one request, and room: reset 0", descs: rlDescs("user", "alice"),
					overall: ok, want: []want{{ok, 600, minute, 599}}, resets: []int64{0}},
				{name: "token bucket: a burst of 600, the next a token away", descs: rlDescs("user", "alice"), repeat: 599,
					overall: ok, want: []want{{ok, 600, minute, 0}}, resets: []int64{1}},
				{name: "token bucket: the 601st is over, retry in a second", descs: rlDescs("user", "alice"),
					overall: over, want: []want{{over, 600, minute, 0}}, resets: []int64{1},
					headers: map[string]string{"RateLimit-Limit": "600", "RateLimit-Remaining": "0", "RateLimit-Reset": "1"}},
				{name: "headers: the last descriptor over its limit", descs: append(rlDescs("user", "alice"), rlDescs("remote_address", "203.0.113.10")...),
					overall: over, want: []want{{over, 600, minute, 0}, {ok, 50, second, 49}}, resets: []int64{1, 0},
					headers: map[string]string{"RateLimit-Limit": "600", "RateLimit-Remaining": "0", "RateLimit-Reset": "1"}},
				{name: "headers: else the first with the least remaining", descs: append(rlDescs("user", "bob"), rlDescs("remote_address", "203.0.113.10")...),
					overall: ok, want: []want{{ok, 600, minute, 599}, {ok, 50, second, 48}}, resets: []int64{0, 0},
					headers: map[string]string{"RateLimit-Limit": "50", "RateLimit-Remaining": "48", "RateLimit-Reset": "0"}},
				{name: "token bucket: 10/s sustained, one per 100ms", advance: 100 * time.Millisecond, descs: rlDescs("user", "alice"),
					overall: ok, want: []want{{ok, 600, minute, 0}}},
				{name: "token bucket: not two", descs: rlDescs("user", "alice"), overall: over, want: []want{{over, 600, minute, 0}}},
				{name: "token bucket: ten in a second", advance: time.Second, descs: rlDescs("user", "alice"), repeat: 10,
					overall: ok, want: []want{{ok, 600, minute, 0}}},
				{name: "token bucket: not eleven", descs: rlDescs("user", "alice"), overall: over, want: []want{{over, 600, minute, 0}}},
				{name: "sliding window: fifty in a second", descs: rlDescs("remote_address", "203.0.113.9"), repeat: 50,
					overall: ok, want: []want{{ok, 50, second, 0}}, resets: []int64{1}},
				{name: "sliding window: never 51", descs: rlDescs("remote_address", "203.0.113.9"),
					overall: over, want: []want{{over, 50, second, 0}}, resets: []int64{1},
					headers: map[string]string{"RateLimit-Limit": "50", "RateLimit-Remaining": "0", "RateLimit-Reset": "1"}},
				{name: "headers: of two over their limits, the last", descs: append(rlDescs("remote_address", "203.0.113.9"), rlDescs("user", "alice")...),
					overall: over, want: []want{{over, 50, second, 0}, {over, 600, minute, 0}}, resets: []int64{1, 1},
					headers: map[string]string{"RateLimit-Limit": "600", "RateLimit-Remaining": "0", "RateLimit-Reset": "1"}},
				{name: "sliding window: not across a second's boundary either", advance: 500 * time.Millisecond, descs: rlDescs("remote_address", "203.0.113.9"),
					overall: over, want: []want{{over, 50, second, 0}}},
				{name: "sliding window: the wait told passes", advance: 500 * time.Millisecond, descs: rlDescs("remote_address", "203.0.113.9"),
					overall: ok, want: []want{{ok, 50, second, 49}}, resets: []int64{0}},
			},
		},
	}
	// A Redis, when one is installed (the example's own address is the reader's).
	// A loaded machine can stall past the example's 50ms timeout, which fails open.
	redisCase := readmeCase{name: "quota as redisquota", steps: quotaSteps, files: func(t *testing.T) map[string]string {
		return map[string]string{"policy.yaml": policy, "quota.yaml": withRedis(quotatest.StartRedis(t), "5s"), "instance.yaml": readmeTestQuotaRule}
	}}
	// The fast tests (make test-unit: -short) start no servers; make test runs
	// this one, and fails without redis-server as the integration tests do.
	if testing.Short() {
		redisCase.skip = "starts redis-server; make test runs it"
	} else if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is not installed (%v): run `make deps`", err)
	}
	tests = append(tests, redisCase)

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.skip != "" {
				t.Skip(tc.skip)
			}
			if tc.refused != "" {
				if _, err := os.Stat(tc.refused); err == nil {
					t.Skipf("%s exists here", tc.refused)
				}
				dir := t.TempDir()
				for name, content := range tc.files(t) {
					if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				m, err := mixer.New(ctx, mixer.Options{ConfigDir: dir, GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
					Adapters: all.Registry(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
				if err == nil {
					cancel()
					_ = m.Run(ctx)
					t.Fatal("the config was applied")
				}
				if !strings.Contains(err.Error(), tc.refused) {
					t.Errorf("refused with %v, want it to name %s", err, tc.refused)
				}
				return
			}
			forListeners(t, func(t *testing.T, listener string) {
				files := writeConfig(t, tc.files(t)) // a Redis of its own too
				s := startServer(t, tc.mod, files...)
				for _, st := range tc.steps {
					s.clock.Advance(st.advance)
					if st.authz != nil {
						runAuthzStep(t, s, listener, st)
					} else {
						runRateLimitStep(t, s, listener, st)
					}
				}
				if len(tc.metrics) == 0 {
					return
				}
				f, err := loadtest.Scrape(context.Background(), s.url)
				if err != nil {
					t.Fatal(err)
				}
				for name, labels := range tc.metrics {
					if f.Sum(name, labels) == 0 {
						t.Errorf("%s%v counted nothing", name, labels)
					}
				}
			})
		})
	}
}

func rlDescs(kv ...string) []*rlcommon.RateLimitDescriptor {
	return []*rlcommon.RateLimitDescriptor{descriptor(kv...)}
}

// blackhole is the address of a server that accepts connections and never answers.
func blackhole(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				break
			}
			conns = append(conns, c)
		}
		for _, c := range conns {
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

func runAuthzStep(t *testing.T, s *server, listener string, st readmeStep) {
	t.Helper()
	client := authv3.NewAuthorizationClient(s.via(listener))
	req := st.authz.request()
	if st.srcIP != "" {
		req.Attributes.Source.Address = envoy.Address(st.srcIP, 40000)
	}
	var resp *authv3.CheckResponse
	for range max(st.repeat, 1) {
		var err error
		if resp, err = client.Check(context.Background(), req); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
	}
	if got := codes.Code(resp.GetStatus().GetCode()); got != st.code {
		t.Errorf("%s: %v %q, want %v", st.name, got, resp.GetStatus().GetMessage(), st.code)
		return
	}
	if st.code == codes.OK {
		if st.added != nil {
			got := map[string]string{}
			for _, h := range resp.GetOkResponse().GetHeaders() {
				got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
				if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
					t.Errorf("%s: header %s is appended to the client's, not replacing it", st.name, h.GetHeader().GetKey())
				}
			}
			if !maps.Equal(got, st.added) {
				t.Errorf("%s: headers added upstream %v, want %v", st.name, got, st.added)
			}
		}
		for _, h := range st.remove {
			if !slices.Contains(resp.GetOkResponse().GetHeadersToRemove(), h) {
				t.Errorf("%s: the client's %s is not removed (headers_to_remove %q)", st.name, h, resp.GetOkResponse().GetHeadersToRemove())
			}
		}
		return
	}
	d := resp.GetDeniedResponse()
	if int(d.GetStatus().GetCode()) != st.http || !strings.Contains(d.GetBody(), st.body) {
		t.Errorf("%s: denied with HTTP %d %q, want %d, the body with %q", st.name, d.GetStatus().GetCode(), d.GetBody(), st.http, st.body)
	}
	got := map[string]string{}
	for _, h := range d.GetHeaders() {
		got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	for k, v := range st.denial {
		if g, found := got[k]; !found || (v != "" && g != v) {
			t.Errorf("%s: denial header %s = %q (present %v), want %q; headers %v", st.name, k, g, found, v, got)
		}
	}
}

func runRateLimitStep(t *testing.T, s *server, listener string, st readmeStep) {
	t.Helper()
	client := rlsv3.NewRateLimitServiceClient(s.via(listener))
	var resp *rlsv3.RateLimitResponse
	for range max(st.repeat, 1) {
		var err error
		if resp, err = client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "api", Descriptors: st.descs}); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
	}
	checkResponse(t, st.name, resp, st.overall, st.want)
	for i, r := range st.resets {
		if i < len(resp.GetStatuses()) {
			if got := resp.GetStatuses()[i].GetDurationUntilReset().AsDuration(); got != time.Duration(r)*time.Second {
				t.Errorf("%s: descriptor %d duration_until_reset %v, want %ds", st.name, i, got, r)
			}
		}
	}
	if st.headers != nil {
		got := map[string]string{}
		for _, h := range resp.GetResponseHeadersToAdd() {
			got[h.GetKey()] = h.GetValue()
		}
		if !maps.Equal(got, st.headers) {
			t.Errorf("%s: headers %v, want %v", st.name, got, st.headers)
		}
	}
}
