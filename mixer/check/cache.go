package check

import (
	"container/list"
	"hash/maphash"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemesh/sluice/templates/authorization"
)

// cache is a bounded LRU of policy-check results, keyed by the values of the attributes
// the active check rules read. It is sharded so that concurrent checks rarely share
// a lock. Quota results are never stored here.
type cache struct {
	seed   maphash.Seed
	shards []cacheShard
	perCap int

	hits, misses, evictions prometheus.Counter
}

type cacheShard struct {
	mu    sync.Mutex
	items map[string]*list.Element
	order *list.List // front: most recently used
}

type cacheEntry struct {
	key     string
	result  authorization.Result
	rule    string
	expires time.Time
}

func newCache(size int, m *metrics) *cache {
	const nshards = 16
	c := &cache{seed: maphash.MakeSeed(), shards: make([]cacheShard, nshards), perCap: max(1, size/nshards),
		hits: m.cacheHits, misses: m.cacheMisses, evictions: m.cacheEvictions}
	for i := range c.shards {
		c.shards[i].items = map[string]*list.Element{}
		c.shards[i].order = list.New()
	}
	return c
}

func (c *cache) shard(key []byte) *cacheShard {
	return &c.shards[maphash.Bytes(c.seed, key)%uint64(len(c.shards))]
}

// get returns a result still valid at now.
func (c *cache) get(key []byte, now time.Time) (authorization.Result, string, bool) {
	s := c.shard(key)
	s.mu.Lock()
	el, ok := s.items[string(key)]
	if ok {
		e := el.Value.(*cacheEntry)
		if now.Before(e.expires) {
			s.order.MoveToFront(el)
			r, rule := e.result, e.rule
			s.mu.Unlock()
			c.hits.Inc()
			return r, rule, true
		}
		s.order.Remove(el)
		delete(s.items, e.key)
	}
	s.mu.Unlock()
	c.misses.Inc()
	return authorization.Result{}, "", false
}

// put stores a result valid until expires, evicting the least recently used entry of
// a full shard.
func (c *cache) put(key []byte, r authorization.Result, rule string, expires time.Time) {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.items[string(key)]; ok {
		e := el.Value.(*cacheEntry)
		e.result, e.rule, e.expires = r, rule, expires
		s.order.MoveToFront(el)
		return
	}
	if s.order.Len() >= c.perCap {
		old := s.order.Back()
		s.order.Remove(old)
		delete(s.items, old.Value.(*cacheEntry).key)
		c.evictions.Inc()
	}
	k := string(key)
	s.items[k] = s.order.PushFront(&cacheEntry{key: k, result: r, rule: rule, expires: expires})
}

// len returns the number of entries, for the size gauge.
func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += s.order.Len()
		s.mu.Unlock()
	}
	return n
}
