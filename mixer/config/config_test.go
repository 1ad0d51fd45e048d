package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/sluicemesh/sluice/adapters/all"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/expr"
)

func loader(t testing.TB, dir string) *config.Loader {
	t.Helper()
	comp, err := expr.NewCompiler(attribute.NewVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	return &config.Loader{Dir: dir, Adapters: all.Registry(), Compiler: comp}
}

func writeDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestDefaults(t *testing.T) {
	s, err := loader(t, "").Load()
	if err != nil {
		t.Fatal(err)
	}
	if got := len(s.Instances); got != 8 {
		t.Errorf("%d default instances, want the 8 Istio metrics", got)
	}
	var handlers []string
	for _, h := range s.Handlers {
		handlers = append(handlers, h.Name+":"+h.Factory.Name)
	}
	if strings.Join(handlers, ",") != "sluice-system/prometheus:prometheus,sluice-system/quota:memquota" {
		t.Errorf("default handlers = %v", handlers)
	}
	for _, r := range s.Rules {
		if r.Match != nil && !r.Match.IsFast() {
			t.Errorf("default rule %s match %q leaves the fast path", r.Name, r.Match.Source)
		}
	}
	for _, i := range s.Instances {
		for _, d := range i.Maps["dimensions"] {
			if !d.Expr.IsFast() {
				t.Errorf("default dimension %s.%s leaves the fast path", i.Name, d.Name)
			}
		}
	}
}

const customMetric = `
apiVersion: sluice.dev/v1alpha1
kind: Instance
metadata: {name: pathcount, namespace: shop}
spec:
  template: metric
  params:
    value: "1"
    dimensions:
      path: request.url_path
      method: request.method
---
apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: prom, namespace: shop}
spec:
  adapter: prometheus
  params:
    metrics:
    - instance: pathcount
      name: shop_requests_by_path_total
      kind: COUNTER
---
apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: shop-paths, namespace: shop}
spec:
  match: destination.service.namespace == "shop"
  actions:
  - handler: prom
    instances: [pathcount]
`

func TestLayering(t *testing.T) {
	dir := writeDir(t, map[string]string{
		"custom.yaml": customMetric,
		"override.yml": `
apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata:
  name: tcp-telemetry
  namespace: sluice-system
  annotations: {sluice.dev/disabled: "true"}
spec:
  actions: [{handler: prometheus, instances: [tcpbytesent]}]
---
apiVersion: sluice.dev/v1alpha1
kind: Instance
metadata: {name: requestcount, namespace: sluice-system}
spec:
  template: metric
  params:
    value: "1"
    dimensions:
      destination_service: destination.service.host
`,
		"notes.txt":     "not config",
		".hidden.yaml":  "not: [valid",
		"workload.yaml": "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm1}\nspec: {address: 10.1.2.3, labels: {app: legacy}}\n",
	})
	s, err := loader(t, dir).Load()
	if err != nil {
		t.Fatal(err)
	}
	rules := map[string]bool{}
	for _, r := range s.Rules {
		rules[r.Name] = true
	}
	if rules["sluice-system/tcp-telemetry"] {
		t.Error("the disabled default rule is still there")
	}
	if !rules["shop/shop-paths"] || !rules["sluice-system/http-telemetry"] {
		t.Errorf("rules = %v", rules)
	}
	for _, i := range s.Instances {
		if i.Name == "sluice-system/requestcount" {
			if dims := i.Maps["dimensions"]; len(dims) != 1 || i.Object.Default {
				t.Errorf("requestcount was not replaced: %d dimensions, default=%v", len(dims), i.Object.Default)
			}
		}
	}
	if we := s.ByKind(config.KindWorkloadEntry); len(we) != 1 || we[0].Namespace != "default" {
		t.Errorf("workload entries = %v", we)
	}
}

// TestErrors checks that every kind of mistake is reported at its file and line.
func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		body string
		want string // "LINE: substring"
	}{
		{"yaml syntax", "apiVersion: sluice.dev/v1alpha1\nkind: [unclosed\n", "2: did not find expected"},
		{"yaml indentation", "apiVersion: sluice.dev/v1alpha1\nkind: Rule\n  spec: {}\n", "3: mapping values are not allowed"},
		{"unknown apiVersion", "apiVersion: foo/v1\nkind: Bar\nmetadata: {name: x}\nspec: {}\n", "1: unknown apiVersion \"foo/v1\""},
		{"unknown kind", "apiVersion: sluice.dev/v1alpha1\nkind: Adapter\nmetadata: {name: x}\nspec: {}\n", "1: unknown kind \"Adapter\""},
		{"unsupported istio kind", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: x}\nspec: {}\n", "1: kind \"Gateway\""},
		{"no name", "apiVersion: sluice.dev/v1alpha1\nkind: Rule\nmetadata: {}\nspec: {actions: []}\n", "1: Rule has no metadata.name"},
		{"bad name", "apiVersion: sluice.dev/v1alpha1\nkind: Rule\nmetadata: {name: Bad_Name}\nspec: {actions: []}\n", "1: metadata.name \"Bad_Name\" is not a lower-case DNS name"},
		{"unknown spec field", "apiVersion: sluice.dev/v1alpha1\nkind: Rule\nmetadata: {name: r}\nspec:\n  match: 'true'\n  action: []\n", "6: unknown field \"action\""},
		{"unknown top-level field", "apiVersion: sluice.dev/v1alpha1\nkind: Rule\nmeta: {}\n", "3: unknown field \"meta\""},
		{"bad CEL", strings.Replace(customMetric, "request.url_path", "request.url_path +", 1), "10: dimensions.path:"},
		{"unknown attribute", strings.Replace(customMetric, "request.method", "request.verb", 1), "11: dimensions.method:"},
		{"value is a string", strings.Replace(customMetric, `value: "1"`, `value: request.path`, 1), "8: value:"},
		{"match is not bool", strings.Replace(customMetric, `destination.service.namespace == "shop"`, `destination.service.namespace`, 1), "28: match must be a bool"},
		{"unknown handler", strings.Replace(customMetric, "handler: prom", "handler: prometheus2", 1), "30: handler \"prometheus2\" not found"},
		{"unknown instance", strings.Replace(customMetric, "instances: [pathcount]", "instances: [pathcount, nope]", 1), "31: instance \"nope\" not found"},
		{"bad metric name", strings.Replace(customMetric, "shop_requests_by_path_total", "shop-requests", 1), "21: params.metrics[0].name"},
		{"unknown adapter param", strings.Replace(customMetric, "kind: COUNTER", "kind: COUNTER\n      labels: [a]", 1), "23: unknown field \"labels\""},
		{"distribution without buckets", strings.Replace(customMetric, "kind: COUNTER", "kind: DISTRIBUTION", 1), "20: params.metrics[0]: a DISTRIBUTION needs buckets"},
		{"instance not in handler", strings.Replace(customMetric, "- instance: pathcount", "- instance: other", 1), "20: params.metrics: a rule sends metric instance shop/pathcount"},
		{"unknown template", strings.Replace(customMetric, "template: metric", "template: metrik", 1), "6: unknown template \"metrik\""},
		{"unknown template param", strings.Replace(customMetric, `value: "1"`, "value: \"1\"\n    labels: {}", 1), "9: template metric has no param \"labels\""},
		{"unknown adapter", strings.Replace(customMetric, "adapter: prometheus", "adapter: statsd", 1), "17: unknown adapter \"statsd\""},
		{"istio unknown field", "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec:\n  address: 1.2.3.4\n  adress: 1.2.3.4\n", "6: unknown field \"adress\""},
		{"istio bad value", "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec:\n  address: 1.2.3.4\n  weight: -1\n", "6: spec: invalid value for uint32 field weight"},
		{"rate limit unit", "domain: d\ndescriptors:\n- key: k\n  rate_limit: {unit: fortnight, requests_per_unit: 1}\n", "4: descriptors[0]: rate_limit unit \"fortnight\""},
		{"rate limit unknown field", "domain: d\ndescriptors:\n- key: k\n  ratelimit: {}\n", "4: unknown field \"ratelimit\""},
		{"rate limit duplicate", "domain: d\ndescriptors:\n- key: k\n- key: k\n", "4: descriptors[1]: duplicate descriptor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeDir(t, map[string]string{"bad.yaml": tt.body})
			_, err := loader(t, dir).Load()
			if err == nil {
				t.Fatal("loaded without error")
			}
			line, msg, _ := strings.Cut(tt.want, ": ")
			want := filepath.Join(dir, "bad.yaml") + ":" + line + ": " + msg
			for _, e := range config.Errors(err) {
				if strings.HasPrefix(e.Error(), want) || (msg == "" && strings.HasPrefix(e.Error(), filepath.Join(dir, "bad.yaml")+":"+line+":")) {
					return
				}
			}
			t.Errorf("errors:\n%v\nwant one starting %q", err, want)
		})
	}
}

func TestDuplicates(t *testing.T) {
	doc := "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w, namespace: ns}\nspec: {address: 1.2.3.4}\n"
	dir := writeDir(t, map[string]string{"a.yaml": doc, "b.yaml": doc,
		"r1.yaml": "domain: shared\ndescriptors: [{key: a}]\n", "r2.yaml": "domain: shared\ndescriptors: [{key: b}]\n"})
	_, err := loader(t, dir).Load()
	msgs := err.Error()
	if !strings.Contains(msgs, "b.yaml:1: WorkloadEntry ns/w is already defined at "+filepath.Join(dir, "a.yaml")+":1") {
		t.Errorf("no duplicate-object error in:\n%s", msgs)
	}
	if !strings.Contains(msgs, `r2.yaml:1: rate-limit domain "shared" is already defined`) {
		t.Errorf("no duplicate-domain error in:\n%s", msgs)
	}
}

func TestMultipleErrorsAllReported(t *testing.T) {
	dir := writeDir(t, map[string]string{
		"a.yaml": "apiVersion: foo/v1\nkind: X\n",
		"b.yaml": "domain: d\ndescriptors: [{key: k, rate_limit: {unit: eon}}]\n",
	})
	_, err := loader(t, dir).Load()
	if n := len(config.Errors(err)); n != 2 {
		t.Errorf("%d errors, want 2: %v", n, err)
	}
}

func TestLayersFS(t *testing.T) {
	l := loader(t, "")
	l.Layers = append(config.DefaultLayers(), config.Layer{Name: "extra", FS: fstest.MapFS{
		"x.yaml": {Data: []byte("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec: {address: 10.0.0.1}\n")},
	}})
	s, err := l.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(s.ByKind(config.KindWorkloadEntry)) != 1 {
		t.Error("extra layer not loaded")
	}
}

// FuzzParseFile parses and compiles arbitrary files: errors are expected, panics not,
// and every error must carry a position.
func FuzzParseFile(f *testing.F) {
	f.Add([]byte(customMetric))
	f.Add([]byte("domain: d\ndescriptors:\n- key: k\n  value: v\n  rate_limit: {unit: second, requests_per_unit: 5}\n  descriptors: [{key: x}]\n"))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("apiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata: {name: h}\nspec:\n  adapter: list\n" +
		"  params: {entryType: X, bogus: 1, overrides: &o [a], allowHeaders: [{name: *o}]}\n"))
	l := loader(f, "")
	f.Fuzz(func(t *testing.T, data []byte) {
		l := *l
		// Without the defaults: compiling their two hundred expressions per input
		// would slow the fuzzer a hundredfold.
		l.Layers = []config.Layer{{Name: "fuzz", FS: fstest.MapFS{"f.yaml": {Data: data}}}}
		_, err := l.Load()
		for _, e := range config.Errors(err) {
			if e.Pos.File == "" {
				t.Fatalf("error without a file: %v", e)
			}
		}
	})
}

func TestLaterDefaultLayerReplaces(t *testing.T) {
	l := loader(t, "")
	l.Layers = append(config.DefaultLayers(), config.Layer{Name: "flags", Default: true, FS: fstest.MapFS{
		"x.yaml": {Data: []byte("apiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata: {name: prometheus, namespace: sluice-system}\n" +
			"spec:\n  adapter: prometheus\n  params:\n    maxSeriesPerMetric: 7\n    metrics:\n" +
			"    - {instance: requestcount, name: istio_requests_total, kind: COUNTER}\n    - {instance: requestduration, name: d, kind: COUNTER}\n" +
			"    - {instance: requestsize, name: rq, kind: COUNTER}\n    - {instance: responsesize, name: rs, kind: COUNTER}\n" +
			"    - {instance: tcpbytesent, name: ts, kind: COUNTER}\n    - {instance: tcpbytereceived, name: tr, kind: COUNTER}\n" +
			"    - {instance: tcpconnectionsopened, name: to, kind: COUNTER}\n    - {instance: tcpconnectionsclosed, name: tc, kind: COUNTER}\n")},
	}})
	s, err := l.Load()
	if err != nil {
		t.Fatal(err)
	}
	if h := s.Handlers[0]; h.Name != "sluice-system/prometheus" || !strings.HasPrefix(h.Object.Pos.File, "flags/") {
		t.Errorf("the later default layer did not replace the handler: %s", h.Object.Pos)
	}
}
