package check_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/sluicemesh/sluice/adapters/all"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/check"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/dispatch"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/mixer/registry"
)

// TestReappliedSnapshot: a config applied again after another (A, B, A) runs on
// handlers started anew, and checks use those, not the ones B's reload closed,
// though no check ran while B was applied to move the server past A's plan. The
// quota handler of A is started afresh, so its count starts again.
func TestReappliedSnapshot(t *testing.T) {
	quota, err := os.ReadFile("testdata/quota.yaml")
	if err != nil {
		t.Fatal(err)
	}
	comp, err := expr.NewCompiler(attribute.NewVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	load := func(cfg string) *config.Snapshot {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "quota.yaml"), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		snap, err := (&config.Loader{Dir: dir, Adapters: all.Registry(), Compiler: comp}).Load()
		if err != nil {
			t.Fatal(err)
		}
		return snap
	}
	a := load(string(quota))
	b := load(strings.Replace(string(quota), "maxAmount: 3", "maxAmount: 5", 1))

	reg := registry.New("cluster.local")
	disp, err := dispatch.New(dispatch.Options{Registry: reg, TrustDomain: reg.TrustDomain(), Compiler: comp, Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = disp.Close(context.Background()) }()
	s, err := check.New(check.Options{Dispatcher: disp, Registry: reg, Compiler: comp, Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	apply := func(snap *config.Snapshot) {
		if err := disp.Apply(ctx, snap); err != nil {
			t.Fatal(err)
		}
	}
	allowed := func() bool {
		resp, err := s.Check(ctx, call{"spiffe://cluster.local/ns/shop/sa/frontend", "GET", "/items", map[string]string{"x-user": "ann"}}.request())
		if err != nil {
			t.Fatal(err)
		}
		return codes.Code(resp.GetStatus().GetCode()) == codes.OK
	}

	apply(a)
	for i := range 3 {
		if !allowed() {
			t.Fatalf("request %d of 3 denied", i+1)
		}
	}
	if allowed() {
		t.Fatal("the 4th request of a quota of 3 was allowed: the quota does not apply")
	}
	apply(b)
	apply(a)
	if !allowed() {
		t.Error("denied after A was applied again: the check used the quota handler that B's reload closed")
	}
}
