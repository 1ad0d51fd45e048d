//go:build integration

package check_test

import (
	"testing"

	"github.com/sluicemesh/sluice/adapters/quotakit/quotatest"
	"github.com/sluicemesh/sluice/loadtest"
)

// BenchmarkCheckRedis: BenchmarkCheck's ext_authz scenarios with the quota
// handler in redisquota, on a redis-server this benchmark starts: the check
// path's own work and allocations when every check is counted in Redis, one
// round trip each (one goroutine, so no pipeline carries two calls).
func BenchmarkCheckRedis(b *testing.B) {
	cfg, err := loadtest.BenchRedisConfig(quotatest.StartRedis(b))
	if err != nil {
		b.Fatal(err)
	}
	benchChecks(b, cfg, []benchCase{{"ext_authz", "hit"}, {"ext_authz", "miss"}})
}
