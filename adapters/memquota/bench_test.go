package memquota

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/quotakit/quotatest"
	"github.com/sluicemesh/sluice/templates/quota"
)

// BenchmarkAllow measures one decision per Allow call from parallel goroutines,
// per algorithm, over many keys (spread over the shards) and over one hot key
// (every goroutine on one lock). Each goroutine's clock advances 1µs per call, so
// windows turn and buckets refill as they would under 1M checks/s per goroutine;
// the limit (1000/s) makes most decisions denials.
func BenchmarkAllow(b *testing.B) {
	for _, alg := range []quota.Algorithm{quota.FixedWindow, quota.SlidingWindow, quota.TokenBucket} {
		for _, keys := range []int{1024, 1} {
			b.Run(fmt.Sprintf("%s/keys=%d", alg, keys), func(b *testing.B) {
				h, err := New(adapters.Env{}, &Params{MaxKeys: DefaultMaxKeys}, nil)
				if err != nil {
					b.Fatal(err)
				}
				defer h.Close(context.Background())
				names := make([]string, keys)
				for i := range names {
					names[i] = fmt.Sprintf("ns/rq;source=workload-%d", i)
				}
				l := quota.Limit{Requests: 1000, Window: time.Second, Algorithm: alg}
				base := quotatest.Base()
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					reqs := []quota.Request{{Limit: l, Hits: 1}}
					out := make([]quota.Decision, 1)
					i := 0
					for pb.Next() {
						reqs[0].Key = names[i%keys]
						if err := h.Allow(context.Background(), base.Add(time.Duration(i)*time.Microsecond), reqs, out); err != nil {
							b.Error(err)
							return
						}
						i++
					}
				})
			})
		}
	}
}

// BenchmarkQuota measures a quota instance check: resolving the quota and override
// and composing the key from the dimensions, then one decision.
func BenchmarkQuota(b *testing.B) {
	p := &Params{MaxKeys: DefaultMaxKeys}
	p.Quotas = append(p.Quotas, quotaFor("rq"))
	h, err := New(adapters.Env{}, p, []string{"ns/rq"})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close(context.Background())
	inst := &quota.Instance{Name: "ns/rq", Dimensions: map[string]string{"source": "productpage", "destination": "reviews"}}
	now := quotatest.Base()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := h.Quota(context.Background(), now.Add(time.Duration(i)*time.Microsecond), inst, 1); err != nil {
			b.Fatal(err)
		}
	}
}
