package check_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
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
	p := newInProcess(t)
	a := p.load(t, quota)
	b := p.load(t, []byte(strings.Replace(string(quota), "maxAmount: 3", "maxAmount: 5", 1)))
	ctx := context.Background()
	allowed := func() bool {
		resp, err := p.server.Check(ctx, call{"spiffe://cluster.local/ns/shop/sa/frontend", "GET", "/items", map[string]string{"x-user": "ann"}}.request())
		if err != nil {
			t.Fatal(err)
		}
		return codes.Code(resp.GetStatus().GetCode()) == codes.OK
	}

	p.apply(t, a)
	for i := range 3 {
		if !allowed() {
			t.Fatalf("request %d of 3 denied", i+1)
		}
	}
	if allowed() {
		t.Fatal("the 4th request of a quota of 3 was allowed: the quota does not apply")
	}
	p.apply(t, b)
	p.apply(t, a)
	if !allowed() {
		t.Error("denied after A was applied again: the check used the quota handler that B's reload closed")
	}
}

// TestReappliedSnapshotCacheEntries: after A, B, A with no check during B, the
// cache entries gauge shows the new runtime's empty cache, not the entries of the
// plan A had before, which no check uses any more.
func TestReappliedSnapshotCacheEntries(t *testing.T) {
	policy, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := newInProcess(t)
	a := p.load(t, policy)
	b := p.load(t, []byte(strings.Replace(string(policy), "legacy clients are retired", "legacy clients are gone", 1)))
	entries := func() float64 { return gather(t, p.metrics).Sum("sluice_check_cache_entries", nil) }

	p.apply(t, a)
	if _, err := p.server.Check(context.Background(), call{"spiffe://cluster.local/ns/shop/sa/frontend", "GET", "/items", map[string]string{"x-user": "ann"}}.request()); err != nil {
		t.Fatal(err)
	}
	if n := entries(); n == 0 {
		t.Fatal("no cache entry after a check: the test's request is not cached")
	}
	p.apply(t, b)
	p.apply(t, a)
	if n := entries(); n != 0 {
		t.Errorf("sluice_check_cache_entries = %v after A was applied again, want 0: it shows the cache of the plan B's reload retired", n)
	}
}
