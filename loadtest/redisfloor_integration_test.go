//go:build integration

package loadtest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sluicemesh/sluice/adapters/quotakit/quotatest"
)

// TestIntegrationRedisFloor runs the noop-redis floor against the Debian
// redis-server: every call it answers OK was counted in Redis first, a call
// Redis refuses is answered UNAVAILABLE, and a Redis it cannot reach is refused
// at start.
func TestIntegrationRedisFloor(t *testing.T) {
	raddr := quotatest.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	defer rdb.Close()
	ctx, cancel := context.WithCancel(context.Background())
	addr := freeAddr()
	errc := make(chan error, 1)
	go func() { errc <- ServeNoopH2(ctx, addr, raddr) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("floor server: %v", err)
		}
	})
	waitListening(t, addr)
	check, err := newScenario("ext_authz", "miss")
	if err != nil {
		t.Fatal(err)
	}
	// Its requests carry two descriptors each.
	rls, err := newScenario("ratelimit", "hit")
	if err != nil {
		t.Fatal(err)
	}

	// send makes n calls of sc in batches of 25 on one connection and returns
	// their outcomes.
	send := func(t *testing.T, d h2Driver, sc *scenario, n int) map[int]error {
		got := &outcomes{errs: map[int]error{}}
		c, wait := d.dial(t, addr, sc.method, func([]byte) error { return nil }, got.done, nil)
		for i := 0; i < n; i += 25 {
			var reqs []h2Request
			for j := i; j < min(n, i+25); j++ {
				reqs = append(reqs, h2Request{slot: j, msg: sc.request(int64(j))})
			}
			c.send(reqs)
		}
		if err := wait(); err != nil {
			t.Fatalf("connection failed: %v", err)
		}
		if len(got.errs) != n {
			t.Fatalf("%d outcomes, want %d", len(got.errs), n)
		}
		return got.errs
	}
	counted := func(t *testing.T) int64 {
		n, err := rdb.Get(context.Background(), FloorKey).Int64()
		if err != nil {
			t.Fatalf("read the floor's count: %v", err)
		}
		return n
	}

	for _, d := range h2Drivers {
		t.Run("counted before answered/"+d.name, func(t *testing.T) {
			// The key's 1 s window starts at the first call, and 500 calls
			// take a few tens of milliseconds.
			if err := rdb.Del(context.Background(), FloorKey).Err(); err != nil {
				t.Fatal(err)
			}
			for slot, err := range send(t, d, check, 400) {
				if err != nil {
					t.Fatalf("check %d: %v", slot, err)
				}
			}
			for slot, err := range send(t, d, rls, 100) {
				if err != nil {
					t.Fatalf("rate-limit request %d: %v", slot, err)
				}
			}
			if got := counted(t); got != 400+2*100 {
				t.Errorf("Redis counted %d, want 600: one per check, one per descriptor", got)
			}
		})
	}
	t.Run("refused by Redis", func(t *testing.T) {
		// INCRBY fails on a value that is not a number: every call's script
		// call is answered with an error.
		if err := rdb.Set(context.Background(), FloorKey, "not a number", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		defer rdb.Del(context.Background(), FloorKey)
		for slot, err := range send(t, h2Drivers[0], check, 50) {
			if err == nil || !strings.Contains(err.Error(), "grpc-status 14") {
				t.Fatalf("request %d: error %v, want grpc-status 14", slot, err)
			}
		}
	})
	t.Run("no Redis", func(t *testing.T) {
		err := ServeNoopH2(context.Background(), freeAddr(), freeAddr())
		if err == nil || !strings.Contains(err.Error(), "dial redis") {
			t.Fatalf("serve with no Redis: %v, want a dial error", err)
		}
	})
}
