// Package dispatch runs the report path after decoding: shards that each own their
// aggregates, rule matching, instance building, handler fan-out and drop accounting.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	goruntime "runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/envoy"
	"github.com/sluicemesh/sluice/mixer/registry"
	"github.com/sluicemesh/sluice/templates/metric"
)

// Drop reasons counted in sluice_entries_dropped_total.
const (
	DropQueueFull  = "queue_full"
	DropShutdown   = "shutdown"
	DropMalformed  = "malformed"
	DropNoConfig   = "no_config"
	DropNoIdentity = "no_identifier"
)

// Options configure a Dispatcher.
type Options struct {
	// Shards is the number of shard goroutines; 0 means GOMAXPROCS.
	Shards int
	// QueueSize is the number of batches a shard queue holds; 0 means 1024.
	QueueSize int
	// QueueWait is how long Submit waits on a full queue before dropping; 0 means 100ms.
	QueueWait   time.Duration
	Registry    *registry.Registry
	TrustDomain string
	Logger      *slog.Logger
	// Metrics receives Sluice's own report-path metrics.
	Metrics prometheus.Registerer
	// Compiler is given to handlers whose params hold expressions.
	Compiler adapters.Compiler
	// Now is the handlers' clock; nil means time.Now.
	Now func() time.Time
}

// Dispatcher owns the shards and the current runtime.
type Dispatcher struct {
	opts    Options
	log     *slog.Logger
	vocab   *attribute.Vocabulary
	shards  []*shard
	rt      atomic.Pointer[runtime]
	metrics *selfMetrics
	reg     *registry.Registry

	applyMu sync.Mutex // serialises Apply and Close
	gen     uint64     // the last runtime's generation; under applyMu

	totalsMu sync.Mutex
	totals   map[string]*atomic.Int64

	// folded counts what other components fold into the overflow series of the
	// metrics they bound (see SeriesOverflow), by metric.
	foldedMu sync.Mutex
	folded   map[string]*atomic.Uint64

	// submitMu lets Close wait out Submits in progress before closing the queues.
	submitMu sync.RWMutex
	closed   bool
	wg       sync.WaitGroup
	batches  sync.Pool
}

// New builds a dispatcher and starts its shards. It processes nothing until the
// first Apply; batches submitted before are dropped as no_config.
func New(opts Options) (*Dispatcher, error) {
	if opts.Shards <= 0 {
		opts.Shards = goruntime.GOMAXPROCS(0)
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 1024
	}
	if opts.QueueWait <= 0 {
		opts.QueueWait = 100 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registry == nil {
		opts.Registry = registry.New(opts.TrustDomain)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	d := &Dispatcher{
		opts:   opts,
		log:    opts.Logger,
		vocab:  attribute.NewVocabulary(),
		reg:    opts.Registry,
		totals: map[string]*atomic.Int64{},
	}
	d.batches.New = func() any { return &Batch{} }
	d.metrics = newSelfMetrics(d)
	if opts.Metrics != nil {
		if err := opts.Metrics.Register(d.metrics); err != nil {
			return nil, fmt.Errorf("register dispatcher metrics: %w", err)
		}
	}
	for i := 0; i < opts.Shards; i++ {
		s := newShard(i, d)
		d.shards = append(d.shards, s)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			s.run()
		}()
	}
	return d, nil
}

// Shards returns the number of shards.
func (d *Dispatcher) Shards() int { return len(d.shards) }

// Releaser is the shared receive buffer a batch's entries point into (a gRPC mem.Buffer).
type Releaser interface {
	Free()
}

// Batch is the entries of one received message that belong to one shard.
type Batch struct {
	Node      *envoy.Node
	Kind      envoy.EntryKind
	OpensSeen bool
	Received  time.Time
	Entries   []envoy.Entry
	// Buffer is released once the shard has processed the batch.
	Buffer Releaser

	barrier *sync.WaitGroup
}

// NewBatch returns an empty batch from the dispatcher's pool.
func (d *Dispatcher) NewBatch() *Batch {
	b := d.batches.Get().(*Batch)
	b.Entries = b.Entries[:0]
	return b
}

func (d *Dispatcher) release(b *Batch) {
	if b.Buffer != nil {
		b.Buffer.Free()
	}
	*b = Batch{Entries: b.Entries[:0]}
	d.batches.Put(b)
}

// Submit hands a batch to shard i. It waits up to QueueWait on a full queue, then
// drops the batch; every dropped entry is counted. It reports whether the batch was queued.
func (d *Dispatcher) Submit(i int, b *Batch) bool {
	d.submitMu.RLock()
	defer d.submitMu.RUnlock()
	n := len(b.Entries)
	if d.closed {
		d.metrics.drop(DropShutdown, n)
		d.release(b)
		return false
	}
	if d.rt.Load() == nil {
		d.metrics.drop(DropNoConfig, n)
		d.release(b)
		return false
	}
	q := d.shards[i].in
	select {
	case q <- b:
		return true
	default:
	}
	t := time.NewTimer(d.opts.QueueWait)
	defer t.Stop()
	select {
	case q <- b:
		return true
	case <-t.C:
		d.metrics.drop(DropQueueFull, n)
		d.release(b)
		return false
	}
}

// Drop counts entries that never reached a shard.
func (d *Dispatcher) Drop(reason string, n int) { d.metrics.drop(reason, n) }

// Received counts entries accepted from a stream.
func (d *Dispatcher) Received(kind envoy.EntryKind, n int) { d.metrics.received(kind, n) }

// Apply makes snap the running config: it starts changed handlers (reusing unchanged
// ones), swaps the runtime in, waits until every shard has left the old one, and then
// closes the handlers that are gone. On error nothing changes.
func (d *Dispatcher) Apply(ctx context.Context, snap *config.Snapshot) error {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	if d.closed {
		return errors.New("dispatcher is closed")
	}
	prev := d.rt.Load()
	rt, _, err := d.buildRuntime(ctx, snap, prev)
	if err != nil {
		return err
	}
	d.gen++
	rt.gen = d.gen
	d.rt.Store(rt)
	d.barrier(ctx)
	if prev != nil {
		d.waitLeases(ctx, prev)
		kept := map[any]bool{}
		for _, h := range rt.handlers {
			kept[h.h] = true
		}
		for _, h := range prev.handlers {
			if !kept[h.h] {
				if err := h.h.Close(ctx); err != nil {
					d.log.Warn("close replaced handler", "handler", h.cfg.Name, "err", err)
				}
			}
		}
	}
	return nil
}

// Lease holds a config version's live handlers for the check path: they are not closed
// by a reload while a lease is held. Release it when the request is answered.
type Lease struct {
	rt *runtime
}

// Lease returns a lease on the running config, or nil before the first Apply.
func (d *Dispatcher) Lease() *Lease {
	for {
		rt := d.rt.Load()
		if rt == nil {
			return nil
		}
		rt.leases.Add(1)
		if d.rt.Load() == rt {
			return &Lease{rt: rt}
		}
		// A reload swapped the runtime in between: it may already be waiting for
		// this one's leases to drain. Take the new one instead.
		rt.leases.Add(-1)
	}
}

// Release ends the lease.
func (l *Lease) Release() { l.rt.leases.Add(-1) }

// Snapshot returns the leased config.
func (l *Lease) Snapshot() *config.Snapshot { return l.rt.snap }

// Generation numbers the leased runtime: each Apply's is one more than the
// last. A runtime's handlers never change, so what a caller derives from them
// holds while its leases have the same generation; not so for the same
// Snapshot, which may be applied again with other handlers.
func (l *Lease) Generation() uint64 { return l.rt.gen }

// Handler returns a live handler of the leased config by qualified name.
func (l *Lease) Handler(name string) (adapters.Handler, bool) {
	h, ok := l.rt.byName[name]
	if !ok {
		return nil, false
	}
	return h.h, true
}

// waitLeases waits until no check-path call holds rt.
func (d *Dispatcher) waitLeases(ctx context.Context, rt *runtime) {
	for rt.leases.Load() > 0 {
		select {
		case <-ctx.Done():
			d.log.Warn("check requests still hold the previous config; closing its replaced handlers anyway")
			return
		case <-time.After(time.Millisecond):
		}
	}
}

// barrier waits until every shard has processed what was queued before it, so that
// none still runs an old runtime. Shards also adopt the new runtime at the barrier.
func (d *Dispatcher) barrier(ctx context.Context) {
	d.submitMu.RLock()
	defer d.submitMu.RUnlock()
	if d.closed {
		return
	}
	var wg sync.WaitGroup
	for _, s := range d.shards {
		wg.Add(1)
		select {
		case s.in <- &Batch{barrier: &wg}:
		case <-ctx.Done():
			wg.Done()
		}
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		d.log.Warn("shards did not reach the config barrier in time; closing replaced handlers anyway")
	}
}

// Close stops accepting batches, lets the shards drain their queues, hands the last
// log entries to their handlers and closes every handler (which flushes them).
func (d *Dispatcher) Close(ctx context.Context) error {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	d.submitMu.Lock()
	if d.closed {
		d.submitMu.Unlock()
		return nil
	}
	d.closed = true
	for _, s := range d.shards {
		close(s.in)
	}
	d.submitMu.Unlock()
	done := make(chan struct{})
	go func() {
		d.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("drain shards: %w", ctx.Err())
	}
	var errs []error
	if rt := d.rt.Load(); rt != nil {
		for _, h := range rt.handlers {
			if err := h.h.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("close handler %s: %w", h.cfg.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Snapshot returns the running config, nil before the first Apply.
func (d *Dispatcher) Snapshot() *config.Snapshot {
	if rt := d.rt.Load(); rt != nil {
		return rt.snap
	}
	return nil
}

// Gather implements prometheus.Gatherer over the running handlers' collectors (the
// prometheus adapter's metrics).
func (d *Dispatcher) Gather() ([]*dto.MetricFamily, error) {
	rt := d.rt.Load()
	if rt == nil {
		return nil, nil
	}
	return rt.collectors.Gather()
}

// Collect implements metric.Source: it merges one aggregate over all shards.
func (d *Dispatcher) Collect(ctx context.Context, key metric.Key, fn func(*metric.Series)) error {
	out := map[string]*merged{}
	var order []string
	for _, s := range d.shards {
		if err := ctx.Err(); err != nil {
			return err
		}
		s.mu.Lock()
		if a := s.aggs[key]; a != nil {
			a.mergeInto(a.group, out, &order)
		}
		s.mu.Unlock()
	}
	var labels []string
	for _, k := range order {
		m := out[k]
		labels = decodeKey(k, labels[:0])
		m.series.Labels = labels
		fn(&m.series)
	}
	return nil
}
