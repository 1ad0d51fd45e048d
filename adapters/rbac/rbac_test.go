package rbac

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/adaptertest"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/templates/authorization"
)

// The real compiler and attributes of the core: tests may import mixer, the adapter may not.
var vocab = attribute.NewVocabulary()

func compiler(t testing.TB) adapters.Compiler {
	t.Helper()
	c, err := expr.NewCompiler(vocab)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// attrs builds the core's attributes (an activation over a bag) from Go values.
func attrs(t testing.TB, kv map[string]any) adapters.Attributes {
	t.Helper()
	bag := new(attribute.Bag)
	for k, v := range kv {
		id, ok := vocab.Lookup(k)
		if !ok {
			t.Fatalf("no attribute %s", k)
		}
		if err := bag.Set(id, v); err != nil {
			t.Fatal(err)
		}
	}
	a := expr.NewActivation(vocab)
	a.Reset(bag)
	return a
}

// mapAttrs are attributes from elsewhere than the core (a bridge, a test).
type mapAttrs map[string]any

func (m mapAttrs) Get(name string) (any, bool) { v, ok := m[name]; return v, ok }

type recorder struct {
	mu     sync.Mutex
	errors map[string]int
	log    bytes.Buffer
}

func (r *recorder) Error(reason string) { r.mu.Lock(); r.errors[reason]++; r.mu.Unlock() }
func (r *recorder) Dropped(int, string) {}
func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.Write(p)
}

func (r *recorder) count() int { r.mu.Lock(); defer r.mu.Unlock(); return r.errors["policy_eval"] }

func newRecorder() *recorder { return &recorder{errors: map[string]int{}} }

func defaults() *Params { return Factory().NewParams().(*Params) }

// mustNew builds a handler from params that must be valid.
func mustNew(t *testing.T, env adapters.Env, p *Params) *Handler {
	t.Helper()
	h, err := New(env, p)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// mustAuthorize asks h about a request with the core's attributes kv.
func mustAuthorize(t *testing.T, h *Handler, kv map[string]any) authorization.Result {
	t.Helper()
	r, err := h.Authorize(context.Background(), nil, attrs(t, kv))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestValidate(t *testing.T) {
	ok := []Policy{{Name: "a", Condition: "true"}}
	tests := []struct {
		name string
		p    Params
		path string // the FieldError path, "" when valid
	}{
		{"allow", Params{Action: "ALLOW", Policies: ok}, ""},
		{"deny in lower case", Params{Action: "deny", Policies: ok}, ""},
		{"empty action is ALLOW", Params{Policies: ok}, ""},
		{"qualified names", Params{Policies: []Policy{{Name: "shop/frontend-read.v1", Condition: "true"}, {Name: "x", Condition: "false"}}}, ""},
		{"unknown action", Params{Action: "AUDIT", Policies: ok}, "action"},
		{"no policies", Params{Action: "ALLOW"}, "policies"},
		{"no name", Params{Policies: []Policy{{Condition: "true"}}}, "policies[0].name"},
		{"name with space", Params{Policies: []Policy{{Name: "a", Condition: "true"}, {Name: "b c", Condition: "true"}}}, "policies[1].name"},
		{"duplicate name", Params{Policies: []Policy{{Name: "a", Condition: "true"}, {Name: "a", Condition: "false"}}}, "policies[1].name"},
		{"no condition", Params{Policies: []Policy{{Name: "a", Condition: "  "}}}, "policies[0].condition"},
		{"negative validity", Params{Policies: ok, ValidDuration: -time.Second}, "validDuration"},
		{"policy header without name", Params{Policies: []Policy{{Name: "a", Condition: "true", Headers: []authorization.Header{{Value: "v"}}}}}, "policies[0].headers[0].name"},
		{"policy header value with newline", Params{Policies: []Policy{{Name: "a", Condition: "true"}, {Name: "b", Condition: "true", Headers: []authorization.Header{{Name: "x-ok", Value: "1"}, {Name: "x-b", Value: "a\r\nset-cookie: x"}}}}}, "policies[1].headers[1].value"},
		{"allow header that is a pseudo-header", Params{Policies: ok, AllowHeaders: []authorization.Header{{Name: ":path", Value: "/"}}}, "allowHeaders[0].name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			adaptertest.WantFieldError(t, tt.p.Validate(), tt.path)
		})
	}
}

// TestBindCompiles: a condition that does not compile is a config error at its path,
// from Bind (config validation) and from New alike.
func TestBindCompiles(t *testing.T) {
	tests := []struct {
		name, cond string
		inError    string
	}{
		{"syntax", `source.principal ==`, "Syntax error"},
		{"unknown attribute", `source.nope == "x"`, "undeclared reference"},
		{"not a bool", `source.principal`, "not bool"},
		{"type mismatch", `request.size == "big"`, "no matching overload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := defaults()
			p.Policies = []Policy{{Name: "fine", Condition: `request.method == "GET"`}, {Name: "broken", Condition: tt.cond}}
			if err := p.Validate(); err != nil {
				t.Fatal(err)
			}
			_, err := Factory().Bind(adapters.Binding{Params: p, Compiler: compiler(t), Instances: adapters.Instances{Authorizations: []string{"ns/a"}}})
			var fe *adapters.FieldError
			if !errors.As(err, &fe) || fe.Path != "policies[1].condition" || !strings.Contains(err.Error(), tt.inError) {
				t.Errorf("Bind: %v, want an error at policies[1].condition containing %q", err, tt.inError)
			}
			_, err = Factory().New(context.Background(), adapters.Env{Compiler: compiler(t)}, p, adapters.Instances{})
			if !errors.As(err, &fe) || fe.Path != "policies[1].condition" {
				t.Errorf("New: %v, want an error at policies[1].condition", err)
			}
		})
	}
	p := defaults()
	p.Policies = []Policy{{Name: "a", Condition: "true"}}
	if _, err := Factory().Bind(adapters.Binding{Params: p}); err != nil {
		t.Errorf("Bind without a compiler: %v", err)
	}
	if _, err := Factory().New(context.Background(), adapters.Env{}, p, adapters.Instances{}); err == nil {
		t.Error("New without a compiler succeeded")
	}
}

func TestParamsFromYAML(t *testing.T) {
	src := `
action: DENY
validDuration: 30s
allowHeaders: [{name: x-checked-by, value: rbac}]
policies:
- name: no-evil
  condition: source.namespace == "evil"
  headers: [{name: x-denied-by, value: no-evil, append: true}]
- name: admin-only
  condition: |
    request.path.startsWith("/admin/") && request.headers["x-role"] != "admin"
`
	p := defaults()
	if err := yaml.Unmarshal([]byte(src), p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	h, err := New(adapters.Env{Compiler: compiler(t)}, p)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := h.Authorize(context.Background(), nil, attrs(t, map[string]any{"source.namespace": "evil"}))
	if r.Allowed() || r.ValidDuration != 30*time.Second || !slices.Equal(r.Headers, []authorization.Header{{Name: "x-denied-by", Value: "no-evil", Append: true}}) {
		t.Errorf("result %+v", r)
	}
	r, _ = h.Authorize(context.Background(), nil, attrs(t, map[string]any{"source.namespace": "shop"}))
	if !r.Allowed() || !slices.Equal(r.Headers, []authorization.Header{{Name: "x-checked-by", Value: "rbac"}}) {
		t.Errorf("result %+v", r)
	}
}

// shop is an ALLOW policy set in the style of the examples.
var shop = []Policy{
	{Name: "frontend-reads-api", Condition: `source.principal == "spiffe://cluster.local/ns/shop/sa/frontend" && request.method in ["GET", "HEAD"] && request.path.startsWith("/api/")`},
	{Name: "internal-network", Condition: `cidr("10.0.0.0/8").containsIP(ip(source.ip))`},
	{Name: "admins", Condition: `request.headers["x-role"] == "admin" && connection.mtls`},
}

const frontend = "spiffe://cluster.local/ns/shop/sa/frontend"

func TestAllow(t *testing.T) {
	tests := []struct {
		name    string
		attrs   map[string]any
		allowed bool
		errors  int    // evaluation failures counted
		message string // in the denial
		cached  bool   // ValidDuration is the params' one, not 0
	}{
		{"frontend GET", map[string]any{"source.principal": frontend, "request.method": "GET", "request.path": "/api/items"}, true, 0, "", true},
		{"frontend HEAD", map[string]any{"source.principal": frontend, "request.method": "HEAD", "request.path": "/api/"}, true, 0, "", true},
		{"frontend POST", map[string]any{"source.principal": frontend, "request.method": "POST", "request.path": "/api/items"}, false, 0, "no policy allows the request", true},
		{"frontend outside /api/", map[string]any{"source.principal": frontend, "request.method": "GET", "request.path": "/admin"}, false, 0, "no policy allows", true},
		{"other principal", map[string]any{"source.principal": "spiffe://cluster.local/ns/shop/sa/cart", "request.method": "GET", "request.path": "/api/items"}, false, 0, "no policy allows", true},
		{"internal IPv4", map[string]any{"source.ip": "10.20.30.40"}, true, 0, "", true},
		{"external IPv4", map[string]any{"source.ip": "192.0.2.1"}, false, 0, "no policy allows", true},
		{"IPv6 outside an IPv4 CIDR", map[string]any{"source.ip": "2001:db8::1"}, false, 0, "no policy allows", true},
		{"admin over mTLS", map[string]any{"request.headers": map[string]string{"x-role": "admin"}, "connection.mtls": true}, true, 0, "", true},
		{"admin without mTLS", map[string]any{"request.headers": map[string]string{"x-role": "admin"}, "connection.mtls": false}, false, 0, "no policy allows", true},
		{"other role", map[string]any{"request.headers": map[string]string{"x-role": "user"}, "connection.mtls": true}, false, 0, "no policy allows", true},
		// Missing attributes make a condition false; they are not failures.
		{"no attributes", map[string]any{}, false, 0, "no policy allows", true},
		{"no x-role header", map[string]any{"request.headers": map[string]string{"x-other": "1"}, "connection.mtls": true}, false, 0, "no policy allows", true},
		{"no method", map[string]any{"source.principal": frontend, "request.path": "/api/items"}, false, 0, "no policy allows", true},
		// A malformed IP is a failure: counted, and that policy grants nothing.
		{"malformed IP", map[string]any{"source.ip": "10.0.0.999"}, false, 1, `policy "internal-network" could not be evaluated`, false},
		{"malformed IP but another policy allows", map[string]any{"source.ip": "nope", "source.principal": frontend, "request.method": "GET", "request.path": "/api/x"}, true, 0, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, kind := range []string{"activation", "map"} {
				rec := newRecorder()
				p := defaults()
				p.Policies = shop
				h, err := New(adapters.Env{Name: "shop/authz", Compiler: compiler(t), Stats: rec}, p)
				if err != nil {
					t.Fatal(err)
				}
				var a adapters.Attributes = mapAttrs(tt.attrs)
				if kind == "activation" {
					a = attrs(t, tt.attrs)
				}
				r, err := h.Authorize(context.Background(), &authorization.Instance{Name: "shop/req"}, a)
				if err != nil {
					t.Fatal(err)
				}
				if r.Allowed() != tt.allowed {
					t.Fatalf("%s: allowed=%v (%q), want %v", kind, r.Allowed(), r.Message, tt.allowed)
				}
				if !tt.allowed && (r.Code != codes.PermissionDenied || r.HTTPStatusOf() != 403 ||
					!strings.Contains(r.Message, tt.message) || !strings.Contains(r.Message, "shop/authz")) {
					t.Errorf("%s: denial %+v, want a message containing %q", kind, r, tt.message)
				}
				if (r.ValidDuration == DefaultValidDuration) != tt.cached {
					t.Errorf("%s: valid for %v", kind, r.ValidDuration)
				}
				if rec.count() != tt.errors {
					t.Errorf("%s: %d failures counted, want %d", kind, rec.count(), tt.errors)
				}
			}
		})
	}
}

func TestDeny(t *testing.T) {
	policies := []Policy{
		{Name: "evil-namespace", Condition: `source.namespace == "evil"`},
		{Name: "blocked-net", Condition: `cidr("192.0.2.0/24").containsIP(ip(source.ip)) || cidr("2001:db8:bad::/48").containsIP(ip(source.ip))`},
		{Name: "plaintext-admin", Condition: `request.path.startsWith("/admin") && !connection.mtls`},
	}
	tests := []struct {
		name    string
		attrs   map[string]any
		allowed bool
		errors  int
		message string
		cached  bool
	}{
		{"nothing matches", map[string]any{"source.namespace": "shop", "source.ip": "10.0.0.1", "request.path": "/admin", "connection.mtls": true}, true, 0, "", true},
		{"evil namespace", map[string]any{"source.namespace": "evil"}, false, 0, `policy "evil-namespace" matches`, true},
		{"blocked IPv4", map[string]any{"source.ip": "192.0.2.7"}, false, 0, `policy "blocked-net" matches`, true},
		{"blocked IPv6", map[string]any{"source.ip": "2001:db8:bad::1"}, false, 0, `policy "blocked-net" matches`, true},
		{"plaintext admin", map[string]any{"request.path": "/admin/users", "connection.mtls": false}, false, 0, `policy "plaintext-admin" matches`, true},
		// Missing attributes: the policies do not match, nothing is counted.
		{"no attributes", map[string]any{}, true, 0, "", true},
		{"admin path, mTLS unknown", map[string]any{"request.path": "/admin/users"}, true, 0, "", true},
		// A failure denies, naming the policy, and is not cached.
		{"malformed IP", map[string]any{"source.ip": "999.1.1.1"}, false, 1, `policy "blocked-net" could not be evaluated`, false},
		// A policy that matches is named even when another failed.
		{"malformed IP and evil", map[string]any{"source.ip": "x", "request.path": "/admin", "connection.mtls": false}, false, 1, `policy "plaintext-admin" matches`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			p := defaults()
			p.Action, p.Policies = "DENY", policies
			h := mustNew(t, adapters.Env{Name: "ns/deny", Compiler: compiler(t), Stats: rec}, p)
			r := mustAuthorize(t, h, tt.attrs)
			if r.Allowed() != tt.allowed {
				t.Fatalf("allowed=%v (%q), want %v", r.Allowed(), r.Message, tt.allowed)
			}
			if !tt.allowed && (r.Code != codes.PermissionDenied || r.HTTPStatus != 403 || !strings.Contains(r.Message, tt.message)) {
				t.Errorf("denial %+v, want a message containing %q", r, tt.message)
			}
			if (r.ValidDuration == DefaultValidDuration) != tt.cached {
				t.Errorf("valid for %v", r.ValidDuration)
			}
			if rec.count() != tt.errors {
				t.Errorf("%d failures counted, want %d", rec.count(), tt.errors)
			}
		})
	}
}

// TestDenyMissingValue holds the README's advice on DENY conditions: a condition
// on a header the request lacks is false, so a DENY policy written as "not admin"
// lets a request without the header through, and one that tests for the header
// first does not.
func TestDenyMissingValue(t *testing.T) {
	tests := []struct {
		name      string
		condition string
		headers   map[string]string
		allowed   bool
	}{
		{"naive, no header", `request.headers["x-role"] != "admin"`, map[string]string{"x-other": "1"}, true},
		{"naive, a guest", `request.headers["x-role"] != "admin"`, map[string]string{"x-role": "guest"}, false},
		{"guarded, no header", `!("x-role" in request.headers) || request.headers["x-role"] != "admin"`, map[string]string{"x-other": "1"}, false},
		{"guarded, a guest", `!("x-role" in request.headers) || request.headers["x-role"] != "admin"`, map[string]string{"x-role": "guest"}, false},
		{"guarded, an admin", `!("x-role" in request.headers) || request.headers["x-role"] != "admin"`, map[string]string{"x-role": "admin"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := defaults()
			p.Action, p.Policies = "DENY", []Policy{{Name: "not-admin", Condition: tt.condition}}
			h := mustNew(t, adapters.Env{Name: "ns/deny", Compiler: compiler(t), Stats: newRecorder()}, p)
			if r := mustAuthorize(t, h, map[string]any{"request.headers": tt.headers}); r.Allowed() != tt.allowed {
				t.Errorf("allowed=%v (%q), want %v", r.Allowed(), r.Message, tt.allowed)
			}
		})
	}
}

func TestReadsAttributes(t *testing.T) {
	p := defaults()
	p.Policies = shop
	h, err := New(adapters.Env{Compiler: compiler(t)}, p)
	if err != nil {
		t.Fatal(err)
	}
	var reader adapters.AttributeReader = h
	got := strings.Join(reader.ReadsAttributes(), ",")
	want := `connection.mtls,request.headers["x-role"],request.method,request.path,source.ip,source.principal`
	if got != want {
		t.Errorf("reads %s, want %s", got, want)
	}
	reader.ReadsAttributes()[0] = "changed"
	if h.ReadsAttributes()[0] != "connection.mtls" {
		t.Error("the caller changed the handler's attribute list")
	}
}

// TestFailureLogIsRateLimited: a policy failing on every request is counted every
// time but logged once per interval.
func TestFailureLogIsRateLimited(t *testing.T) {
	rec := newRecorder()
	now := time.Unix(1000, 0)
	p := defaults()
	p.Policies = shop
	h, err := New(adapters.Env{
		Compiler: compiler(t), Stats: rec, Logger: slog.New(slog.NewTextHandler(rec, nil)),
		Now: func() time.Time { return now },
	}, p)
	if err != nil {
		t.Fatal(err)
	}
	bad := attrs(t, map[string]any{"source.ip": "bad"})
	for i := 0; i < 5; i++ {
		h.Authorize(context.Background(), nil, bad)
	}
	now = now.Add(errorLogInterval + time.Second)
	h.Authorize(context.Background(), nil, bad)
	rec.mu.Lock()
	lines := strings.Count(rec.log.String(), "rbac policy evaluation failed")
	log := rec.log.String()
	rec.mu.Unlock()
	if rec.count() != 6 || lines != 2 {
		t.Errorf("%d failures counted, %d logged; want 6 and 2", rec.count(), lines)
	}
	if !strings.Contains(log, "policy=internal-network") {
		t.Errorf("log does not name the policy:\n%s", log)
	}
}

// TestConcurrent runs Authorize from many goroutines, for the race detector.
func TestConcurrent(t *testing.T) {
	rec := newRecorder()
	p := defaults()
	p.Policies = shop
	h, err := New(adapters.Env{Compiler: compiler(t), Stats: rec}, p)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			good := attrs(t, map[string]any{"source.ip": "10.1.1.1"})
			bad := attrs(t, map[string]any{"source.ip": "bad"})
			for i := 0; i < 200; i++ {
				if r, _ := h.Authorize(context.Background(), nil, good); !r.Allowed() {
					t.Error("internal IP denied")
					return
				}
				if r, _ := h.Authorize(context.Background(), nil, bad); r.Allowed() {
					t.Error("malformed IP allowed")
					return
				}
			}
		}()
	}
	wg.Wait()
	if rec.count() != 8*200 {
		t.Errorf("%d failures counted, want %d", rec.count(), 8*200)
	}
}

// fakeCompiler compiles every condition to a predicate that fails with err: an
// evaluation error, as the SDK defines it, is a failure (missing data is not an error).
type fakeCompiler struct {
	err error
}

func (c fakeCompiler) CompileBool(string) (adapters.Predicate, error) { return fakePredicate(c), nil }

type fakePredicate fakeCompiler

func (p fakePredicate) Eval(adapters.Attributes) (bool, error) { return false, p.err }
func (p fakePredicate) Attributes() []string                   { return nil }

func TestEvaluationFailureFailsClosed(t *testing.T) {
	for _, action := range []string{"ALLOW", "DENY"} {
		rec := newRecorder()
		p := defaults()
		p.Action, p.Policies = action, []Policy{{Name: "p", Condition: "whatever"}}
		h, err := New(adapters.Env{Compiler: fakeCompiler{err: errors.New("boom")}, Stats: rec}, p)
		if err != nil {
			t.Fatal(err)
		}
		r, _ := h.Authorize(context.Background(), nil, mapAttrs{})
		if rec.count() != 1 || r.Allowed() || r.ValidDuration != 0 {
			t.Errorf("%s: counted %d, allowed %v, valid %v; want a counted, uncached denial", action, rec.count(), r.Allowed(), r.ValidDuration)
		}
	}
}

// TestHeaders: with action ALLOW, an allowed request carries the allowing policy's
// headers and then the handler's allowHeaders, and a denied one none; with action
// DENY, a denial carries the matching policy's headers and an allowed request the
// allowHeaders. Every answer's headers are its own.
func TestHeaders(t *testing.T) {
	hdr := func(kv ...string) []authorization.Header {
		var out []authorization.Header
		for i := 0; i < len(kv); i += 2 {
			out = append(out, authorization.Header{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	policies := []Policy{
		{Name: "admins", Condition: `request.headers["x-role"] == "admin"`, Headers: hdr("x-sluice-policy", "admins", "x-role-checked", "1")},
		{Name: "internal", Condition: `cidr("10.0.0.0/8").containsIP(ip(source.ip))`},
	}
	admin := map[string]any{"request.headers": map[string]string{"x-role": "admin"}}
	internal := map[string]any{"source.ip": "10.1.2.3"}
	outside := map[string]any{"source.ip": "192.0.2.1"}
	tests := []struct {
		name    string
		action  string
		attrs   map[string]any
		allowed bool
		want    []authorization.Header
	}{
		{"ALLOW by a policy with headers", Allow, admin, true, hdr("x-sluice-policy", "admins", "x-role-checked", "1", "x-authz", "rbac")},
		{"ALLOW by a policy without headers", Allow, internal, true, hdr("x-authz", "rbac")},
		{"ALLOW action, denied", Allow, outside, false, nil},
		{"DENY by a policy with headers", Deny, admin, false, hdr("x-sluice-policy", "admins", "x-role-checked", "1")},
		{"DENY by a policy without headers", Deny, internal, false, nil},
		{"DENY action, allowed", Deny, outside, true, hdr("x-authz", "rbac")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := defaults()
			p.Action, p.Policies, p.AllowHeaders = tt.action, policies, hdr("x-authz", "rbac")
			h := mustNew(t, adapters.Env{Compiler: compiler(t)}, p)
			r := mustAuthorize(t, h, tt.attrs)
			if r.Allowed() != tt.allowed {
				t.Fatalf("allowed=%v (%q), want %v", r.Allowed(), r.Message, tt.allowed)
			}
			if !slices.Equal(r.Headers, tt.want) {
				t.Fatalf("headers %v, want %v", r.Headers, tt.want)
			}
			if len(r.Headers) > 0 {
				r.Headers[0].Value = "changed by the caller"
				if again := mustAuthorize(t, h, tt.attrs); !slices.Equal(again.Headers, tt.want) {
					t.Errorf("after the caller changed an answer, the next has headers %v", again.Headers)
				}
			}
		})
	}
}

// TestUpstreamHeaderNames: the names of every header an allowed request may get,
// for the core to remove a client's forged copies of: under ALLOW the policies'
// headers and allowHeaders, under DENY only allowHeaders (the policies' headers go
// to denials). Lower-cased, sorted, each once, in a slice of the caller's own.
func TestUpstreamHeaderNames(t *testing.T) {
	policies := []Policy{
		{Name: "admins", Condition: `request.headers["x-role"] == "admin"`, Headers: []authorization.Header{{Name: "X-Sluice-Policy", Value: "admins"}, {Name: "x-trace", Value: "a", Append: true}}},
		{Name: "readers", Condition: `request.method == "GET"`, Headers: []authorization.Header{{Name: "x-sluice-policy", Value: "readers"}}},
		{Name: "internal", Condition: `cidr("10.0.0.0/8").containsIP(ip(source.ip))`},
	}
	allowHeaders := []authorization.Header{{Name: "X-Authz", Value: "rbac"}, {Name: "x-trace", Value: "b", Append: true}}
	tests := []struct {
		name         string
		action       string
		allowHeaders []authorization.Header
		want         []string
	}{
		{"ALLOW", Allow, allowHeaders, []string{"x-authz", "x-sluice-policy", "x-trace"}},
		{"ALLOW without allowHeaders", Allow, nil, []string{"x-sluice-policy", "x-trace"}},
		{"DENY", Deny, allowHeaders, []string{"x-authz", "x-trace"}},
		{"DENY without allowHeaders", Deny, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := defaults()
			p.Action, p.Policies, p.AllowHeaders = tt.action, policies, tt.allowHeaders
			var h authorization.UpstreamHeaders = mustNew(t, adapters.Env{Compiler: compiler(t)}, p)
			got := h.UpstreamHeaderNames()
			if !slices.Equal(got, tt.want) {
				t.Fatalf("UpstreamHeaderNames() = %q, want %q", got, tt.want)
			}
			if len(got) > 0 {
				got[0] = "changed by the caller"
				if again := h.UpstreamHeaderNames(); !slices.Equal(again, tt.want) {
					t.Errorf("after the caller changed the names, they are %q", again)
				}
			}
		})
	}
}
