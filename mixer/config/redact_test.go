package config_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/sluicemesh/sluice/mixer/config"
)

// TestHandlerParamsRedacted: what /api/config shows of a handler's params hides
// secret fields, at any depth, and the passwords of URLs, and keeps the rest.
func TestHandlerParamsRedacted(t *testing.T) {
	for _, tc := range []struct {
		params    string
		want      []string
		forbidden string
	}{
		{`{password: pw1, db: 2}`, []string{`"password":"[redacted]"`, `"db":2`}, "pw1"},
		{`{redisServerUrl: "redis://user:pw2@h:6379/0"}`, []string{`"redisServerUrl":"redis://user:xxxxx@h:6379/0"`}, "pw2"},
		{`{redisServerUrl: "unix://:pw3@/run/redis.sock"}`, []string{`"redisServerUrl":"unix://:xxxxx@/run/redis.sock"`}, "pw3"},
		{`{url: "redis://:pw4@h:port"}`, []string{`"url":"[redacted]"`}, "pw4"}, // does not parse
		{`{exporters: [{apiKey: pw5, site: datadoghq.eu}], client: {bearerToken: pw6}}`,
			[]string{`"apiKey":"[redacted]"`, `"site":"datadoghq.eu"`, `"bearerToken":"[redacted]"`}, "pw"},
		{`{auth: "Basic pw7", pass: pw8, accessKey: pw9, privateKey: pw10, passes: 3}`,
			[]string{`"auth":"[redacted]"`, `"pass":"[redacted]"`, `"accessKey":"[redacted]"`, `"privateKey":"[redacted]"`, `"passes":3`}, "pw"},
		{`{redisServerUrl: "redis://h:6379", overrides: ["a@b"]}`, []string{`"redisServerUrl":"redis://h:6379"`, `"overrides":["a@b"]`}, "xxxxx"},
	} {
		doc := "apiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata: {name: h}\nspec: {adapter: x, params: " + tc.params + "}\n"
		objs, err := config.ParseFile("h.yaml", []byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", tc.params, err)
		}
		js, err := json.Marshal(objs[0].Spec)
		if err != nil {
			t.Fatal(err)
		}
		got := strings.ReplaceAll(string(js), `\u0026`, "&")
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: shown as %s, want %s", tc.params, got, w)
			}
		}
		if strings.Contains(got, tc.forbidden) {
			t.Errorf("%s: shown as %s, which holds %q", tc.params, got, tc.forbidden)
		}
	}
}
