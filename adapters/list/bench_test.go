package list

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/templates/authorization"
)

// Benchmarks report the cost of one Authorize; they assert nothing.
//
//	go test -run '^$' -bench . -benchmem ./adapters/list

func benchList(b *testing.B, typ string, entries, probes []string) {
	p := defaults()
	p.EntryType, p.Overrides = typ, entries
	h, err := New(context.Background(), adapters.Env{Name: "bench/list"}, p)
	if err != nil {
		b.Fatal(err)
	}
	insts := make([]authorization.Instance, len(probes))
	for i, v := range probes {
		insts[i] = authorization.Instance{Name: "bench/inst", Value: v}
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := h.Authorize(ctx, &insts[i%len(insts)], nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStrings10k: a 10,000-principal allow-list, probed half with listed and half
// with unlisted principals (so half the answers are denials with a message).
func BenchmarkStrings10k(b *testing.B) {
	var entries, probes []string
	for i := 0; i < 10000; i++ {
		entries = append(entries, fmt.Sprintf("spiffe://cluster.local/ns/ns%d/sa/svc%d", i%97, i))
	}
	for i := 0; i < 1024; i++ {
		probes = append(probes, entries[(i*7919)%len(entries)], fmt.Sprintf("spiffe://cluster.local/ns/x/sa/other%d", i))
	}
	benchList(b, "STRINGS", entries, probes)
}

// BenchmarkCaseInsensitive10k: the same with mixed-case probes, which must be folded.
func BenchmarkCaseInsensitive10k(b *testing.B) {
	var entries, probes []string
	for i := 0; i < 10000; i++ {
		entries = append(entries, fmt.Sprintf("user%d@example.com", i))
	}
	for i := 0; i < 1024; i++ {
		probes = append(probes, fmt.Sprintf("User%d@Example.COM", (i*7919)%10000))
	}
	benchList(b, "CASE_INSENSITIVE_STRINGS", entries, probes)
}

// BenchmarkCIDR10k: 10,000 random IPv4 prefixes of /8 to /32, random IPv4 probes.
func BenchmarkCIDR10k(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	var entries, probes []string
	for i := 0; i < 10000; i++ {
		a := netip.AddrFrom4([4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())})
		entries = append(entries, netip.PrefixFrom(a, 8+rng.IntN(25)).Masked().String())
	}
	for i := 0; i < 1024; i++ {
		probes = append(probes, netip.AddrFrom4([4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}).String())
	}
	benchList(b, "IP_ADDRESSES", entries, probes)
}

// BenchmarkCIDR10kIPv6: 10,000 random IPv6 prefixes of /32 to /128 under 2001:db8::/16.
func BenchmarkCIDR10kIPv6(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 6))
	rand6 := func() netip.Addr {
		var a [16]byte
		a[0], a[1] = 0x20, 0x01
		for i := 2; i < 16; i++ {
			a[i] = byte(rng.Uint32())
		}
		return netip.AddrFrom16(a)
	}
	var entries, probes []string
	for i := 0; i < 10000; i++ {
		entries = append(entries, netip.PrefixFrom(rand6(), 32+rng.IntN(97)).Masked().String())
	}
	for i := 0; i < 1024; i++ {
		probes = append(probes, rand6().String())
	}
	benchList(b, "IP_ADDRESSES", entries, probes)
}

// BenchmarkRegex100: 100 path regexes, probed with matching and unmatched paths.
func BenchmarkRegex100(b *testing.B) {
	var entries, probes []string
	for i := 0; i < 100; i++ {
		entries = append(entries, fmt.Sprintf(`/api/v[0-9]+/svc%d/.*`, i))
	}
	for i := 0; i < 256; i++ {
		probes = append(probes, fmt.Sprintf("/api/v2/svc%d/items/%d", i%150, i))
	}
	benchList(b, "REGEX", entries, probes)
}
