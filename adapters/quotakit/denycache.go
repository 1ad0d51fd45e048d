package quotakit

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/sluicemesh/sluice/templates/quota"
)

// DenyCache remembers keys that a backend denied, until the time their next hit
// could be allowed, so that hot offenders are answered locally instead of from Redis.
// That is exact for every algorithm: once a one-hit request is denied, only time
// can allow the next one (a fixed window's reset, a sliding log's oldest hit leaving,
// a bucket's refill), and other replicas can only take more from the same limit.
// A cached denial answers one-hit requests exactly (its ResetAfter is when one hit
// could be allowed); requests of more hits are answered from it only where that is
// exact too (a fixed window, which resets for every request at once), and go to
// the backend otherwise. The cache is bounded: a full shard drops an expired entry,
// or else an arbitrary one. A nil *DenyCache caches nothing.
type DenyCache struct {
	seed     maphash.Seed
	perShard int
	shards   [denyShards]denyShard
}

const denyShards = 16

type denyShard struct {
	mu sync.Mutex
	m  map[DenyKey]denial
	_  [48]byte // keeps the shards' locks on separate cache lines
}

type denial struct {
	until   int64 // µs
	anyHits bool  // the answer holds for requests of any hits
}

// DenyKey identifies a limit in the cache: the backend's key for it (which holds
// the algorithm) with its Requests and Window, so that a limit raised or shortened
// by a config change is not answered from an old denial.
type DenyKey struct {
	Key      string
	Requests uint64
	Window   time.Duration
}

// NewDenyCache returns a cache of about size keys, or nil when size is 0.
func NewDenyCache(size int) *DenyCache {
	if size <= 0 {
		return nil
	}
	c := &DenyCache{seed: maphash.MakeSeed(), perShard: max(1, (size+denyShards-1)/denyShards)}
	for i := range c.shards {
		c.shards[i].m = make(map[DenyKey]denial)
	}
	return c
}

func (c *DenyCache) shard(k DenyKey) *denyShard {
	return &c.shards[maphash.String(c.seed, k.Key)%denyShards]
}

// Lookup returns the cached denial of a request of hits for k at now (µs), if the
// cache can answer it. A request of zero hits only asks, and may be allowed where a
// hit would not be, so it is never answered from the cache.
func (c *DenyCache) Lookup(k DenyKey, hits uint64, now int64) (quota.Decision, bool) {
	if c == nil || hits == 0 {
		return quota.Decision{}, false
	}
	s := c.shard(k)
	s.mu.Lock()
	d, ok := s.m[k]
	if ok && d.until <= now {
		delete(s.m, k)
		ok = false
	}
	s.mu.Unlock()
	if !ok || (hits > 1 && !d.anyHits) {
		return quota.Decision{}, false
	}
	return quota.Decision{Allowed: false, Remaining: 0, ResetAfter: time.Duration(d.until-now) * time.Microsecond}, true
}

// Add caches that k denies every hit until until (µs); anyHits says that until is
// also when a request of more hits could be allowed. Add does nothing when until
// is not after now.
func (c *DenyCache) Add(k DenyKey, until int64, anyHits bool, now int64) {
	if c == nil || until <= now {
		return
	}
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[k]; !ok && len(s.m) >= c.perShard {
		s.evict(now)
	}
	s.m[k] = denial{until: until, anyHits: anyHits}
}

// evict drops one entry: the first expired one among a few visited, else the first
// visited. Map iteration starts at a random place, so the victim is a random one.
func (s *denyShard) evict(now int64) {
	const visits = 16
	var victim DenyKey
	n := 0
	for k, d := range s.m {
		if d.until <= now {
			victim = k
			break
		}
		if n == 0 {
			victim = k
		}
		if n++; n == visits {
			break
		}
	}
	delete(s.m, victim)
}

// Len is the number of cached keys, expired ones included.
func (c *DenyCache) Len() int {
	if c == nil {
		return 0
	}
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}
