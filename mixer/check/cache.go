package check

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemesh/sluice/templates/authorization"
)

// cache is a bounded LRU of policy-check results, keyed by the values of the attributes
// the active check rules read. It is sharded so that concurrent checks rarely share
// a lock: each shard is an LRU of its part of the bound, so the cache holds the bound
// at most but a shard can evict before the whole is full. Quota results are never
// stored here.
type cache struct {
	seed   maphash.Seed
	shards []cacheShard

	hits, misses, evictions, skips prometheus.Counter
}

// maxKeyBytes bounds the key of a cached answer. The cache holds a bounded number
// of entries, and a key is the values of the attributes the rules read, which the
// client sends: a rule reading every header would let 10,000 entries of 60 KiB
// headers hold 600 MiB. Such keys hold x-request-id and never repeat anyway.
const maxKeyBytes = 4 << 10

type cacheShard struct {
	mu    sync.Mutex
	limit int // entries at most; the shards' limits add up to the cache's size
	items map[string]*cacheEntry
	// lru is the sentinel of a ring of the entries: lru.next is the most recently
	// used, lru.prev the least. The entries link themselves, so that a full shard
	// reuses the entry it evicts and a miss allocates little more than its key.
	lru cacheEntry
}

type cacheEntry struct {
	key        string
	result     authorization.Result
	rule       string
	expires    time.Time
	prev, next *cacheEntry
}

// maxShards is how many shards a cache has, fewer when its size is smaller.
const maxShards = 16

// newCache returns a cache of size entries at most; size is at least 1.
func newCache(size int, m *metrics) *cache {
	n := min(size, maxShards)
	c := &cache{seed: maphash.MakeSeed(), shards: make([]cacheShard, n),
		hits: m.cacheHits, misses: m.cacheMisses, evictions: m.cacheEvictions, skips: m.cacheSkips}
	for i := range c.shards {
		s := &c.shards[i]
		s.limit = size / n
		if i < size%n {
			s.limit++
		}
		s.items = map[string]*cacheEntry{}
		s.lru.prev, s.lru.next = &s.lru, &s.lru
	}
	return c
}

func (c *cache) shard(key []byte) *cacheShard {
	return &c.shards[maphash.Bytes(c.seed, key)%uint64(len(c.shards))]
}

func (s *cacheShard) unlink(e *cacheEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (s *cacheShard) pushFront(e *cacheEntry) {
	e.prev, e.next = &s.lru, s.lru.next
	s.lru.next.prev = e
	s.lru.next = e
}

// get returns a result still valid at now.
func (c *cache) get(key []byte, now time.Time) (authorization.Result, string, bool) {
	s := c.shard(key)
	s.mu.Lock()
	e, ok := s.items[string(key)]
	if ok {
		if now.Before(e.expires) {
			s.unlink(e)
			s.pushFront(e)
			r, rule := e.result, e.rule
			s.mu.Unlock()
			c.hits.Inc()
			return r, rule, true
		}
		s.unlink(e)
		delete(s.items, e.key)
	}
	s.mu.Unlock()
	c.misses.Inc()
	return authorization.Result{}, "", false
}

// put stores a result valid until expires, evicting the least recently used entry of
// a full shard; a key longer than maxKeyBytes is not stored.
func (c *cache) put(key []byte, r authorization.Result, rule string, expires time.Time) {
	if len(key) > maxKeyBytes {
		c.skips.Inc()
		return
	}
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.items[string(key)]; ok {
		e.result, e.rule, e.expires = r, rule, expires
		s.unlink(e)
		s.pushFront(e)
		return
	}
	var e *cacheEntry
	if len(s.items) >= s.limit {
		e = s.lru.prev
		s.unlink(e)
		delete(s.items, e.key)
		c.evictions.Inc()
	} else {
		e = &cacheEntry{}
	}
	*e = cacheEntry{key: string(key), result: r, rule: rule, expires: expires}
	s.items[e.key] = e
	s.pushFront(e)
}

// len returns the number of entries, for the size gauge; 0 when the cache is off.
func (c *cache) len() int {
	if c == nil {
		return 0
	}
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.items)
		s.mu.Unlock()
	}
	return n
}
