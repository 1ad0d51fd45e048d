package mixer_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/sluicemesh/sluice/adapters/adaptertest"
	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
)

// TestRedisAddrReplacedWarns: a config may replace the quota handler --redis-addr
// makes (it is a default), but then rate limits stop being shared through Redis,
// so each config applied says so; with the flag's handler in force nothing is said.
func TestRedisAddrReplacedWarns(t *testing.T) {
	const warning = "the config replaces the quota handler --redis-addr made"
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string // in the warning; "" for none
	}{
		{name: "flag's handler in force"},
		{name: "replaced by memquota", files: map[string]string{"quota.yaml": `apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: quota, namespace: sluice-system}
spec: {adapter: memquota, params: {}}
`}, want: "adapter=memquota source="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, body := range tc.files {
				writeFile(t, dir, name, body)
			}
			logs := &adaptertest.LogBuffer{}
			h := start(t, dir, func(o *mixer.Options) {
				// Never dialled: no check is made.
				o.RedisAddr = "127.0.0.1:1"
				o.Logger = slog.New(slog.NewTextHandler(logs, nil))
			})
			defer h.stop()
			got := logs.String()
			switch {
			case tc.want == "" && strings.Contains(got, warning):
				t.Errorf("warned with the flag's handler in force:\n%s", got)
			case tc.want != "" && !strings.Contains(got, warning):
				t.Errorf("no warning; logged:\n%s", got)
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Errorf("the warning does not say %q:\n%s", tc.want, got)
			}
		})
	}
}

// TestAPIConfigHidesSecrets: the Redis password, whether in --redis-addr's URL or
// a redisquota handler's params, is not shown on /api/config, which anyone who
// can scrape the admin port may read; nor is it in the error of a URL that
// does not parse.
func TestAPIConfigHidesSecrets(t *testing.T) {
	const secret = "s3cretpw"
	handler := func(params string) string {
		return "apiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata: {name: shared, namespace: shop}\nspec:\n  adapter: redisquota\n  params:\n" +
			params + "    quotas: [{name: q, maxAmount: 5, validDuration: 1s}]\n"
	}
	dir := t.TempDir()
	writeFile(t, dir, "quota.yaml", handler("    redisServerUrl: 127.0.0.1:1\n    password: "+secret+"\n"))
	h := start(t, dir, func(o *mixer.Options) {
		o.RedisAddr = "redis://:" + secret + "@127.0.0.1:1" // never dialled: no check is made
	})
	defer h.stop()
	body := get(t, h.url+"/api/config")
	if strings.Contains(body, secret) {
		t.Errorf("/api/config shows the password:\n%.3000s", body)
	}
	for _, want := range []string{`"password": "[redacted]"`, `"redisServerUrl": "redis://:xxxxx@127.0.0.1:1"`} {
		if !strings.Contains(body, want) {
			t.Errorf("/api/config lacks %s:\n%.3000s", want, body)
		}
	}

	// A URL that does not parse: its error, logged and shown, does not repeat it.
	writeFile(t, dir, "quota.yaml", handler(`    redisServerUrl: "redis://:`+secret+"@127.0.0.1:port\"\n"))
	h.waitMetric("the bad edit rejected", func(f loadtest.Families) bool {
		return f.Sum("sluice_config_reloads_total", map[string]string{"result": "failure"}) >= 1
	})
	body = get(t, h.url+"/api/config")
	if strings.Contains(body, secret) || !strings.Contains(body, "redisServerUrl: is not a Redis URL") {
		t.Errorf("/api/config after a URL that does not parse:\n%.3000s", body)
	}
}
