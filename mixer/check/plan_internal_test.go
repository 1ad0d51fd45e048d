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
