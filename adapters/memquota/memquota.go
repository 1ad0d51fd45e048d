// Package memquota is the memquota adapter: quotas and rate limits counted in this
// process, in sharded maps with exact fixed-window, sliding-window and token-bucket semantics.
package memquota

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/templates"
	"github.com/sluicemesh/sluice/templates/metric"
	"github.com/sluicemesh/sluice/templates/quota"
)

// Name is the adapter's name in a Handler's spec.adapter.
const Name = "memquota"

// DefaultMaxKeys is the default bound on the keys a handler counts.
const DefaultMaxKeys = 100000

// sweepInterval is how often idle keys are collected.
const sweepInterval = 10 * time.Second

// Params configure a memquota handler.
//
//	quotas:
//	- name: requestcount
//	  maxAmount: 100
//	  validDuration: 1s
//	  algorithm: sliding_window
//	  overrides:
//	  - dimensions: {destination: reviews}
//	    maxAmount: 10
//	maxKeys: 100000
type Params struct {
	// Quotas give the limits of the quota instances sent to the handler.
	Quotas []quotakit.Quota `yaml:"quotas"`
	// MaxKeys bounds the keys counted at once. No key is forgotten before it is
	// reached; beyond it a new key makes the handler forget one of its least
	// recently used keys (of a shard holding more than its share of MaxKeys),
	// preferring one whose state has expired; a live one is counted as dropped,
	// reason key_evicted, and starts afresh. Default 100000.
	MaxKeys int `yaml:"maxKeys"`
}

// Validate implements adapters.Params.
func (p *Params) Validate() error {
	if p.MaxKeys < 1 {
		return adapters.Errorf("maxKeys", "must be at least 1")
	}
	return quotakit.ValidateQuotas(p.Quotas)
}

// Factory returns the memquota adapter's factory.
func Factory() *adapters.Factory {
	return &adapters.Factory{
		Name:      Name,
		Doc:       "counts quotas and rate limits in this process (one replica)",
		Templates: []string{templates.Quota},
		InProcess: true,
		NewParams: func() adapters.Params { return &Params{MaxKeys: DefaultMaxKeys} },
		Bind: func(b adapters.Binding) (map[string]metric.Aggregation, error) {
			qs := b.Params.(*Params).Quotas
			if _, err := quotakit.NewTable(qs, b.Instances.Quotas); err != nil {
				return nil, err
			}
			return nil, quotakit.CheckOverrideDimensions(qs, b.Instances.QuotaDimensions)
		},
		New: func(_ context.Context, env adapters.Env, p adapters.Params, inst adapters.Instances) (adapters.Handler, error) {
			return New(env, p.(*Params), inst.Quotas)
		},
	}
}

// Handler is a memquota handler. Its state is split into shards by a hash of the
// key, each with its own lock, so that concurrent checks of different keys rarely
// wait for each other. MaxKeys bounds the keys of all shards together, counted in
// one atomic counter that only a new or forgotten key touches: a shard may hold
// any number of keys, and only a key that takes the handler past MaxKeys makes it
// forget another, from a shard holding more than its share of MaxKeys (its own
// first, which needs no other lock).
type Handler struct {
	env    adapters.Env
	table  *quotakit.Table
	seed   maphash.Seed
	shards []shard
	// held counts the keys of all shards; maxKeys bounds it (see evictElsewhere
	// for the moments it is passed).
	held    atomic.Int64
	maxKeys int64
	// next spreads where evictElsewhere starts looking.
	next atomic.Uint32
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

var _ adapters.QuotaHandler = (*Handler)(nil)

// maxShards bounds the shards; a power of two.
const maxShards = 64

// New builds a handler for the quota instances bound to it (qualified names) and
// starts collecting idle keys.
func New(env adapters.Env, p *Params, instances []string) (*Handler, error) {
	table, err := quotakit.NewTable(p.Quotas, instances)
	if err != nil {
		return nil, err
	}
	if p.MaxKeys < 1 {
		return nil, fmt.Errorf("memquota: maxKeys must be at least 1")
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	if env.Stats == nil {
		env.Stats = adapters.DiscardStats{}
	}
	n := maxShards
	for n > p.MaxKeys {
		n /= 2
	}
	h := &Handler{env: env, table: table, seed: maphash.MakeSeed(), shards: make([]shard, n),
		maxKeys: int64(p.MaxKeys), stop: make(chan struct{}), done: make(chan struct{})}
	for i := range h.shards {
		// Shares of MaxKeys, spread exactly: the first MaxKeys%n shards have one
		// more. A share is no cap: it tells which shards give up a key.
		share := p.MaxKeys / n
		if i < p.MaxKeys%n {
			share++
		}
		h.shards[i].init(share, &h.held)
	}
	go h.sweepLoop()
	return h, nil
}

// Allow implements quota.RateLimiter. It decides the requests in order; a request
// that repeats an earlier key of the batch sees that request's hits.
func (h *Handler) Allow(_ context.Context, now time.Time, reqs []quota.Request, out []quota.Decision) error {
	if len(out) < len(reqs) {
		return fmt.Errorf("memquota: %d decisions for %d requests", len(out), len(reqs))
	}
	at := quotakit.Micros(now)
	for i := range reqs {
		d, err := h.decide(&reqs[i], at)
		if err != nil {
			return fmt.Errorf("memquota: decide request %d (key %q): %w", i, reqs[i].Key, err)
		}
		out[i] = d
	}
	return nil
}

// Quota implements adapters.QuotaHandler.
func (h *Handler) Quota(ctx context.Context, now time.Time, inst *quota.Instance, amount uint64) (quota.Decision, error) {
	req, err := h.table.Request(inst, amount)
	if err != nil {
		return quota.Decision{}, fmt.Errorf("memquota: %w", err)
	}
	var out [1]quota.Decision
	if err := h.Allow(ctx, now, []quota.Request{req}, out[:]); err != nil {
		return quota.Decision{}, err
	}
	return out[0], nil
}

// Close implements adapters.Handler: it stops collecting idle keys.
func (h *Handler) Close(context.Context) error {
	h.once.Do(func() { close(h.stop) })
	<-h.done
	return nil
}

// Len is the number of keys held.
func (h *Handler) Len() int {
	n := 0
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		n += len(s.keys)
		s.mu.Unlock()
	}
	return n
}

func (h *Handler) decide(r *quota.Request, now int64) (quota.Decision, error) {
	l := r.Limit
	if l.Window < time.Microsecond || l.Requests > quotakit.MaxRequests {
		return quota.Decision{}, quotakit.CheckLimit(l)
	}
	var alg algorithm
	switch l.Algorithm {
	case "", quota.FixedWindow:
		alg = fixedWindow
	case quota.SlidingWindow:
		alg = slidingWindow
	case quota.TokenBucket:
		alg = tokenBucket
	default:
		return quota.Decision{}, fmt.Errorf("unknown rate-limit algorithm %q", l.Algorithm)
	}
	key := quotakit.BoundKey(r.Key) // the state keeps it
	s := &h.shards[maphash.String(h.seed, key)&uint64(len(h.shards)-1)]
	s.mu.Lock()
	e, held := s.get(stateKey{key: key, alg: alg}, now)
	evicted, elsewhere := false, false
	if held > h.maxKeys {
		// The new key took the handler past maxKeys: forget one, here when this
		// shard holds more than its share, else in one that does.
		if len(s.keys) > s.share {
			evicted, _ = s.evict(now, e, h)
		} else {
			elsewhere = true
		}
	}
	var d quota.Decision
	var err error
	switch alg {
	case fixedWindow:
		d = e.fixed(l, r.Hits, now)
	case slidingWindow:
		d = e.sliding(l, r.Hits, now)
	case tokenBucket:
		d, err = e.tokenBucket(l, r.Hits, now)
	}
	s.mu.Unlock()
	if elsewhere {
		evicted = h.evictElsewhere(now, e)
	}
	if evicted {
		h.env.Stats.Dropped(1, "key_evicted")
	}
	return d, err
}

// evictElsewhere forgets a key of a shard holding more than its share, for a new
// key (keep, whose shard holds no more than its share) that took the handler past
// maxKeys; it reports whether the key was live. It runs after the new key's
// shard is unlocked, so that no check holds two locks: meanwhile the handler
// holds a key or so more than maxKeys (one per check in this function). Each key
// over maxKeys forgets one, so the count returns to maxKeys; a check that finds it
// there already, keys having been forgotten meanwhile, forgets none.
func (h *Handler) evictElsewhere(now int64, keep *entry) bool {
	n := len(h.shards)
	start := int(h.next.Add(1))
	// Shards over their share first; past that (keys moved meanwhile), any shard.
	for _, overShare := range [...]bool{true, false} {
		for i := range n {
			s := &h.shards[(start+i)&(n-1)]
			s.mu.Lock()
			if h.held.Load() <= h.maxKeys {
				s.mu.Unlock()
				return false
			}
			if !overShare || len(s.keys) > s.share {
				if evicted, ok := s.evict(now, keep, h); ok {
					s.mu.Unlock()
					return evicted
				}
			}
			s.mu.Unlock()
		}
	}
	return false
}

func (h *Handler) sweepLoop() {
	defer close(h.done)
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			h.sweep(quotakit.Micros(h.env.Now()))
		}
	}
}

// sweep forgets the keys whose state has expired at now (µs): a key with no state
// answers exactly as an expired one would. It returns how many it forgot.
func (h *Handler) sweep(now int64) int {
	n := 0
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		for k, e := range s.keys {
			if e.expires <= now {
				s.remove(k, e)
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// shard holds the state of some keys, most recently used first.
type shard struct {
	mu   sync.Mutex
	keys map[stateKey]*entry
	lru  entry // sentinel of the recency list: lru.next is the most recent
	// share is the shard's share of maxKeys: when the handler holds more, a
	// shard holding more than its share gives up a key.
	share int
	// held is the handler's count of keys, which the shard's new and forgotten
	// keys change.
	held *atomic.Int64
	// spare holds entries of forgotten keys for new ones: when every check
	// brings a new key (a new user, a new source address), the states turn over
	// at the request rate, and reusing them spares an allocation of a couple of
	// hundred bytes per check. Entries are only ever reached under mu.
	spare []*entry
}

// maxSpare bounds a shard's spare entries.
const maxSpare = 256

func (s *shard) init(share int, held *atomic.Int64) {
	s.keys = make(map[stateKey]*entry)
	s.lru.next, s.lru.prev = &s.lru, &s.lru
	s.share = share
	s.held = held
}

// get returns the state of k, made most recent, creating it when absent; then it
// returns the handler's count of keys with the new one (else 0), which the caller
// brings back to maxKeys. A new key first forgets the least recent key if it has
// expired.
func (s *shard) get(k stateKey, now int64) (e *entry, held int64) {
	if e = s.keys[k]; e != nil {
		if s.lru.next != e {
			e.unlink()
			s.pushFront(e)
		}
		return e, 0
	}
	if tail := s.lru.prev; tail != &s.lru && tail.expires <= now {
		// A new key forgets the least recent one if its state has expired, as the
		// sweeper would later: the shard then holds live keys alone, and when
		// every check brings a new key the states are reused at the rate they
		// are made.
		s.remove(tail.k, tail)
	}
	if n := len(s.spare); n > 0 {
		e = s.spare[n-1]
		s.spare[n-1] = nil
		s.spare = s.spare[:n-1]
		*e = entry{k: k}
	} else {
		e = &entry{k: k}
	}
	s.keys[k] = e
	s.pushFront(e)
	return e, s.held.Add(1)
}

// evict forgets a key other than keep, for a new key that took the handler h past
// its maxKeys: an expired key among the shard's least recent ones, else its least
// recent key. evicted reports that the key was live; ok false that the shard
// holds no other key, or that the handler is back within maxKeys (keys were
// forgotten meanwhile), and forgot none.
func (s *shard) evict(now int64, keep *entry, h *Handler) (evicted, ok bool) {
	victim := s.lru.prev
	if victim == keep {
		victim = victim.prev
	}
	if victim == &s.lru {
		return false, false
	}
	// The count is the handler's, and other shards' evictions run beside this
	// one: the key is forgotten only if this takes the count down from above
	// maxKeys, so that two evictions for one key too many cannot both happen.
	for {
		n := h.held.Load()
		if n <= h.maxKeys {
			return false, false
		}
		if h.held.CompareAndSwap(n, n-1) {
			break
		}
	}
	for i, c := 0, victim; i < 8 && c != &s.lru; i, c = i+1, c.prev {
		if c != keep && c.expires <= now {
			victim = c
			break
		}
	}
	evicted = victim.expires > now
	s.forget(victim.k, victim)
	return evicted, true
}

func (s *shard) pushFront(e *entry) {
	e.prev, e.next = &s.lru, s.lru.next
	s.lru.next.prev = e
	s.lru.next = e
}

func (s *shard) remove(k stateKey, e *entry) {
	s.held.Add(-1)
	s.forget(k, e)
}

// forget removes k's entry e without changing the handler's count of keys.
func (s *shard) forget(k stateKey, e *entry) {
	e.unlink()
	delete(s.keys, k)
	if len(s.spare) < maxSpare {
		*e = entry{} // holds no key or log while spare
		s.spare = append(s.spare, e)
	}
}

func (e *entry) unlink() {
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
}
