package check_test

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
	"github.com/sluicemesh/sluice/mixer/envoy"
	"github.com/sluicemesh/sluice/mixer/registry"
)

type call struct {
	principal, method, path string
	headers                 map[string]string
}

func (c call) request() *authv3.CheckRequest {
	h := map[string]string{"x-request-id": c.path + c.method + c.principal, ":path": c.path}
	for k, v := range c.headers {
		h[k] = v
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: envoy.Address("10.1.0.9", 40000), Principal: c.principal},
		Destination: &authv3.AttributeContext_Peer{Address: envoy.Address("10.1.0.20", 8080), Principal: "spiffe://cluster.local/ns/shop/sa/api"},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: c.method, Path: c.path, Host: "api.shop.svc.cluster.local:8080", Headers: h,
		}},
	}}
}

// headerMapRequest is c's request with its headers in header_map, as Envoy sends
// them with encode_raw_headers: each value an entry of its own, in raw_value. more
// are further headers as name, value pairs, a name possibly repeated.
func (c call) headerMapRequest(more ...string) *authv3.CheckRequest {
	req := c.request()
	h := req.Attributes.Request.Http
	var hvs []*corev3.HeaderValue
	for _, k := range slices.Sorted(maps.Keys(h.Headers)) {
		hvs = append(hvs, &corev3.HeaderValue{Key: k, RawValue: []byte(h.Headers[k])})
	}
	for i := 0; i+1 < len(more); i += 2 {
		hvs = append(hvs, &corev3.HeaderValue{Key: more[i], RawValue: []byte(more[i+1])})
	}
	h.Headers, h.HeaderMap = nil, &corev3.HeaderMap{Headers: hvs}
	return req
}

// upstream describes what an allowed answer does to the upstream request: the
// headers it sets, in order, as name=value, or name+=value for one appended to a
// value (not replacing it); and the names it removes.
func upstream(resp *authv3.CheckResponse) (set, removed []string) {
	ok := resp.GetOkResponse()
	for _, h := range ok.GetHeaders() {
		op := "="
		if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			op = "+="
		}
		set = append(set, h.GetHeader().GetKey()+op+h.GetHeader().GetValue())
	}
	return set, ok.GetHeadersToRemove()
}

const (
	frontend = "spiffe://cluster.local/ns/shop/sa/frontend"
	stranger = "spiffe://cluster.local/ns/other/sa/robot"
)

func TestExtAuthzPolicies(t *testing.T) {
	forListeners(t, func(t *testing.T, listener string) {
		s := startServer(t, nil, "testdata/policy.yaml")
		client := authv3.NewAuthorizationClient(s.via(listener))
		tests := []struct {
			name     string
			c        call
			code     codes.Code
			http     int
			bodyRule string
			// added headers of an allowed request: every allowing handler's
			headers map[string]string
			// headers the allowed request loses: the client's copies of those some
			// handler of the config may add and the answer does not
			removed []string
		}{
			{"an allowed caller reads", call{frontend, "GET", "/items", nil}, codes.OK, 0, "", map[string]string{"x-sluice-caller": "listed"}, []string{"x-sluice-policy"}},
			{"a legacy client is denied", call{frontend, "GET", "/items", map[string]string{"x-client": "legacy"}}, codes.PermissionDenied, 403, "shop/deny-legacy", nil, nil},
			{"a caller not on the list", call{stranger, "GET", "/items", nil}, codes.PermissionDenied, 403, "shop/callers-only", nil, nil},
			{"a write to /admin without the role", call{frontend, "POST", "/admin/users", nil}, codes.PermissionDenied, 403, "shop/admin-paths", nil, nil},
			{"a write to /admin by an admin", call{frontend, "POST", "/admin/users", map[string]string{"x-role": "admin"}}, codes.OK, 0, "",
				map[string]string{"x-sluice-caller": "listed", "x-sluice-policy": "admins"}, nil},
			{"a read of /admin", call{frontend, "GET", "/admin/users", nil}, codes.OK, 0, "", map[string]string{"x-sluice-caller": "listed"}, []string{"x-sluice-policy"}},
		}
		for round := 0; round < 2; round++ { // the second round is answered from the cache
			for _, tt := range tests {
				resp, err := client.Check(context.Background(), tt.c.request())
				if err != nil {
					t.Fatalf("%s: %v", tt.name, err)
				}
				if codes.Code(resp.GetStatus().GetCode()) != tt.code {
					t.Errorf("round %d, %s: %v %q, want %v", round, tt.name, codes.Code(resp.GetStatus().GetCode()), resp.GetStatus().GetMessage(), tt.code)
					continue
				}
				if tt.code == codes.OK {
					ok := resp.GetOkResponse()
					if ok == nil {
						t.Errorf("%s: no OK HTTP response", tt.name)
						continue
					}
					got := map[string]string{}
					for _, h := range ok.GetHeaders() {
						got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
						if h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
							t.Errorf("round %d, %s: header %s is appended to the client's", round, tt.name, h.GetHeader().GetKey())
						}
					}
					if !maps.Equal(got, tt.headers) {
						t.Errorf("round %d, %s: headers added %v, want %v", round, tt.name, got, tt.headers)
					}
					if removed := ok.GetHeadersToRemove(); !slices.Equal(removed, tt.removed) {
						t.Errorf("round %d, %s: headers removed %q, want %q", round, tt.name, removed, tt.removed)
					}
					continue
				}
				d := resp.GetDeniedResponse()
				if int(d.GetStatus().GetCode()) != tt.http || !strings.Contains(d.GetBody(), "rule "+tt.bodyRule+":") {
					t.Errorf("%s: denied with %d %q, want %d naming rule %s", tt.name, d.GetStatus().GetCode(), d.GetBody(), tt.http, tt.bodyRule)
				}
			}
		}
		f, err := loadtest.Scrape(context.Background(), s.url)
		if err != nil {
			t.Fatal(err)
		}
		if hits := f.Sum("sluice_check_cache_hits_total", nil); hits != float64(len(tests)) {
			t.Errorf("%v cache hits, want %d (each request once more)", hits, len(tests))
		}
		// x-request-id differs between requests, but no rule reads it: still a hit.
		c := call{frontend, "GET", "/items", map[string]string{"x-request-id": "fresh"}}
		if _, err := client.Check(context.Background(), c.request()); err != nil {
			t.Fatal(err)
		}
		f, _ = loadtest.Scrape(context.Background(), s.url)
		if hits := f.Sum("sluice_check_cache_hits_total", nil); hits != float64(len(tests)+1) {
			t.Errorf("a header no rule reads changed the cache key")
		}
	})
}

// TestExtAuthzRuleErrors: a rule whose match or instance fails on a request's
// values (not a missing attribute) denies it, naming the rule, counted, and never
// from the cache; a missing attribute still reads as no match or no value.
func TestExtAuthzRuleErrors(t *testing.T) {
	forListeners(t, func(t *testing.T, listener string) {
		s := startServer(t, nil, "testdata/evalerrors.yaml")
		client := authv3.NewAuthorizationClient(s.via(listener))
		tests := []struct {
			name    string
			c       call
			code    codes.Code
			rule    string
			message string // in the denial's body
			failed  bool   // counted as a rule error
		}{
			{"a blocked account", call{frontend, "GET", "/accounts/acme", nil}, codes.PermissionDenied, "shop/deny-accounts", "", false},
			{"another account", call{frontend, "GET", "/accounts/zeta", nil}, codes.OK, "", "", false},
			{"no account in the path", call{frontend, "GET", "/accounts", nil}, codes.PermissionDenied, "shop/deny-accounts", "instance shop/account failed: value", true},
			{"an old client", call{frontend, "GET", "/items", map[string]string{"x-version": "2"}}, codes.PermissionDenied, "shop/old-versions", "upgrade your client", false},
			{"a new client", call{frontend, "GET", "/items", map[string]string{"x-version": "7"}}, codes.OK, "", "", false},
			{"a version that is not a number", call{frontend, "GET", "/items", map[string]string{"x-version": "abc"}}, codes.PermissionDenied, "shop/old-versions", "match failed", true},
			{"no version at all", call{frontend, "GET", "/items", nil}, codes.OK, "", "", false},
			{"a tier", call{frontend, "GET", "/tiers", map[string]string{"x-tier": "2"}}, codes.OK, "", "", false},
			{"no tier: dimension unknown", call{frontend, "GET", "/tiers", nil}, codes.OK, "", "", false},
			{"a tier that is not a number", call{frontend, "GET", "/tiers", map[string]string{"x-tier": "gold"}}, codes.PermissionDenied, "shop/tier-quotas", "dimension tier", true},
		}
		failures := 0
		for round := 0; round < 2; round++ { // a failed rule is evaluated again: never cached
			for _, tt := range tests {
				resp, err := client.Check(context.Background(), tt.c.request())
				if err != nil {
					t.Fatalf("%s: %v", tt.name, err)
				}
				if got := codes.Code(resp.GetStatus().GetCode()); got != tt.code {
					t.Errorf("round %d, %s: %v %q, want %v", round, tt.name, got, resp.GetStatus().GetMessage(), tt.code)
					continue
				}
				if tt.failed {
					failures++
				}
				if tt.code == codes.OK {
					// No handler of this config adds headers: nothing to remove.
					if set, removed := upstream(resp); len(set)+len(removed) > 0 {
						t.Errorf("round %d, %s: headers set %q, removed %q, want none", round, tt.name, set, removed)
					}
					continue
				}
				d := resp.GetDeniedResponse()
				if d.GetStatus().GetCode() != 403 || !strings.Contains(d.GetBody(), "rule "+tt.rule+":") || !strings.Contains(d.GetBody(), tt.message) {
					t.Errorf("round %d, %s: denied with %d %q, want 403 naming rule %s and %q", round, tt.name, d.GetStatus().GetCode(), d.GetBody(), tt.rule, tt.message)
				}
			}
		}
		f, err := loadtest.Scrape(context.Background(), s.url)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.Sum("sluice_check_rule_errors_total", nil); got != float64(failures) {
			t.Errorf("sluice_check_rule_errors_total = %v, want %d", got, failures)
		}
		if got := f.Sum("sluice_check_requests_total", map[string]string{"outcome": "denied"}); got != float64(2*5) {
			t.Errorf("denied outcomes = %v, want %d", got, 2*5)
		}
	})
}

// TestExtAuthzCacheKeys: requests that a policy answers differently never share a
// cached answer, whatever in an expression tells them apart: has() on a map
// present without the key (a map absent altogether does not match), or attributes
// read inside a message literal, by a rule's match or an rbac policy. Each case's
// requests go in order, the first priming the cache for the next.
func TestExtAuthzCacheKeys(t *testing.T) {
	type ask struct {
		path       string
		headers    map[string]string
		extensions map[string]string
		code       codes.Code
	}
	public := map[string]string{"route": "public"}
	tests := []struct {
		name string
		asks []ask
	}{
		{"no extensions, then extensions without the tenant", []ask{
			{"/tenants/a", nil, nil, codes.OK},
			{"/tenants/a", nil, public, codes.PermissionDenied},
		}},
		{"extensions without the tenant, then none", []ask{
			{"/tenants/b", nil, public, codes.PermissionDenied},
			{"/tenants/b", nil, nil, codes.OK},
		}},
		{"the tenant, then extensions without it", []ask{
			{"/tenants/c", nil, map[string]string{"tenant": "acme"}, codes.OK},
			{"/tenants/c", nil, public, codes.PermissionDenied},
		}},
		{"a header, then none, tested with in", []ask{
			{"/in", map[string]string{"x-role": "guest"}, nil, codes.OK},
			{"/in", map[string]string{"x-other": "1"}, nil, codes.PermissionDenied},
			{"/in", map[string]string{"x-role": "admin"}, nil, codes.OK},
		}},
		{"a header inside a wrapper literal", []ask{
			{"/wrapped", map[string]string{"x-client": "modern"}, nil, codes.OK},
			{"/wrapped", map[string]string{"x-client": "legacy"}, nil, codes.PermissionDenied},
		}},
		{"a header inside a Struct literal, in an rbac policy", []ask{
			{"/struct", map[string]string{"x-client": "modern"}, nil, codes.OK},
			{"/struct", map[string]string{"x-client": "legacy"}, nil, codes.PermissionDenied},
		}},
	}
	forListeners(t, func(t *testing.T, listener string) {
		s := startServer(t, nil, "testdata/cache-keys.yaml")
		client := authv3.NewAuthorizationClient(s.via(listener))
		for _, tt := range tests {
			for i, a := range tt.asks {
				req := call{frontend, "GET", a.path, a.headers}.request()
				req.Attributes.ContextExtensions = a.extensions
				resp, err := client.Check(context.Background(), req)
				if err != nil {
					t.Fatalf("%s, request %d: %v", tt.name, i, err)
				}
				if got := codes.Code(resp.GetStatus().GetCode()); got != a.code {
					t.Errorf("%s, request %d: %v %q, want %v", tt.name, i, got, resp.GetStatus().GetMessage(), a.code)
				}
			}
		}
	})
}

func TestExtAuthzBadInput(t *testing.T) {
	forListeners(t, func(t *testing.T, listener string) {
		s := startServer(t, nil, "testdata/policy.yaml")
		client := authv3.NewAuthorizationClient(s.via(listener))
		_, err := client.Check(context.Background(), &authv3.CheckRequest{})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("no attributes: %v", err)
		}
		huge := map[string]string{}
		for i := 0; i < 5000; i++ {
			huge["x-h"+strconv.Itoa(i)] = "v"
		}
		_, err = client.Check(context.Background(), call{frontend, "GET", "/", huge}.request())
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("5000 headers: %v", err)
		}
		// A request with no HTTP part at all is decided on what it has.
		resp, err := client.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{}})
		if err != nil || resp.GetStatus() == nil {
			t.Errorf("empty attributes: %v %v", resp, err)
		}
		// Bytes that are not a CheckRequest (a length past the end of the message)
		// get INTERNAL from both listeners, as grpc-go answers an undecodable request.
		var out []byte
		err = s.via(listener).Invoke(context.Background(), "/envoy.service.auth.v3.Authorization/Check",
			[]byte{0x0a, 0x40, 0x01}, &out, grpc.ForceCodec(rawCodec{}))
		if status.Code(err) != codes.Internal {
			t.Errorf("undecodable request: %v", err)
		}
	})
}

// TestExtAuthzHeaderBound: the bound on a request's headers holds wherever Envoy
// puts them, in the headers map or in header_map (encode_raw_headers), where every
// entry counts, a repeated header's too; a request over it is refused as invalid.
func TestExtAuthzHeaderBound(t *testing.T) {
	forListeners(t, func(t *testing.T, listener string) {
		s := startServer(t, nil, "testdata/policy.yaml")
		client := authv3.NewAuthorizationClient(s.via(listener))
		c := call{frontend, "GET", "/items", nil}
		// call.request adds x-request-id and :path.
		distinct := func(n int) []string {
			var hs []string
			for i := range n - 2 {
				hs = append(hs, "x-h"+strconv.Itoa(i), "v")
			}
			return hs
		}
		repeated := func(n int) []string {
			var hs []string
			for range n - 2 {
				hs = append(hs, "x-h", "v")
			}
			return hs
		}
		asMap := func(hs []string) map[string]string {
			m := map[string]string{}
			for i := 0; i+1 < len(hs); i += 2 {
				m[hs[i]] = hs[i+1]
			}
			return m
		}
		tests := []struct {
			name string
			req  *authv3.CheckRequest
			code codes.Code
		}{
			{"1024 headers", call{frontend, "GET", "/items", asMap(distinct(1024))}.request(), codes.OK},
			{"2002 headers", call{frontend, "GET", "/items", asMap(distinct(2002))}.request(), codes.InvalidArgument},
			{"1024 in header_map", c.headerMapRequest(distinct(1024)...), codes.OK},
			{"1025 in header_map", c.headerMapRequest(distinct(1025)...), codes.InvalidArgument},
			{"2002 in header_map", c.headerMapRequest(distinct(2002)...), codes.InvalidArgument},
			{"one header 2000 times in header_map", c.headerMapRequest(repeated(2002)...), codes.InvalidArgument},
		}
		invalid := 0
		for _, tt := range tests {
			resp, err := client.Check(context.Background(), tt.req)
			got := status.Code(err)
			if err == nil {
				got = codes.Code(resp.GetStatus().GetCode())
			}
			if got != tt.code {
				t.Errorf("%s: %v %v, want %v", tt.name, got, err, tt.code)
			}
			if tt.code == codes.InvalidArgument {
				invalid++
				if err == nil || !strings.Contains(err.Error(), "more than 1024") {
					t.Errorf("%s: %v", tt.name, err)
				}
			}
		}
		f, err := loadtest.Scrape(context.Background(), s.url)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.Sum("sluice_check_requests_total", map[string]string{"service": "ext_authz", "outcome": "invalid"}); got != float64(invalid) {
			t.Errorf("invalid outcomes = %v, want %d", got, invalid)
		}
	})
}

// TestExtAuthzForgedHeaders: a client cannot forge the headers a policy adds to
// tell the service behind why it let the request in. Every allowed answer sets its
// own headers over the client's (a header appends only to one the same answer set)
// and removes the client's copies of the others that any handler of the config may
// add upstream, a handler no rule sends to included; a denial's headers go to the
// client and guard nothing. Cached answers do the same, on both listeners. The
// headers come in header_map, where a repeated header is seen whole.
func TestExtAuthzForgedHeaders(t *testing.T) {
	// Every request forges each header some handler may add upstream, and one that
	// only a denial gets.
	forged := []string{"x-sluice-policy", "admins", "X-Sluice-Caller", "forged", "x-sluice-trace", "forged",
		"x-sluice-debug", "off", "x-sluice-unused", "1", "x-debug-refused", "false"}
	guarded := []string{"x-sluice-caller", "x-sluice-debug", "x-sluice-policy", "x-sluice-trace", "x-sluice-unused"}
	tests := []struct {
		name    string
		c       call
		headers []string // further request headers: name, value pairs
		code    codes.Code
		set     []string // see upstream
		removed []string
	}{
		{"an admin", call{frontend, "POST", "/admin/users", nil}, []string{"x-role", "admin"}, codes.OK,
			[]string{"X-Sluice-Caller=listed", "x-sluice-trace=list", "x-sluice-policy=admins", "x-sluice-trace+=rbac"},
			[]string{"x-sluice-debug", "x-sluice-unused"}},
		{"a reader", call{frontend, "GET", "/items", nil}, nil, codes.OK,
			[]string{"X-Sluice-Caller=listed", "x-sluice-trace=list", "x-sluice-policy=readers"},
			[]string{"x-sluice-debug", "x-sluice-unused"}},
		{"a health check: no header set", call{stranger, "POST", "/healthz", nil}, nil, codes.OK, nil, guarded},
		{"a debug request", call{stranger, "GET", "/debug/vars", nil}, []string{"x-debug", "0"}, codes.OK,
			[]string{"x-sluice-debug=off", "x-sluice-policy=readers"},
			[]string{"x-sluice-caller", "x-sluice-trace", "x-sluice-unused"}},
		{"x-debug: 1", call{stranger, "GET", "/debug/vars", nil}, []string{"x-debug", "1"}, codes.PermissionDenied, nil, nil},
		{"x-debug: 1 then x-debug: 0", call{stranger, "GET", "/debug/vars", nil}, []string{"x-debug", "1", "x-debug", "0"}, codes.PermissionDenied, nil, nil},
		{"x-debug: 0 then X-Debug: 1", call{stranger, "GET", "/debug/vars", nil}, []string{"x-debug", "0", "X-Debug", "1"}, codes.PermissionDenied, nil, nil},
	}
	forListeners(t, func(t *testing.T, listener string) {
		s := startServer(t, nil, "testdata/upstream-headers.yaml")
		client := authv3.NewAuthorizationClient(s.via(listener))
		for round := 0; round < 2; round++ { // the second round is answered from the cache
			for _, tt := range tests {
				resp, err := client.Check(context.Background(), tt.c.headerMapRequest(append(slices.Clone(forged), tt.headers...)...))
				if err != nil {
					t.Fatalf("%s: %v", tt.name, err)
				}
				if got := codes.Code(resp.GetStatus().GetCode()); got != tt.code {
					t.Errorf("round %d, %s: %v %q, want %v", round, tt.name, got, resp.GetStatus().GetMessage(), tt.code)
					continue
				}
				if tt.code != codes.OK {
					d := resp.GetDeniedResponse()
					if !strings.Contains(d.GetBody(), "rule shop/b-debug:") || len(d.GetHeaders()) != 2 || d.GetHeaders()[1].GetHeader().GetKey() != "x-debug-refused" {
						t.Errorf("round %d, %s: denied with %q and headers %v, want rule shop/b-debug and x-debug-refused", round, tt.name, d.GetBody(), d.GetHeaders())
					}
					continue
				}
				set, removed := upstream(resp)
				if !slices.Equal(set, tt.set) || !slices.Equal(removed, tt.removed) {
					t.Errorf("round %d, %s: sets %q and removes %q, want %q and %q", round, tt.name, set, removed, tt.set, tt.removed)
				}
			}
		}
		f, err := loadtest.Scrape(context.Background(), s.url)
		if err != nil {
			t.Fatal(err)
		}
		if hits := f.Sum("sluice_check_cache_hits_total", nil); hits != float64(len(tests)) {
			t.Errorf("%v cache hits, want %d (each request once more)", hits, len(tests))
		}
	})
}

// TestExtAuthzGuardFollowsConfig: the names an allowed answer removes are those of
// the running config: a reload that drops the only handler adding a header stops
// removing it, on both listeners.
func TestExtAuthzGuardFollowsConfig(t *testing.T) {
	data, err := os.ReadFile("testdata/upstream-headers.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cut := strings.Index(string(data), "---\napiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata: {name: unused,")
	if cut < 0 {
		t.Fatal("testdata/upstream-headers.yaml no longer ends with the handler unused")
	}
	var dir string
	s := startServer(t, func(o *mixer.Options) { dir = o.ConfigDir }, "testdata/upstream-headers.yaml")
	health := call{stranger, "POST", "/healthz", nil}.headerMapRequest("x-sluice-unused", "1")
	removes := func(want ...string) {
		t.Helper()
		for _, listener := range []string{"grpc", "check"} {
			resp, err := authv3.NewAuthorizationClient(s.via(listener)).Check(context.Background(), health)
			if err != nil {
				t.Fatal(err)
			}
			if _, removed := upstream(resp); !slices.Equal(removed, want) {
				t.Errorf("%s: removes %q, want %q", listener, removed, want)
			}
		}
	}
	removes("x-sluice-caller", "x-sluice-debug", "x-sluice-policy", "x-sluice-trace", "x-sluice-unused")
	if f, err := loadtest.Scrape(context.Background(), s.url); err != nil || f.Sum("sluice_check_cache_entries", nil) == 0 {
		t.Fatalf("no cached answer before the reload (%v)", err)
	}

	tmp := filepath.Join(dir, ".upstream-headers.yaml.tmp")
	if err := os.WriteFile(tmp, data[:cut], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "upstream-headers.yaml")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		f, err := loadtest.Scrape(context.Background(), s.url)
		if err != nil {
			t.Fatal(err)
		}
		if f.Sum("sluice_config_version", nil) == 2 {
			// The old config's cached answers are gone with it, before any check
			// builds the new config's cache.
			if n := f.Sum("sluice_check_cache_entries", nil); n != 0 {
				t.Errorf("sluice_check_cache_entries = %v after the reload, want 0", n)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the edited config was not applied within 20s")
		}
	}
	removes("x-sluice-caller", "x-sluice-debug", "x-sluice-policy", "x-sluice-trace")
}

// rawCodec sends and receives messages as the bytes given.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

func TestExtAuthzQuota(t *testing.T) {
	forListeners(t, func(t *testing.T, listener string) {
		s := startServer(t, nil, "testdata/policy.yaml", "testdata/quota.yaml")
		client := authv3.NewAuthorizationClient(s.via(listener))
		ask := func(user string) (*authv3.CheckResponse, error) {
			return client.Check(context.Background(), call{frontend, "GET", "/items", map[string]string{"x-user": user}}.request())
		}
		for i := 0; i < 3; i++ {
			if r, err := ask("alice"); err != nil || r.GetStatus().GetCode() != 0 {
				t.Fatalf("request %d of alice: %v %v", i, r.GetStatus(), err)
			}
		}
		// The policy answer is cached, the quota is not: the fourth is refused.
		r, err := ask("alice")
		if err != nil || codes.Code(r.GetStatus().GetCode()) != codes.ResourceExhausted || r.GetDeniedResponse().GetStatus().GetCode() != 429 {
			t.Fatalf("fourth request of alice: %v %v", r, err)
		}
		if !strings.Contains(r.GetDeniedResponse().GetBody(), "rule shop/user-quotas") {
			t.Errorf("quota denial body %q", r.GetDeniedResponse().GetBody())
		}
		marked := false
		for _, h := range r.GetDeniedResponse().GetHeaders() {
			marked = marked || (h.GetHeader().GetKey() == "x-envoy-ratelimited" && h.GetHeader().GetValue() == "true")
		}
		if !marked {
			t.Errorf("quota denial headers %v: no x-envoy-ratelimited, so the caller's sidecar retries it", r.GetDeniedResponse().GetHeaders())
		}
		for i := 0; i < 10; i++ {
			if r, _ := ask("vip"); r.GetStatus().GetCode() != 0 {
				t.Fatalf("the vip override did not apply at request %d", i)
			}
		}
		// A new minute brings three more.
		s.clock.Advance(60_000_000_000)
		if r, _ := ask("alice"); r.GetStatus().GetCode() != 0 {
			t.Error("the quota did not reset after its window")
		}
	})
}

// TestExtAuthzSourceNamespaceFromCertificate: an allow-list of source namespaces
// admits a caller whose certificate names an allowed namespace, and refuses one
// whose certificate names another, though it sends an x-envoy-peer-metadata header
// (which any client can write) claiming an allowed namespace.
func TestExtAuthzSourceNamespaceFromCertificate(t *testing.T) {
	claim, err := envoy.EncodePeerMetadata(&registry.Workload{Name: "frontend", Namespace: "shop", Instance: "frontend-x", ServiceAccount: "frontend"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		c    call
		code codes.Code
	}{
		{"a caller certified in shop", call{frontend, "GET", "/items", nil}, codes.OK},
		{"a caller certified elsewhere", call{stranger, "GET", "/items", nil}, codes.PermissionDenied},
		{"a caller certified elsewhere claiming shop in the peer header", call{stranger, "GET", "/items", map[string]string{"x-envoy-peer-metadata": claim}}, codes.PermissionDenied},
	}
	forListeners(t, func(t *testing.T, listener string) {
		s := startServer(t, nil, "testdata/source-namespace.yaml")
		client := authv3.NewAuthorizationClient(s.via(listener))
		for _, tt := range tests {
			resp, err := client.Check(context.Background(), tt.c.request())
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if got := codes.Code(resp.GetStatus().GetCode()); got != tt.code {
				t.Errorf("%s: %v %q, want %v", tt.name, got, resp.GetStatus().GetMessage(), tt.code)
			}
		}
	})
}

// TestUnreadRequestsCounted: a request refused while it is read, before a check
// sees it (over the message bound, or bytes that are not the request), is counted
// on both listeners: grpc-go reads the gRPC port's itself, so without the port's
// own count such a refusal left no trace.
func TestUnreadRequestsCounted(t *testing.T) {
	const bound = 64 << 10
	tests := []struct {
		name, path, service string
		msg                 []byte
		code                codes.Code
		// metric and labels are where the refusal is counted, per listener.
		metric map[string]string
		labels map[string]map[string]string
	}{
		{
			name: "ext_authz undecodable", path: "/envoy.service.auth.v3.Authorization/Check",
			msg: []byte{0x0a, 0x40, 0x01}, code: codes.Internal,
			metric: map[string]string{"grpc": "sluice_check_requests_total", "check": "sluice_check_requests_total"},
			labels: map[string]map[string]string{
				"grpc":  {"service": "ext_authz", "outcome": "invalid"},
				"check": {"service": "ext_authz", "outcome": "invalid"},
			},
		},
		{
			name: "ratelimit undecodable", path: "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
			msg: []byte{0x0a, 0x01, 0xff}, code: codes.Internal,
			metric: map[string]string{"grpc": "sluice_check_requests_total", "check": "sluice_check_requests_total"},
			labels: map[string]map[string]string{
				"grpc":  {"service": "ratelimit", "outcome": "invalid"},
				"check": {"service": "ratelimit", "outcome": "invalid"},
			},
		},
		{
			name: "ext_authz too large", path: "/envoy.service.auth.v3.Authorization/Check",
			msg: make([]byte, bound+1), code: codes.ResourceExhausted,
			metric: map[string]string{"grpc": "sluice_check_requests_total", "check": "sluice_h2unary_errors_total"},
			labels: map[string]map[string]string{
				"grpc":  {"service": "ext_authz", "outcome": "too_large"},
				"check": {"reason": "too_large"},
			},
		},
		{
			name: "ratelimit too large", path: "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
			msg: make([]byte, bound+1), code: codes.ResourceExhausted,
			metric: map[string]string{"grpc": "sluice_check_requests_total", "check": "sluice_h2unary_errors_total"},
			labels: map[string]map[string]string{
				"grpc":  {"service": "ratelimit", "outcome": "too_large"},
				"check": {"reason": "too_large"},
			},
		},
	}
	forListeners(t, func(t *testing.T, listener string) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				s := startServer(t, func(o *mixer.Options) { o.MaxRecvMsgSize = bound }, "testdata/policy.yaml")
				var out []byte
				err := s.via(listener).Invoke(context.Background(), tt.path, tt.msg, &out, grpc.ForceCodec(rawCodec{}))
				if status.Code(err) != tt.code {
					t.Fatalf("answer %v, want %v", err, tt.code)
				}
				// On the gRPC port the count may trail the answer: grpc-go writes the
				// status of a request it could not read before it returns the error
				// to the handler that counts it.
				deadline := time.Now().Add(5 * time.Second)
				for {
					f, err := loadtest.Scrape(context.Background(), s.url)
					if err != nil {
						t.Fatal(err)
					}
					got := f.Sum(tt.metric[listener], tt.labels[listener])
					if got == 1 {
						break
					}
					if got > 1 || time.Now().After(deadline) {
						t.Fatalf("%s %v = %v, want 1", tt.metric[listener], tt.labels[listener], got)
					}
					time.Sleep(10 * time.Millisecond)
				}
			})
		}
	})
}

// TestExtAuthzCacheOff: with a negative cache size every policy answer is decided
// anew, and none is counted as a hit or kept.
func TestExtAuthzCacheOff(t *testing.T) {
	s := startServer(t, func(o *mixer.Options) { o.CheckCacheSize = -1 }, "testdata/policy.yaml")
	client := authv3.NewAuthorizationClient(s.via("grpc"))
	for round := range 3 {
		resp, err := client.Check(context.Background(), call{frontend, "GET", "/items", nil}.request())
		if err != nil {
			t.Fatal(err)
		}
		if code := codes.Code(resp.GetStatus().GetCode()); code != codes.OK {
			t.Fatalf("round %d: %v, want OK", round, code)
		}
	}
	f, err := loadtest.Scrape(context.Background(), s.url)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sluice_check_cache_hits_total", "sluice_check_cache_entries"} {
		if n := f.Sum(name, nil); n != 0 {
			t.Errorf("%s = %v with the cache off", name, n)
		}
	}
}
