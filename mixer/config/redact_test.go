package config_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/expr"
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

// pluginParams are a plugin's params, whose secrets are not named like secrets:
// the tag hides them.
type pluginParams struct {
	Endpoint string `yaml:"endpoint"`
	Sig      string `yaml:"sig" sluice:"secret"`
	Backends []struct {
		Name string `yaml:"name"`
		Seed int    `yaml:"seed" sluice:"secret"`
	} `yaml:"backends"`
	Shared `yaml:",inline"`
}

// Shared is inlined in pluginParams.
type Shared struct {
	Phrase map[string]string `yaml:"phrase" sluice:"secret"`
	Labels map[string]string `yaml:"labels"`
}

func (*pluginParams) Validate() error { return nil }

// TestTaggedParamsRedacted: a plugin's params fields tagged sluice:"secret" are
// hidden on /api/config whatever their names, at any depth and inlined; the
// other fields are shown.
func TestTaggedParamsRedacted(t *testing.T) {
	reg, err := adapters.NewRegistry(&adapters.Factory{
		Name: "plugin", Templates: []string{"logentry"},
		NewParams: func() adapters.Params { return &pluginParams{} },
		New: func(context.Context, adapters.Env, adapters.Params, adapters.Instances) (adapters.Handler, error) {
			return nil, errors.New("not built in this test")
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	comp, err := expr.NewCompiler(attribute.NewVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	dir := writeDir(t, map[string]string{"h.yaml": "apiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata: {name: h, namespace: shop}\n" +
		"spec:\n  adapter: plugin\n  params:\n    endpoint: https://collector\n    sig: pw1\n" +
		"    backends: [{name: a, seed: 42424242}]\n    phrase: {k: pw3}\n    labels: {team: pay}\n"})
	l := &config.Loader{Dir: dir, Adapters: reg, Compiler: comp, Layers: []config.Layer{}}
	s, err := l.Load()
	if err != nil {
		t.Fatal(err)
	}
	var spec any
	for _, o := range s.Objects {
		if o.Kind == config.KindHandler && o.Name == "h" {
			spec = o.Spec
		}
	}
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	got := string(js)
	for _, w := range []string{`"sig":"[redacted]"`, `"seed":"[redacted]"`, `"phrase":"[redacted]"`,
		`"endpoint":"https://collector"`, `"name":"a"`, `"labels":{"team":"pay"}`} {
		if !strings.Contains(got, w) {
			t.Errorf("shown as %s, want %s", got, w)
		}
	}
	for _, secret := range []string{"pw1", "42424242", "pw3"} {
		if strings.Contains(got, secret) {
			t.Errorf("shown as %s, which holds %q", got, secret)
		}
	}
}
