package check_test

import (
	"context"
	"maps"
	"strconv"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer/envoy"
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
		}{
			{"an allowed caller reads", call{frontend, "GET", "/items", nil}, codes.OK, 0, "", map[string]string{"x-sluice-caller": "listed"}},
			{"a legacy client is denied", call{frontend, "GET", "/items", map[string]string{"x-client": "legacy"}}, codes.PermissionDenied, 403, "shop/deny-legacy", nil},
			{"a caller not on the list", call{stranger, "GET", "/items", nil}, codes.PermissionDenied, 403, "shop/callers-only", nil},
			{"a write to /admin without the role", call{frontend, "POST", "/admin/users", nil}, codes.PermissionDenied, 403, "shop/admin-paths", nil},
			{"a write to /admin by an admin", call{frontend, "POST", "/admin/users", map[string]string{"x-role": "admin"}}, codes.OK, 0, "",
				map[string]string{"x-sluice-caller": "listed", "x-sluice-policy": "admins"}},
			{"a read of /admin", call{frontend, "GET", "/admin/users", nil}, codes.OK, 0, "", map[string]string{"x-sluice-caller": "listed"}},
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
					}
					if !maps.Equal(got, tt.headers) {
						t.Errorf("round %d, %s: headers added %v, want %v", round, tt.name, got, tt.headers)
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
