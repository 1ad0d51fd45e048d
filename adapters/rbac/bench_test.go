package rbac

import (
	"context"
	"testing"

	"github.com/sluicemesh/sluice/adapters"
)

// Benchmarks report the cost of one Authorize with the core's compiler and
// attributes; they assert nothing.
//
//	go test -run '^$' -bench . -benchmem ./adapters/rbac

func benchRBAC(b *testing.B, action string, kv map[string]any) {
	p := defaults()
	p.Action, p.Policies = action, shop
	h, err := New(adapters.Env{Name: "bench/rbac", Compiler: compiler(b)}, p)
	if err != nil {
		b.Fatal(err)
	}
	a := attrs(b, kv)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := h.Authorize(ctx, nil, a); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAllowFirstPolicy: the first of three policies allows.
func BenchmarkAllowFirstPolicy(b *testing.B) {
	benchRBAC(b, Allow, map[string]any{"source.principal": frontend, "request.method": "GET", "request.path": "/api/items", "source.ip": "192.0.2.1"})
}

// BenchmarkAllowLastPolicy: the first two policies are evaluated and fail to match,
// the third (a header and mTLS) allows.
func BenchmarkAllowLastPolicy(b *testing.B) {
	benchRBAC(b, Allow, map[string]any{
		"source.principal": "spiffe://cluster.local/ns/shop/sa/cart", "request.method": "GET", "request.path": "/api/items",
		"source.ip": "192.0.2.1", "request.headers": map[string]string{"x-role": "admin", "user-agent": "curl"}, "connection.mtls": true,
	})
}

// BenchmarkDenyNoMatch: all three policies are evaluated under DENY and none matches,
// the common case of a deny-policy set.
func BenchmarkDenyNoMatch(b *testing.B) {
	benchRBAC(b, Deny, map[string]any{
		"source.principal": "spiffe://cluster.local/ns/shop/sa/cart", "request.method": "POST", "request.path": "/api/items",
		"source.ip": "192.0.2.1", "request.headers": map[string]string{"x-role": "user"}, "connection.mtls": true,
	})
}

// BenchmarkDenyNoMatchMissing: as above with the IP and header missing, so two
// policies take the missing-attribute path.
func BenchmarkDenyNoMatchMissing(b *testing.B) {
	benchRBAC(b, Deny, map[string]any{
		"source.principal": "spiffe://cluster.local/ns/shop/sa/cart", "request.method": "POST", "request.path": "/api/items",
	})
}
