// Package burst lets a listener run the calls of a burst (the requests it read
// together) on its own goroutine, and a backend send their round trips as one.
//
// A listener that hands each call of a burst to a goroutine of its own pays a
// wake-up of another thread per call, and the backend sees the calls one by one.
// A Runner instead runs each call on a coroutine of the listener's goroutine
// (iter.Pull: a switch on the same thread, no scheduler). A backend that would
// wait on a round trip parks its work with Park; when the burst is read, the
// listener calls Flush, which hands each backend all its parked work in one call
// (one pipeline, one write and one read) and then resumes every parked call to
// its end.
package burst

import (
	"context"
	"iter"
)

// Sender sends work that calls of one burst parked (Park), together. Flush
// groups parked items by Sender with ==, so a Sender must be comparable (a
// pointer, in practice).
type Sender interface {
	// SendParked sends items, parked with this Sender by calls of one burst, and
	// returns when each has its answer or has ended unsent: the calls that
	// parked them resume when it returns, and read what happened from their
	// items. It runs on the listener's goroutine.
	SendParked(items []any)
}

type runnerKey struct{}

// maxSpare bounds the idle coroutines a Runner keeps for its next calls.
const maxSpare = 16

// Runner runs the calls of bursts on coroutines of one goroutine, its owner's
// (a connection's reader): every method but Park must be called there.
type Runner struct {
	ctx    context.Context
	cur    *coro // the coroutine running, while one runs
	parked []parkedCall
	next   []parkedCall // the calls that park again while parked ones resume
	spare  []*coro
	items  []any // SendParked's argument, reused
}

// parkedCall is a call waiting, in Park, for its item to be sent.
type parkedCall struct {
	s    Sender
	item any
	co   *coro
}

// coro is a coroutine that runs calls one after the other.
type coro struct {
	fn    func(any)
	arg   any
	yield func(parked bool) bool
	next  func() (parked bool, ok bool)
	stop  func()
}

// NewRunner returns a Runner whose calls' contexts derive from Context, which
// carries the Runner to Park.
func NewRunner(parent context.Context) *Runner {
	r := &Runner{}
	r.ctx = context.WithValue(parent, runnerKey{}, r)
	return r
}

// Context is the context the calls started by Start must derive theirs from, so
// that their backends can Park.
func (r *Runner) Context() context.Context { return r.ctx }

// Start runs fn(arg) on a coroutine until it returns or parks; a parked call
// goes on at the next Flush. fn and arg apart, rather than a closure over arg,
// cost no allocation per call.
func (r *Runner) Start(fn func(any), arg any) {
	var co *coro
	if n := len(r.spare); n > 0 {
		co = r.spare[n-1]
		r.spare[n-1] = nil
		r.spare = r.spare[:n-1]
	} else {
		co = newCoro()
	}
	co.fn, co.arg = fn, arg
	r.resume(co)
}

func newCoro() *coro {
	co := &coro{}
	co.next, co.stop = iter.Pull(func(yield func(bool) bool) {
		co.yield = yield
		for {
			co.fn(co.arg)
			co.fn, co.arg = nil, nil
			if !yield(false) {
				return
			}
		}
	})
	return co
}

// resume runs co until its call parks or returns; a coroutine whose call
// returned is kept for the next, or ended.
func (r *Runner) resume(co *coro) {
	r.cur = co
	parked, _ := co.next() // a call that panics panics here, on the owner
	r.cur = nil
	if parked {
		return
	}
	if len(r.spare) < maxSpare {
		r.spare = append(r.spare, co)
		return
	}
	co.stop()
}

// Parked is how many calls wait for Flush.
func (r *Runner) Parked() int { return len(r.parked) }

// Flush sends the parked items, each Sender's in one SendParked, and resumes
// their calls, in the order they parked; calls that park again are sent and
// resumed in turn, until none is parked.
func (r *Runner) Flush() {
	for len(r.parked) > 0 {
		batch := r.parked
		r.parked = r.next[:0]
		for i := range batch {
			s := batch[i].s
			if s == nil {
				continue // sent with an earlier Sender's items
			}
			r.items = r.items[:0]
			for k := i; k < len(batch); k++ {
				if batch[k].s == s {
					r.items = append(r.items, batch[k].item)
					if k > i {
						batch[k].s = nil
					}
				}
			}
			s.SendParked(r.items)
		}
		clear(r.items)
		for i := range batch {
			r.resume(batch[i].co)
		}
		clear(batch)
		r.next = batch[:0]
	}
}

// Close ends the Runner: parked calls are flushed first, then its idle
// coroutines end.
func (r *Runner) Close() {
	r.Flush()
	for _, co := range r.spare {
		co.stop()
	}
	clear(r.spare)
	r.spare = r.spare[:0]
}

// Park sets item aside to be sent by s together with the other items parked in
// the same burst, and returns true once s has sent it (Sender.SendParked). It
// returns false at once, having parked nothing, when ctx is not the context of
// a call started by a Runner: the caller then sends item itself. It must be
// called on the goroutine that runs the call, never on one the call started.
func Park(ctx context.Context, s Sender, item any) bool {
	r, _ := ctx.Value(runnerKey{}).(*Runner)
	if r == nil || r.cur == nil {
		return false
	}
	co := r.cur
	r.parked = append(r.parked, parkedCall{s: s, item: item, co: co})
	// Back to Start or Flush, on the owner; Flush resumes this call here. A
	// Runner resumes every parked call before it ends (Close), so yield does not
	// return false.
	co.yield(true)
	return true
}
