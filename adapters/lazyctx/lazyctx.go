// Package lazyctx provides cancellable contexts, with or without a deadline, that
// make their Done channel, timer and parent registration only when waited on.
package lazyctx

import (
	"context"
	"sync"
	"time"
)

// Context ends at its deadline (if it has one), when its parent ends, or when it
// is cancelled, whichever comes first, as one from context.WithDeadline or
// context.WithCancel does. Unlike those, it arms no timer and does not register
// with its parent until something calls Done; until then Err compares the time
// and asks the parent. Code on a hot path whose callees only read the deadline
// (a client that sets socket deadlines from it) or never wait on the context
// then pays one small allocation instead of a context, a timer and the
// parent's registration: at tens of thousands of calls a second, that garbage
// and those timers were a measurable share of a check's cost and of the
// collector's work.
//
// Contexts the standard library derives from a Context (context.WithCancel,
// context.AfterFunc) are told of its end through its AfterFunc method, without a
// goroutine each. context.Cause reports the parent's cause, not whether this
// Context ended on its own: Err tells that.
type Context struct {
	context.Context // the parent: its values, and its end
	deadline        time.Time

	mu         sync.Mutex
	done       chan struct{}
	err        error
	timer      *time.Timer
	stopParent func() bool
	afters     map[uint64]func() // AfterFunc's, by registration
	nextAfter  uint64
}

// New returns a context under parent that ends at deadline; a zero deadline is
// none. Call Cancel when the work under it is done.
func New(parent context.Context, deadline time.Time) *Context {
	return &Context{Context: parent, deadline: deadline}
}

// Deadline implements context.Context: its own deadline or its parent's,
// whichever comes first.
func (c *Context) Deadline() (time.Time, bool) {
	d, ok := c.Context.Deadline()
	if c.deadline.IsZero() || (ok && d.Before(c.deadline)) {
		return d, ok
	}
	return c.deadline, true
}

// Done implements context.Context; the first call arms what closes the channel.
func (c *Context) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.armLocked()
	return c.done
}

// armLocked makes the Done channel, closed if c has ended, and otherwise the timer
// and parent hook that will end c; once.
func (c *Context) armLocked() {
	if c.done != nil {
		return
	}
	if c.err == nil {
		c.checkLocked() // before done exists: it would close it
	}
	c.done = make(chan struct{})
	if c.err != nil {
		close(c.done)
		return
	}
	if !c.deadline.IsZero() {
		c.timer = time.AfterFunc(time.Until(c.deadline), func() { c.end(context.DeadlineExceeded) })
	}
	c.stopParent = context.AfterFunc(c.Context, func() { c.end(c.Context.Err()) })
}

// AfterFunc arranges for f to run in its own goroutine once c ends, as
// context.AfterFunc does, and returns a stop that cancels that if f has not been
// started. The standard library calls it for the contexts it derives from c.
func (c *Context) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.armLocked()
	if c.err != nil {
		go f()
		return func() bool { return false }
	}
	id := c.nextAfter
	c.nextAfter++
	if c.afters == nil {
		c.afters = make(map[uint64]func())
	}
	c.afters[id] = f
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, ok := c.afters[id]
		delete(c.afters, id)
		return ok
	}
}

// Err implements context.Context.
func (c *Context) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.checkLocked()
	}
	return c.err
}

// checkLocked ends c if its parent has ended or its deadline has passed: until
// Done is called, nothing else would.
func (c *Context) checkLocked() {
	if err := c.Context.Err(); err != nil {
		c.endLocked(err)
	} else if !c.deadline.IsZero() && !time.Now().Before(c.deadline) {
		c.endLocked(context.DeadlineExceeded)
	}
}

func (c *Context) end(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.endLocked(err)
}

func (c *Context) endLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.stopParent != nil {
		c.stopParent()
	}
	for _, f := range c.afters {
		go f()
	}
	c.afters = nil
}

// Cancel ends c as cancelled, as a context.CancelFunc would, and frees what Done
// armed; on a nil *Context it does nothing.
func (c *Context) Cancel() {
	if c != nil {
		c.end(context.Canceled)
	}
}
