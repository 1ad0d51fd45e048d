package config_test

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sluicemesh/sluice/mixer/config"
)

// Files with mistakes of every stage, for TestAllErrorsInOneLoad. Their line numbers
// are in the wanted errors.
const (
	// rlRepro: an unknown unit at line 4, a negative count at line 6.
	rlRepro = `domain: api
descriptors:
- key: user
  rate_limit: {unit: fortnight, requests_per_unit: 10}
- key: path
  rate_limit: {unit: second, requests_per_unit: -5}
`
	// ruleRepro: a capitalised header name at line 5, an unknown handler at line 7.
	ruleRepro = `apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: roles, namespace: shop}
spec:
  match: request.headers["X-Role"] == "admin"
  actions:
  - handler: nosuch
    instances: [requestcount]
`
	// rlUndecoded: fields that did not decode, whose zero values would otherwise
	// be reported again (an empty key, an empty unit, a limit of 0 that a token
	// bucket cannot count); and a list element that did not decode, after which
	// the descriptors must still be named by their written index.
	rlUndecoded = `domain: api
descriptors:
- key: [a]
- 5
- key: b
  rate_limit: {unit: [second], requests_per_unit: 1}
- key: c
  rate_limit: {unit: minute, requests_per_unit: -1, algorithm: token_bucket}
- key: d
  rate_limit: {uint: minute, requests_per_unit: 1}
- key: e
  rate_limit: {unit: fortnight, requests_per_unit: 1, replaces: [x, {}]}
`
	// brokenMiddle: a YAML syntax error in the second of three documents.
	brokenMiddle = `# the first document holds "---", but not at the start of a line
apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: first}
spec:
  match: |
    request.host ==
      "---"
  actions: [{handler: prometheus, instances: [requestcount]}]
...
---
apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: broken}
spec: {adapter: [prometheus}
---
apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: third}
spec:
  match: request.verb == "GET"
  actions: [{handler: missing, instances: [requestcount]}]
`
	// refsToFailed: a rule whose handler failed to parse (known by its name) and
	// whose instance is in a document with a syntax error (known only by what it
	// mentions), and an instance that is nowhere.
	refsToFailed = `apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: prom, namespace: shop}
spec:
  adapter: prometheus
  parmas: {}
---
apiVersion: sluice.dev/v1alpha1
kind: Instance
metadata: {name: pathcount, namespace: shop}
spec:
  template: metric
  params: {value: "1"
---
apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: r, namespace: shop}
spec:
  actions:
  - {handler: prom, instances: [pathcount]}
  - {handler: sluice-system/quota, instances: [nowhere]}
`
	// replacedDefault: a user handler that would replace the default prometheus
	// handler, but does not parse, and a rule that sends it an instance that only
	// the replacement lists: the default's params must not be checked in its place.
	replacedDefault = `apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: prometheus, namespace: sluice-system}
spec:
  adapter: prometheus
  params:
    metric: [{instance: pathcount, name: shop_paths_total, kind: COUNTER}]
---
apiVersion: sluice.dev/v1alpha1
kind: Instance
metadata: {name: pathcount, namespace: shop}
spec:
  template: metric
  params: {value: "1"}
---
apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: r, namespace: shop}
spec:
  actions: [{handler: prometheus, instances: [pathcount]}]
`
	workload   = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm}\nspec: {address: 10.0.0.9}\n"
	badMatch   = "apiVersion: sluice.dev/v1alpha1\nkind: Rule\nmetadata: {name: m}\nspec:\n  match: response.code ==\n  actions: [{handler: prometheus, instances: [requestcount]}]\n"
	badVersion = "apiVersion: foo/v1\nkind: Bar\nmetadata: {name: x}\nspec: {}\n"
	badSyntax  = "apiVersion: sluice.dev/v1alpha1\nkind: [unclosed\n"
	badField   = "apiVersion: sluice.dev/v1alpha1\nkind: Rule\nmetadata: {name: f}\nspec:\n  match: 'true'\n  action: []\n"
)

// TestAllErrorsInOneLoad: one load reports every error it can find, in every file
// (a parsing error of one file or field hides no other, nor the later stages'
// errors in the objects that parsed), and none that only follows from another.
func TestAllErrorsInOneLoad(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		// want is every error, in order, as "FILE:LINE: " and the start of the message.
		want []string
	}{
		{"a rate-limit file's field errors, and a rule's compile errors", map[string]string{
			"rl.yaml": rlRepro, "multi.yaml": ruleRepro,
		}, []string{
			`multi.yaml:5: match: header names arrive lower-cased`,
			`multi.yaml:7: handler "nosuch" not found`,
			`rl.yaml:4: descriptors[0]: rate_limit unit "fortnight" is not one of`,
			`rl.yaml:6: descriptors[1].rate_limit.requests_per_unit: -5 is not a whole number`,
		}},
		{"an unknown field hides nothing", map[string]string{
			"rl.yaml":    strings.Replace(rlRepro, "rate_limit: {unit: second", "ratelimit: {unit: second", 1),
			"multi.yaml": ruleRepro,
		}, []string{
			`multi.yaml:5: match: header names arrive lower-cased`,
			`multi.yaml:7: handler "nosuch" not found`,
			`rl.yaml:4: descriptors[0]: rate_limit unit "fortnight" is not one of`,
			`rl.yaml:6: unknown field "ratelimit" in descriptors[1]`,
		}},
		{"every file's parse errors, and the compile errors of the others", map[string]string{
			"a.yaml": badVersion, "b.yaml": badSyntax, "c.yaml": badField, "d.yaml": badMatch, "e.yaml": workload,
		}, []string{
			`a.yaml:1: unknown apiVersion "foo/v1"`,
			`b.yaml:2: did not find expected`,
			`c.yaml:6: unknown field "action"`,
			`d.yaml:5: match: `,
		}},
		{"the documents after a syntax error", map[string]string{"m.yaml": brokenMiddle}, []string{
			`m.yaml:15: did not find expected ',' or ']'`,
			`m.yaml:21: match: undeclared reference to 'request.verb'`,
			`m.yaml:22: handler "missing" not found`,
		}},
		{"fields that did not decode are not checked again", map[string]string{"rl.yaml": rlUndecoded}, []string{
			`rl.yaml:3: a list is not a string`, // descriptors, too, is a list at line 3
			`rl.yaml:4: descriptors[1]: 5 is not a mapping`,
			`rl.yaml:6: descriptors[2].rate_limit.unit: a list is not a string`,
			`rl.yaml:8: descriptors[3].rate_limit.requests_per_unit: -1 is not a whole number`,
			`rl.yaml:10: unknown field "uint" in descriptors[4].rate_limit`,
			`rl.yaml:12: descriptors[5].rate_limit.replaces[0]: "x" is not a mapping`,
			`rl.yaml:12: descriptors[5]: rate_limit unit "fortnight" is not one of`,
			`rl.yaml:12: descriptors[5]: rate_limit replaces[1] has no name`,
		}},
		{"references to documents that failed", map[string]string{"refs.yaml": refsToFailed}, []string{
			`refs.yaml:6: unknown field "parmas"`,
			`refs.yaml:13: did not find expected ',' or '}'`,
			`refs.yaml:21: instance "nowhere" not found`,
		}},
		{"a default that a failed object replaces", map[string]string{"prom.yaml": replacedDefault}, []string{
			`prom.yaml:7: unknown field "metric"`,
		}},
		{"a duplicate, and compile errors", map[string]string{
			"a.yaml": workload, "b.yaml": workload, "c.yaml": badMatch,
		}, []string{
			`b.yaml:1: WorkloadEntry default/vm is already defined at `,
			`c.yaml:5: match: `,
		}},
		{"a duplicate domain whose second file has errors", map[string]string{
			"a.yaml": "domain: dup\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 1}}]\n",
			"b.yaml": "domain: dup\ndescriptors:\n- key: \"\"\n  rate_limit: {unit: second, requests_per_unit: -1}\n",
		}, []string{
			`b.yaml:1: rate-limit domain "dup" is already defined at `,
			`b.yaml:3: descriptors[0]: descriptor has no key`,
			`b.yaml:4: descriptors[0].rate_limit.requests_per_unit: -1 is not a whole number`,
		}},
		{"a duplicate domain whose first file has errors", map[string]string{
			"a.yaml": "domain: dup\ndescriptors: [{key: k, rate_limit: {unit: fortnight, requests_per_unit: 1}}]\n",
			"b.yaml": "domain: dup\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 1}}]\n",
			"c.yaml": "domain: dup\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 2}}]\n",
		}, []string{
			`a.yaml:2: descriptors[0]: rate_limit unit "fortnight" is not one of`,
			`b.yaml:1: rate-limit domain "dup" is already defined at `,
			`c.yaml:1: rate-limit domain "dup" is already defined at `,
		}},
		{"a duplicate handler that does not parse", map[string]string{
			"a.yaml": "apiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata: {name: h, namespace: shop}\nspec: {adapter: denier, params: {}}\n",
			"b.yaml": "apiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata: {name: h, namespace: shop}\nspec: {adapter: denier, parmas: {}}\n",
		}, []string{
			`b.yaml:1: Handler shop/h is already defined at `,
			`b.yaml:4: unknown field "parmas"`,
		}},
		{"every params error of a handler", map[string]string{
			"h.yaml": `apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: den, namespace: shop}
spec:
  adapter: denier
  params:
    status: {code: NOT_A_CODE}
    httpStatus: 9999
---
apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: q, namespace: shop}
spec:
  adapter: memquota
  params:
    quotas:
    - name: q
      maxAmount: 0
      validDuration: -1s
---
apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: pol, namespace: shop}
spec:
  adapter: rbac
  params:
    policies:
    - {name: a, condition: 'request.headers["X-Role"] == "admin"'}
    - {name: b, condition: 'request.method + 1 == 2'}
`,
		}, []string{
			`h.yaml:7: params.status.code: "NOT_A_CODE" is not a gRPC code name`,
			`h.yaml:8: params.httpStatus: 9999 is not an HTTP status`,
			`h.yaml:18: params.quotas[0].maxAmount: must be at least 1`,
			`h.yaml:19: params.quotas[0].validDuration: -1s is shorter than 1ms`,
			`h.yaml:28: params.policies[0].condition: header names arrive lower-cased`,
			`h.yaml:29: params.policies[1].condition: found no matching overload`,
		}},
		{"a handler's unknown params key and its written fields' errors", map[string]string{
			"h.yaml": `apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: callers, namespace: shop}
spec:
  adapter: list
  params:
    entryType: STRINGZ
    overides: [a]
    validDuration: -5s
---
apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: den, namespace: shop}
spec:
  adapter: denier
  params:
    httpStatus: nine
    bogus: 1
    status: {code: NOT_A_CODE}
`,
		}, []string{
			// Not "overrides: a list needs entries", which follows from the misspelling.
			`h.yaml:7: params.entryType: entry type "STRINGZ" is not one of`,
			`h.yaml:8: unknown field "overides"`,
			`h.yaml:9: params.validDuration: must not be negative`,
			// A value that did not decode stops the adapter's checks, which would
			// report its zero value.
			`h.yaml:17: httpStatus: "nine" is not a whole number`,
			`h.yaml:18: unknown field "bogus"`,
		}},
		{"an rbac handler's condition errors with its other params errors", map[string]string{
			"h.yaml": `apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: pol, namespace: shop}
spec:
  adapter: rbac
  params:
    action: MAYBE
    validDuration: -1s
    policies:
    - {name: a, condition: 'request.method + 1 == 2'}
    - {name: b, condition: ''}
    - {name: c, condition: 'request.path == "/"'}
---
apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: typo, namespace: shop}
spec:
  adapter: rbac
  params:
    polices: []
    policies:
    - {name: a, condition: 'request.path.size('}
`,
		}, []string{
			`h.yaml:7: params.action: action "MAYBE" is not ALLOW or DENY`,
			`h.yaml:8: params.validDuration: must not be negative`,
			`h.yaml:10: params.policies[0].condition: found no matching overload`,
			// Validate's, and not the compiler's as well.
			`h.yaml:11: params.policies[1].condition: a condition is required`,
			`h.yaml:20: unknown field "polices"`,
			`h.yaml:22: params.policies[0].condition: `,
		}},
		{"a mesh object's unknown field and bad value", map[string]string{
			"w.yaml": "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec:\n  address: 1.2.3.4\n  adress: 1.2.3.4\n  weight: -1\n",
		}, []string{
			`w.yaml:6: unknown field "adress"`,
			`w.yaml:7: spec: invalid value for uint32 field weight`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeDir(t, tt.files)
			s, err := loader(t, dir).Load()
			if s != nil {
				t.Error("a config with errors returned a snapshot")
			}
			got := relErrors(dir, err)
			ok := len(got) == len(tt.want)
			for i := 0; ok && i < len(got); i++ {
				ok = strings.HasPrefix(got[i], tt.want[i])
			}
			if !ok {
				t.Errorf("errors:\n  %s\nwant, in this order, ones starting:\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
			// The same config reports the same errors every time.
			if _, again := loader(t, dir).Load(); strings.Join(relErrors(dir, again), "\n") != strings.Join(got, "\n") {
				t.Errorf("a second load reports:\n%v", again)
			}
		})
	}
}

// relErrors returns the errors of a load with the directory left out of their files.
func relErrors(dir string, err error) []string {
	var out []string
	for _, e := range config.Errors(err) {
		out = append(out, strings.TrimPrefix(e.Error(), dir+string(filepath.Separator)))
	}
	return out
}

// TestValidatorsAfterErrors: the validators (the routing core's mesh checks) still
// run when mixer objects have errors, and report with them; not while a document
// that may be a mesh object failed, as they would report what follows from it.
func TestValidatorsAfterErrors(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		checked bool
	}{
		{"a mixer object failed to parse", map[string]string{"w.yaml": workload, "f.yaml": badField}, true},
		{"a mixer object failed to compile", map[string]string{"w.yaml": workload, "m.yaml": badMatch}, true},
		{"a mesh object failed to parse", map[string]string{
			"w.yaml": workload, "bad.yaml": strings.Replace(workload, "address:", "adress:", 1),
		}, false},
		{"a document that may be a mesh object has a syntax error", map[string]string{
			"w.yaml": workload, "bad.yaml": "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nspec: {hosts: [a\n",
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeDir(t, tt.files)
			l := loader(t, dir)
			ran := false
			l.Validators = []config.Validator{config.ValidatorFunc(func(s *config.Snapshot) error {
				ran = true
				var errs config.ErrorList
				for _, o := range s.ByKind(config.KindWorkloadEntry) {
					errs = append(errs, &config.Error{Pos: o.Pos, Msg: "checked " + o.Name})
				}
				return errs
			})}
			_, err := l.Load()
			if ran != tt.checked {
				t.Fatalf("validators ran: %v, want %v", ran, tt.checked)
			}
			if !tt.checked {
				return
			}
			got := relErrors(dir, err)
			if len(got) != 2 || !strings.Contains(strings.Join(got, "\n"), "w.yaml:1: checked vm") {
				t.Errorf("errors:\n%s\nwant the object's error and the validator's", strings.Join(got, "\n"))
			}
		})
	}
}

// manyWrongValues is a rate-limit file with n limits whose counts are words.
func manyWrongValues(n int) []byte {
	var b strings.Builder
	b.WriteString("domain: api\ndescriptors:\n")
	for i := range n {
		fmt.Fprintf(&b, "- key: k%d\n  rate_limit: {unit: minute, requests_per_unit: ten%d}\n", i, i)
	}
	return []byte(b.String())
}

// TestManyTypeErrors: each of many wrong values is reported at its own line, by its field.
func TestManyTypeErrors(t *testing.T) {
	const n = 300
	_, err := config.ParseFile("rl.yaml", manyWrongValues(n))
	errs := config.Errors(err)
	if len(errs) != n {
		t.Fatalf("%d errors, want %d: %v", len(errs), n, err)
	}
	for i, e := range errs {
		want := fmt.Sprintf("descriptors[%d].rate_limit.requests_per_unit: \"ten%d\" is not a whole number", i, i)
		if e.Pos.Line != 4+2*i || !strings.HasPrefix(e.Msg, want) {
			t.Fatalf("error %d: %v, want line %d: %s", i, e, 4+2*i, want)
		}
	}
}

// BenchmarkManyTypeErrors reports the cost of a file with thousands of wrong values
// per value: it stays flat as the file grows (it once walked the file per error).
func BenchmarkManyTypeErrors(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		data := manyWrongValues(n)
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			for b.Loop() {
				if _, err := config.ParseFile("rl.yaml", data); err == nil {
					b.Fatal("no error")
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/value")
		})
	}
}
