package envoy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sluicemesh/sluice/mixer/registry"
)

// TestCertifiedCacheBytesBounded: the cache of peers known by their certificates
// holds maxPeerCache principals, and each at most maxCachedPrincipal bytes: a
// client sending principals as long as its messages (which only one reaching the
// check port itself can) must not make each entry that long.
func TestCertifiedCacheBytesBounded(t *testing.T) {
	d := NewCheckDecoder(registry.New("cluster.local"))
	const n = 100
	sa := strings.Repeat("a", 64<<10)
	for i := range n {
		ns := fmt.Sprint("ns", i)
		w := d.certified("spiffe://cluster.local/ns/"+ns+"/sa/"+sa, ns, sa)
		if w.Namespace != ns || w.ServiceAccount != sa {
			t.Fatalf("principal %d: workload of %s/%.10s…", i, w.Namespace, w.ServiceAccount)
		}
	}
	w := d.certified("spiffe://cluster.local/ns/shop/sa/frontend", "shop", "frontend")
	if w.Namespace != "shop" || w.ServiceAccount != "frontend" {
		t.Fatalf("workload of %s/%s", w.Namespace, w.ServiceAccount)
	}
	held := 0
	for p := range d.principals {
		held += len(p)
	}
	if bound := len(d.principals) * maxCachedPrincipal; held > bound {
		t.Errorf("%d cached principals hold %d bytes, want at most %d", len(d.principals), held, bound)
	}
	if _, ok := d.principals["spiffe://cluster.local/ns/shop/sa/frontend"]; !ok {
		t.Error("an ordinary principal is not cached")
	}
}
