//go:build integration

package redisquota

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/templates/quota"
)

func benchHandler(b *testing.B, addr string, cache int) *Handler {
	b.Helper()
	p := defaults()
	p.RedisServerURL, p.LocalCacheSize, p.Timeout = addr, cache, time.Second
	h, err := New(context.Background(), adapters.Env{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, p, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Close(context.Background()) })
	return h
}

// BenchmarkRedisAllow measures one Allow call (one pipeline, one round trip to a
// loopback redis-server) per batch size and algorithm, from one goroutine: the
// latency of a batch. Keys are distinct within a batch and limits are high, so
// every decision runs its script and is allowed.
func BenchmarkRedisAllow(b *testing.B) {
	s := startRedis(b)
	h := benchHandler(b, s.addr, 0)
	for _, alg := range []quota.Algorithm{quota.FixedWindow, quota.SlidingWindow, quota.TokenBucket} {
		for _, size := range []int{1, 10, 100} {
			b.Run(fmt.Sprintf("%s/batch=%d", alg, size), func(b *testing.B) {
				l := quota.Limit{Requests: 1 << 40, Window: time.Second, Algorithm: alg}
				reqs := make([]quota.Request, size)
				for i := range reqs {
					reqs[i] = quota.Request{Key: fmt.Sprintf("bench/%s/%d/%d", alg, size, i), Limit: l, Hits: 1}
				}
				out := make([]quota.Decision, size)
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					if err := h.Allow(context.Background(), time.Now(), reqs, out); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*size), "ns/decision")
			})
		}
	}
}

// BenchmarkRedisAllowParallel measures one-decision Allow calls from many
// goroutines on two handlers (replicas), over 1024 keys: throughput when checks
// arrive concurrently, as they do from a gRPC server. inflight=2 is the default,
// where concurrent calls share pipelines; inflight=1024 gives every call a
// pipeline of its own, as before the coalescer.
func BenchmarkRedisAllowParallel(b *testing.B) {
	s := startRedis(b)
	for _, inflight := range []int{DefaultMaxInFlight, 1024} {
		hs := []*Handler{benchHandler(b, s.addr, 0), benchHandler(b, s.addr, 0)}
		for _, h := range hs {
			h.pipes = newCoalescer(newSlots(inflight), h.sendJobs)
		}
		for _, alg := range []quota.Algorithm{quota.FixedWindow, quota.SlidingWindow, quota.TokenBucket} {
			b.Run(fmt.Sprintf("inflight=%d/%s", inflight, alg), func(b *testing.B) {
				l := quota.Limit{Requests: 1 << 40, Window: time.Second, Algorithm: alg}
				b.SetParallelism(16)
				b.ReportAllocs()
				b.ResetTimer()
				var n atomic.Int64
				b.RunParallel(func(pb *testing.PB) {
					h := hs[n.Add(1)%2]
					reqs := []quota.Request{{Limit: l, Hits: 1}}
					out := make([]quota.Decision, 1)
					i := 0
					for pb.Next() {
						reqs[0].Key = fmt.Sprint("par/", alg, "/", i%1024)
						i++
						if err := h.Allow(context.Background(), time.Now(), reqs, out); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(callsPerPipeline(b, hs...), "calls/pipeline")
			})
		}
	}
}

// callsPerPipeline is the mean of the handlers' sluice_redisquota_pipeline_calls
// since they started.
func callsPerPipeline(b *testing.B, hs ...*Handler) float64 {
	var sum, n float64
	for _, h := range hs {
		var m dto.Metric
		if err := h.pipelineCalls.Write(&m); err != nil {
			b.Fatal(err)
		}
		sum += m.GetHistogram().GetSampleSum()
		n += float64(m.GetHistogram().GetSampleCount())
	}
	return sum / n
}

// BenchmarkRedisAllowDeniedLocally measures a hot offender: a key already over its
// limit, answered from the local cache without reaching Redis.
func BenchmarkRedisAllowDeniedLocally(b *testing.B) {
	s := startRedis(b)
	h := benchHandler(b, s.addr, DefaultLocalCacheSize)
	reqs := []quota.Request{{Key: "offender", Limit: quota.Limit{Requests: 1, Window: time.Hour}, Hits: 1}}
	out := make([]quota.Decision, 1)
	now := time.Now()
	for range 2 {
		if err := h.Allow(context.Background(), now, reqs, out); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := h.Allow(context.Background(), now, reqs, out); err != nil || out[0].Allowed {
			b.Fatal(err, out[0])
		}
	}
}
