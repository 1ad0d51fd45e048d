package config_test

import (
	"strings"
	"testing"
)

// quotaConfig sends a quota instance with one dimension, user, to a memquota handler
// whose quota has an override; line 20 is the override's dimensions.
const quotaConfig = `apiVersion: sluice.dev/v1alpha1
kind: Instance
metadata: {name: per-user, namespace: shop}
spec:
  template: quota
  params:
    dimensions: {user: 'request.headers["x-user"]'}
---
apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: user-quota, namespace: shop}
spec:
  adapter: memquota
  params:
    quotas:
    - name: per-user
      maxAmount: 100
      validDuration: 1m
      overrides:
      - dimensions: {user: batch-job}
        maxAmount: 10
---
apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: quotas, namespace: shop}
spec:
  actions: [{handler: user-quota, instances: [per-user]}]
`

const (
	rateLimitFile = "domain: api\ndescriptors:\n- key: user\n  rate_limit: {unit: minute, requests_per_unit: 5}\n"
	quotaDisabled = "apiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata:\n  name: quota\n  namespace: sluice-system\n  annotations: {sluice.dev/disabled: \"true\"}\nspec: {adapter: memquota}\n"
	quotaRBAC     = "apiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata: {name: quota, namespace: sluice-system}\nspec:\n  adapter: rbac\n  params: {policies: [{name: a, condition: 'true'}]}\n"
	quotaRedis    = "apiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata: {name: quota, namespace: sluice-system}\nspec:\n  adapter: redisquota\n  params: {redisServerUrl: 'redis:6379'}\n"
)

// TestCheckPathMistakes: mistakes in the check path's config that would otherwise
// load and then fail, or quietly do nothing, on every request are refused at load
// with the file and line of the mistake, the field, and what is wrong.
func TestCheckPathMistakes(t *testing.T) {
	rep := func(s, old, new string) string {
		t.Helper()
		if !strings.Contains(s, old) {
			t.Fatalf("%q not in the config", old)
		}
		return strings.Replace(s, old, new, 1)
	}
	tests := []struct {
		name  string
		files map[string]string
		want  string // "" when the config loads
	}{
		// The rate-limit service counts with sluice-system/quota: without it, or
		// with an adapter that counts no quotas, every rate-limit request failed.
		{"rate limits with the quota handler disabled", map[string]string{"rl.yaml": rateLimitFile, "q.yaml": quotaDisabled},
			`q.yaml:1: handler sluice-system/quota is disabled, but the rate-limit service counts domain "api" (`},
		{"rate limits with the quota handler an rbac handler", map[string]string{"rl.yaml": rateLimitFile, "q.yaml": quotaRBAC},
			`q.yaml:5: handler sluice-system/quota has adapter rbac, but the rate-limit service counts domain "api" (`},
		{"the quota handler disabled without rate limits", map[string]string{"q.yaml": quotaDisabled}, ""},
		{"rate limits counted in Redis", map[string]string{"rl.yaml": rateLimitFile, "q.yaml": quotaRedis}, ""},

		// An override on a dimension the instance does not have never applied.
		{"an override on the instance's dimension", map[string]string{"a.yaml": quotaConfig}, ""},
		{"an override on a misspelt dimension", map[string]string{"a.yaml": rep(quotaConfig, "{user: batch-job}", "{usr: batch-job}")},
			`a.yaml:20: params.quotas[0].overrides[0].dimensions.usr: quota instance shop/per-user has no dimension "usr" (it has user)`},
		{"an override of redisquota on a misspelt dimension", map[string]string{"a.yaml": rep(rep(quotaConfig, "{user: batch-job}", "{usr: batch-job}"),
			"adapter: memquota\n  params:\n", "adapter: redisquota\n  params:\n    redisServerUrl: redis:6379\n")},
			`a.yaml:21: params.quotas[0].overrides[0].dimensions.usr: quota instance shop/per-user has no dimension "usr"`},
		{"an override for an instance without dimensions", map[string]string{"a.yaml": rep(quotaConfig, "    dimensions: {user: 'request.headers[\"x-user\"]'}\n", "    {}\n")},
			`a.yaml:20: params.quotas[0].overrides[0].dimensions.user: quota instance shop/per-user has no dimension "user" (it has no dimensions)`},

		// redis.ParseURL takes any port number; the handler then failed to dial on
		// every request, which failPolicy open let through.
		{"a Redis URL whose port is out of range", map[string]string{"rl.yaml": rateLimitFile, "q.yaml": rep(quotaRedis, "'redis:6379'", "'redis://redis:65536'")},
			`q.yaml:6: params.redisServerUrl: "redis:65536" is not host:port`},

		// Values of the wrong type are named by their field and in the config's
		// terms, not by Go's types ("cannot unmarshal !!str `ten` into uint32").
		{"requests_per_unit not a number", map[string]string{"rl.yaml": "domain: api\ndescriptors:\n- key: user\n  rate_limit: {unit: minute, requests_per_unit: ten}\n"},
			`rl.yaml:4: descriptors[0].rate_limit.requests_per_unit: "ten" is not a whole number from 0 to 4294967295`},
		{"requests_per_unit negative", map[string]string{"rl.yaml": "domain: api\ndescriptors:\n- key: user\n  rate_limit:\n    unit: minute\n    requests_per_unit: -5\n"},
			`rl.yaml:6: descriptors[0].rate_limit.requests_per_unit: -5 is not a whole number from 0 to 4294967295`},
		{"descriptors a mapping", map[string]string{"rl.yaml": "domain: api\ndescriptors:\n  key: user\n"},
			`rl.yaml:3: descriptors: a mapping is not a list`},
		{"a long value cut short by yaml", map[string]string{"rl.yaml": "domain: api\ndescriptors:\n- key: user\n  shadow_mode: yes, please do\n"},
			`rl.yaml:4: descriptors[0].shadow_mode: "yes, please do" is not true or false`},
		{"a duration without a unit", map[string]string{"a.yaml": rep(quotaConfig, "validDuration: 1m", "validDuration: 60")},
			`a.yaml:18: quotas[0].validDuration: 60 is not a duration (a number and a unit: 500ms, 30s, 1m, 1h)`},
		{"maxAmount not a number", map[string]string{"a.yaml": rep(quotaConfig, "maxAmount: 100", "maxAmount: lots")},
			`a.yaml:17: quotas[0].maxAmount: "lots" is not a whole number`},
		{"instances not a list", map[string]string{"a.yaml": rep(quotaConfig, "instances: [per-user]", "instances: per-user")},
			`a.yaml:27: actions[0].instances: "per-user" is not a list`},
		// Written inline, the value and the mappings around it share a line: the
		// line cannot tell which is wrong, and no field is named rather than the
		// wrong one (actions[0], which is a mapping as it should be).
		{"instances a mapping, written inline", map[string]string{"a.yaml": rep(quotaConfig, "instances: [per-user]", "instances: {a: per-user}")},
			`a.yaml:27: a mapping is not a list`},
		{"a rate limit's field a mapping, written inline", map[string]string{"rl.yaml": "domain: api\ndescriptors:\n- key: user\n  rate_limit: {unit: minute, requests_per_unit: 5, name: {a: b}}\n"},
			`rl.yaml:4: a mapping is not a string`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeDir(t, tt.files)
			_, err := loader(t, dir).Load()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("loaded; want an error %q", tt.want)
			}
			if got := strings.ReplaceAll(err.Error(), dir+"/", ""); !strings.Contains(got, tt.want) {
				t.Errorf("error:\n%s\nwant one containing:\n%s", got, tt.want)
			}
		})
	}
}
