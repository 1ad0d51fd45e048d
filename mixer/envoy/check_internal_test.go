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

// TestPeerCacheBytesBounded: the access-log decoder's cache of peer headers keeps
// none longer than maxCachedPeerHeader, though it still decodes them.
func TestPeerCacheBytesBounded(t *testing.T) {
	d := NewDecoder("cluster.local")
	ok, err := EncodePeerMetadata(&registry.Workload{Name: "frontend", Namespace: "shop", Instance: "frontend-x"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		long := fmt.Sprintf("%d%s", i, strings.Repeat("A", 64<<10))
		d.peer(long) // not base64 of a Struct: counted as bad, and not kept
	}
	if w := d.peer(ok); w == nil || w.Name != "frontend" {
		t.Fatalf("an ordinary header decodes to %+v", w)
	}
	held := 0
	for h := range d.peers {
		held += len(h)
	}
	if bound := len(d.peers) * maxCachedPeerHeader; held > bound {
		t.Errorf("%d cached headers hold %d bytes, want at most %d", len(d.peers), held, bound)
	}
	if d.Stats.BadPeerMetadata != 100 {
		t.Errorf("%d bad headers counted, want 100", d.Stats.BadPeerMetadata)
	}
}
