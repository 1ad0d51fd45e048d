// Package memquota is the memquota adapter: quotas and rate limits counted in this
// process, in sharded maps with exact fixed-window, sliding-window and token-bucket semantics.
package memquota

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
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
	// MaxKeys bounds the keys counted at once. Beyond it the least recently used key
	// is forgotten (and counted as dropped, reason key_evicted), which lets that key
	// start afresh. Default 100000.
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
			_, err := quotakit.NewTable(b.Params.(*Params).Quotas, b.Instances.Quotas)
			return nil, err
		},
		New: func(_ context.Context, env adapters.Env, p adapters.Params, inst adapters.Instances) (adapters.Handler, error) {
			return New(env, p.(*Params), inst.Quotas)
		},
	}
}

// Handler is a memquota handler. Its state is split into shards by a hash of the
// key, each with its own lock, so that concurrent checks of different keys rarely
// wait for each other.
type Handler struct {
	env    adapters.Env
	table  *quotakit.Table
	seed   maphash.Seed
	shards []shard
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
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
		env.Stats = noStats{}
	}
	n := maxShards
	for n > p.MaxKeys {
		n /= 2
	}
	h := &Handler{env: env, table: table, seed: maphash.MakeSeed(), shards: make([]shard, n),
		stop: make(chan struct{}), done: make(chan struct{})}
	for i := range h.shards {
		// Spread MaxKeys exactly: the first MaxKeys%n shards hold one more.
		capacity := p.MaxKeys / n
		if i < p.MaxKeys%n {
			capacity++
		}
		h.shards[i].init(capacity)
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
	s := &h.shards[maphash.String(h.seed, r.Key)&uint64(len(h.shards)-1)]
	s.mu.Lock()
	e, evicted := s.get(stateKey{key: r.Key, alg: alg}, now)
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
	if evicted {
		h.env.Stats.Dropped(1, "key_evicted")
	}
	return d, err
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
	mu       sync.Mutex
	keys     map[stateKey]*entry
	lru      entry // sentinel of the recency list: lru.next is the most recent
	capacity int
	// spare holds entries of forgotten keys for new ones: when every check
	// brings a new key (a new user, a new source address), the states turn over
	// at the request rate, and reusing them spares an allocation of a couple of
	// hundred bytes per check. Entries are only ever reached under mu.
	spare []*entry
}

// maxSpare bounds a shard's spare entries.
const maxSpare = 256

func (s *shard) init(capacity int) {
	s.keys = make(map[stateKey]*entry)
	s.lru.next, s.lru.prev = &s.lru, &s.lru
	s.capacity = capacity
}

// get returns the state of k, made most recent, creating it when absent. A full
// shard first forgets an expired key among its least recent ones, else the least
// recent key, which is reported as evicted; any other forgets the least recent
// key if it has expired.
func (s *shard) get(k stateKey, now int64) (e *entry, evicted bool) {
	if e = s.keys[k]; e != nil {
		if s.lru.next != e {
			e.unlink()
			s.pushFront(e)
		}
		return e, false
	}
	if len(s.keys) >= s.capacity {
		victim := s.lru.prev
		for i, c := 0, victim; i < 8 && c != &s.lru; i, c = i+1, c.prev {
			if c.expires <= now {
				victim = c
				break
			}
		}
		evicted = victim.expires > now
		s.remove(victim.k, victim)
	} else if tail := s.lru.prev; tail != &s.lru && tail.expires <= now {
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
	return e, evicted
}

func (s *shard) pushFront(e *entry) {
	e.prev, e.next = &s.lru, s.lru.next
	s.lru.next.prev = e
	s.lru.next = e
}

func (s *shard) remove(k stateKey, e *entry) {
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

type noStats struct{}

func (noStats) Error(string)        {}
func (noStats) Dropped(int, string) {}
