package check_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"

	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
)

// TestFailPolicyAnswers: with the quota backend down, the answers its fail policy
// makes say so instead of describing a window nobody counted. A rate limit allowed
// by the open policy claims no limit, remaining or reset, and adds no RateLimit-*
// headers (a client would read them as its real budget); one denied by the closed
// policy is over its limit with a retry in a second. An ext_authz quota denied by
// the closed policy says its backend failed, not that it is exhausted. Each is
// counted under its own result.
func TestFailPolicyAnswers(t *testing.T) {
	for _, policy := range []string{"open", "closed"} {
		t.Run(policy, func(t *testing.T) {
			forListeners(t, func(t *testing.T, listener string) {
				// Port 1 refuses at once: every decision fails and goes to the policy.
				handlers := fmt.Sprintf(`apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: quota, namespace: sluice-system}
spec:
  adapter: redisquota
  params: {redisServerUrl: "127.0.0.1:1", failPolicy: %[1]s}
---
apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: user-quota, namespace: shop}
spec:
  adapter: redisquota
  params:
    redisServerUrl: "127.0.0.1:1"
    failPolicy: %[1]s
    quotas: [{name: per-user, maxAmount: 3, validDuration: 1m}]
`, policy)
				paths := writeConfig(t, map[string]string{
					"handlers.yaml": handlers,
					"rule.yaml":     readmeTestQuotaRule,
					"limits.yaml":   "domain: fp\ndescriptors:\n- key: user\n  rate_limit: {unit: minute, requests_per_unit: 10}\n",
				})
				s := startServer(t, func(o *mixer.Options) { o.RateLimitHeaders = true }, paths...)
				ctx := context.Background()

				rl, err := rlsv3.NewRateLimitServiceClient(s.via(listener)).ShouldRateLimit(ctx,
					&rlsv3.RateLimitRequest{Domain: "fp", Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("user", "a")}})
				if err != nil {
					t.Fatal(err)
				}
				st := rl.GetStatuses()[0]
				switch policy {
				case "open":
					if rl.GetOverallCode() != rlsv3.RateLimitResponse_OK || st.GetCurrentLimit() != nil || st.GetLimitRemaining() != 0 ||
						st.GetDurationUntilReset() != nil || len(rl.GetResponseHeadersToAdd()) != 0 {
						t.Errorf("rate limit allowed by the open policy: %v", rl)
					}
				case "closed":
					if rl.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT || st.GetCurrentLimit().GetRequestsPerUnit() != 10 ||
						st.GetDurationUntilReset().GetSeconds() != 1 {
						t.Errorf("rate limit denied by the closed policy: %v", rl)
					}
				}

				resp, err := authv3.NewAuthorizationClient(s.via(listener)).Check(ctx, call{frontend, "GET", "/items", map[string]string{"x-user": "a"}}.request())
				if err != nil {
					t.Fatal(err)
				}
				code := codes.Code(resp.GetStatus().GetCode())
				switch policy {
				case "open":
					if code != codes.OK {
						t.Errorf("ext_authz quota under the open policy: %v %q", code, resp.GetStatus().GetMessage())
					}
				case "closed":
					body := resp.GetDeniedResponse().GetBody()
					if code != codes.ResourceExhausted || resp.GetDeniedResponse().GetStatus().GetCode() != 429 ||
						!strings.Contains(body, "its backend failed") || strings.Contains(body, "exhausted") {
						t.Errorf("ext_authz quota under the closed policy: %v %q", code, body)
					}
				}

				f, err := loadtest.Scrape(ctx, s.url)
				if err != nil {
					t.Fatal(err)
				}
				if n := f.Sum("sluice_ratelimit_descriptors_total", map[string]string{"domain": "fp", "result": "fail_" + policy}); n != 1 {
					t.Errorf("sluice_ratelimit_descriptors_total{result=fail_%s} = %v, want 1", policy, n)
				}
			})
		})
	}
}
