//go:build integration

package check_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/redis/go-redis/v9"

	"github.com/sluicemesh/sluice/adapters/quotakit/quotatest"
	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
	"github.com/sluicemesh/sluice/templates/quota"
)

// replica is one Sluice's rate-limit service seen as a quota.RateLimiter: each request
// of a batch becomes a descriptor of one RateLimitRequest, sent over gRPC.
type replica struct {
	client rlsv3.RateLimitServiceClient
	clock  *clock
	domain string
	key    string
}

func (r replica) Allow(ctx context.Context, now time.Time, reqs []quota.Request, out []quota.Decision) error {
	r.clock.Set(now)
	req := &rlsv3.RateLimitRequest{Domain: r.domain}
	for range reqs {
		req.Descriptors = append(req.Descriptors, &rlcommon.RateLimitDescriptor{
			Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: r.key, Value: "shared-user"}}})
	}
	resp, err := r.client.ShouldRateLimit(ctx, req)
	if err != nil {
		return err
	}
	for i, st := range resp.GetStatuses() {
		out[i] = quota.Decision{Allowed: st.GetCode() == rlsv3.RateLimitResponse_OK, Remaining: uint64(st.GetLimitRemaining())}
	}
	return nil
}

// TestIntegrationReplicasShareRedis runs two whole Sluice replicas with --redis-addr
// pointing at one real Redis, many concurrent clients spread over both, and checks,
// per algorithm, every round's answer against an exact model and the algorithm's
// guarantee: exactly the limit per fixed window; never more than the limit in any
// sliding window and the limit minus one at least in steady state; never more than
// burst + rate × T over any interval T of a token bucket.
func TestIntegrationReplicasShareRedis(t *testing.T) {
	addr := quotatest.StartRedis(t)
	dir := t.TempDir()
	cfg := `domain: replicas
descriptors:
- key: fixed
  rate_limit: {unit: minute, requests_per_unit: 40}
- key: sliding
  rate_limit: {unit: minute, requests_per_unit: 40, algorithm: sliding_window}
- key: bucket
  rate_limit: {unit: minute, requests_per_unit: 40, algorithm: token_bucket}
`
	if err := os.WriteFile(filepath.Join(dir, "replicas.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	shared := &clock{now: quotatest.Base()}
	var servers []*server
	for range 2 {
		servers = append(servers, startServer(t, func(o *mixer.Options) {
			o.RedisAddr = addr
			// A race-detector stall on a loaded machine can exceed the 50ms default;
			// a timed-out decision is allowed (fail open), which no model predicts.
			o.RedisTimeout = time.Second
			o.Now = shared.Now
		}, filepath.Join(dir, "replicas.yaml")))
	}
	for _, alg := range []struct {
		key string
		alg quota.Algorithm
	}{{"fixed", quota.FixedWindow}, {"sliding", quota.SlidingWindow}, {"bucket", quota.TokenBucket}} {
		t.Run(alg.key, func(t *testing.T) {
			var replicas []quota.RateLimiter
			// One replica is asked on its gRPC port, the other on its check listener.
			for i, s := range servers {
				conn := s.via([]string{"grpc", "check"}[i])
				replicas = append(replicas, replica{client: rlsv3.NewRateLimitServiceClient(conn), clock: shared, domain: "replicas", key: alg.key})
			}
			quotatest.Concurrent{
				Limit:  quota.Limit{Requests: 40, Window: time.Minute, Algorithm: alg.alg},
				Rounds: 60, Workers: 16, PerWorker: 3, MaxStep: 7 * time.Second, Seed: 7,
			}.Run(t, replicas, "")
		})
	}
	// The exact counts above hold only if Redis decided every request: say so when
	// the fail policy decided some instead.
	for i, s := range servers {
		f, err := loadtest.Scrape(context.Background(), s.url)
		if err != nil {
			t.Fatal(err)
		}
		if n := f.Sum("sluice_adapter_errors_total", map[string]string{"adapter": "redisquota"}); n != 0 {
			t.Errorf("replica %d: %v decisions made by the fail policy (Redis timed out or failed)", i, n)
		}
	}
}

// TestIntegrationUnknownDomainOverrideNotCounted: a limit Envoy sends with a
// descriptor of an unknown domain is not a limit (envoyproxy/ratelimit: an unknown
// domain has none), so it is answered OK and nothing is counted in Redis; the
// same override in a known domain is counted there, which shows the test can see a
// charge.
func TestIntegrationUnknownDomainOverrideNotCounted(t *testing.T) {
	addr := quotatest.StartRedis(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "known.yaml"), []byte("domain: known\ndescriptors:\n- key: user\n  rate_limit: {unit: minute, requests_per_unit: 100}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, func(o *mixer.Options) {
		o.RedisAddr = addr
		o.RedisTimeout = time.Second
	}, filepath.Join(dir, "known.yaml"))
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	keys := func() []string {
		t.Helper()
		k, err := rdb.Keys(ctx, "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	client := rlsv3.NewRateLimitServiceClient(s.via("grpc"))
	ask := func(domain string) rlsv3.RateLimitResponse_Code {
		t.Helper()
		resp, err := client.ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{Domain: domain, Descriptors: []*rlcommon.RateLimitDescriptor{{
			Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: "u1"}},
			Limit:   &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1, Unit: typev3.RateLimitUnit_HOUR},
		}}})
		if err != nil {
			t.Fatalf("%s: %v", domain, err)
		}
		return resp.GetOverallCode()
	}
	for i := range 3 {
		if code := ask("unknown"); code != rlsv3.RateLimitResponse_OK {
			t.Errorf("unknown domain, request %d: %v", i, code)
		}
	}
	if k := keys(); len(k) != 0 {
		t.Errorf("an unknown domain's override was counted in Redis: %q", k)
	}
	if code := ask("known"); code != rlsv3.RateLimitResponse_OK {
		t.Errorf("known domain, first request: %v", code)
	}
	if code := ask("known"); code != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Errorf("known domain, second request over an override of 1 per hour: %v", code)
	}
	if len(keys()) == 0 {
		t.Error("a known domain's override left no key in Redis")
	}
}
