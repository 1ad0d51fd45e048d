package check

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicemesh/sluice/adapters/all"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/expr"
)

// TestInProcess: checks run inline on the lean listener only when no handler they
// can reach waits on a backend.
func TestInProcess(t *testing.T) {
	policy, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const redisDefault = `apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: quota, namespace: sluice-system}
spec:
  adapter: redisquota
  params: {redisServerUrl: "127.0.0.1:1"}
`
	quota, err := os.ReadFile("testdata/quota.yaml")
	if err != nil {
		t.Fatal(err)
	}
	redisRule := strings.Replace(string(quota), "adapter: memquota\n  params:\n", "adapter: redisquota\n  params:\n    redisServerUrl: 127.0.0.1:1\n", 1)
	if redisRule == string(quota) {
		t.Fatal("testdata/quota.yaml no longer names memquota where this test expects it")
	}
	compiler, err := expr.NewCompiler(attribute.NewVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		files map[string]string
		want  bool
	}{
		{"the defaults (memquota)", nil, true},
		{"denier, list and rbac policies", map[string]string{"policy.yaml": string(policy)}, true},
		{"a rule's quota in memquota", map[string]string{"quota.yaml": string(quota)}, true},
		{"Redis as the rate-limit backend", map[string]string{"redis.yaml": redisDefault}, false},
		{"a rule's quota in Redis", map[string]string{"quota.yaml": redisRule}, false},
	} {
		dir := t.TempDir()
		for name, body := range tt.files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		snap, err := (&config.Loader{Dir: dir, Adapters: all.Registry(), Compiler: compiler}).Load()
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := inProcess(snap, DefaultQuotaHandler); got != tt.want {
			t.Errorf("%s: in process %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestCacheKey: two bags share a key exactly when every referenced value, or its
// absence, is the same; values of other attributes do not count.
func TestCacheKey(t *testing.T) {
	p := &plan{refs: []expr.Ref{
		{ID: attribute.SourcePrincipal},
		{ID: attribute.RequestSize},
		{ID: attribute.RequestTime},
		{ID: attribute.RequestHeaders, Key: "x-user", Keyed: true},
	}}
	whole := &plan{refs: []expr.Ref{{ID: attribute.RequestHeaders}}}
	base := func(b *attribute.Bag) {
		b.SetString(attribute.SourcePrincipal, "spiffe://a")
		b.SetInt(attribute.RequestSize, 10)
		b.SetTimeNanos(attribute.RequestTime, 1e18)
		b.AddHeader(attribute.RequestHeaders, "x-user", "u1")
		b.AddHeader(attribute.RequestHeaders, "x-request-id", "1")
	}
	for _, tt := range []struct {
		name string
		p    *plan
		mod  func(b *attribute.Bag)
		same bool
	}{
		{"identical", p, func(*attribute.Bag) {}, true},
		{"unreferenced header differs", p, func(b *attribute.Bag) { b.AddHeader(attribute.RequestHeaders, "x-request-id", "2") }, true},
		{"unreferenced attribute set", p, func(b *attribute.Bag) { b.SetString(attribute.DestinationPrincipal, "x") }, true},
		{"string differs", p, func(b *attribute.Bag) { b.SetString(attribute.SourcePrincipal, "spiffe://b") }, false},
		{"string absent", p, func(b *attribute.Bag) { b.Unset(attribute.SourcePrincipal) }, false},
		{"empty string is not absent", p, func(b *attribute.Bag) { b.SetString(attribute.SourcePrincipal, "") }, false},
		{"int differs", p, func(b *attribute.Bag) { b.SetInt(attribute.RequestSize, 11) }, false},
		{"time differs", p, func(b *attribute.Bag) { b.SetTimeNanos(attribute.RequestTime, 1e18+1) }, false},
		{"keyed header differs", p, func(b *attribute.Bag) {
			b.Unset(attribute.RequestHeaders)
			b.SetMap(attribute.RequestHeaders, attribute.MapOf(map[string]string{"x-user": "u2"}))
		}, false},
		{"keyed header absent", p, func(b *attribute.Bag) {
			b.SetMap(attribute.RequestHeaders, attribute.MapOf(map[string]string{"x-request-id": "1"}))
		}, false},
		{"whole map, same pairs in another order", whole, func(b *attribute.Bag) {
			b.SetMap(attribute.RequestHeaders, attribute.MapOf(map[string]string{"x-request-id": "1", "x-user": "u1"}))
		}, true},
		{"whole map, another value", whole, func(b *attribute.Bag) {
			b.SetMap(attribute.RequestHeaders, attribute.MapOf(map[string]string{"x-request-id": "2", "x-user": "u1"}))
		}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var a, b attribute.Bag
			base(&a)
			base(&b)
			tt.mod(&b)
			ka, kb := tt.p.cacheKey(nil, &a), tt.p.cacheKey(nil, &b)
			if same := string(ka) == string(kb); same != tt.same {
				t.Errorf("keys %q and %q: same %v, want %v", ka, kb, same, tt.same)
			}
		})
	}
	// A whole map's pairs are length-prefixed: bytes moved from a key into its
	// value (a NUL, which a separator would not tell apart) change the key.
	var a, b attribute.Bag
	a.SetMap(attribute.RequestHeaders, attribute.MapOf(map[string]string{"a\x00b": "c"}))
	b.SetMap(attribute.RequestHeaders, attribute.MapOf(map[string]string{"a": "b\x00c"}))
	if ka, kb := whole.cacheKey(nil, &a), whole.cacheKey(nil, &b); string(ka) == string(kb) {
		t.Errorf("maps {a\\0b: c} and {a: b\\0c} share the key %q", ka)
	}
	// A keyed map absent altogether is not the map without the key: has() tells
	// them apart.
	var absent, keyless attribute.Bag
	keyless.SetMap(attribute.RequestHeaders, attribute.MapOf(map[string]string{"x-request-id": "1"}))
	if ka, kb := p.cacheKey(nil, &absent), p.cacheKey(nil, &keyless); string(ka) == string(kb) {
		t.Errorf("no headers and headers without x-user share the key %q", ka)
	}
}
