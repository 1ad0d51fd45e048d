package redisquota

import (
	"context"
	"sync"
	"time"
)

// withDeadline returns parent bounded by deadline: parent itself, and a nil
// *deadlineContext, when parent's own deadline comes first or deadline is zero.
// Call release on the second result when the work under the context is done.
//
// Unlike context.WithDeadline it arms no timer, and does not register with the
// parent, until something waits on Done. On the path a pipeline takes, the Redis
// client reads only Deadline (it sets its socket deadlines from it; see newClient),
// so a call that needs a deadline of its own costs one small allocation instead
// of a timer context, its timer and its registration with the parent: at tens of
// thousands of checks a second that garbage was a measurable share of the
// collector's work and of the check path's tail.
func withDeadline(parent context.Context, deadline time.Time) (context.Context, *deadlineContext) {
	if d, ok := parent.Deadline(); deadline.IsZero() || (ok && !d.After(deadline)) {
		return parent, nil
	}
	c := &deadlineContext{Context: parent, deadline: deadline}
	return c, c
}

// deadlineContext ends at deadline, when its parent ends, or when it is released,
// whichever comes first. Its Done channel and the timer and parent hook that
// close it are made by the first call of Done; until then Err compares the time
// and asks the parent.
type deadlineContext struct {
	context.Context // the parent: its values, and its end
	deadline        time.Time

	mu         sync.Mutex
	done       chan struct{}
	err        error
	timer      *time.Timer
	stopParent func() bool
}

func (c *deadlineContext) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *deadlineContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return c.done
	}
	if c.err == nil {
		c.checkLocked() // before done exists: it would close it
	}
	c.done = make(chan struct{})
	if c.err != nil {
		close(c.done)
		return c.done
	}
	c.timer = time.AfterFunc(time.Until(c.deadline), func() { c.end(context.DeadlineExceeded) })
	c.stopParent = context.AfterFunc(c.Context, func() { c.end(c.Context.Err()) })
	return c.done
}

func (c *deadlineContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.checkLocked()
	}
	return c.err
}

// checkLocked ends c if its parent has ended or its deadline has passed: with no
// timer armed, nothing else would.
func (c *deadlineContext) checkLocked() {
	if err := c.Context.Err(); err != nil {
		c.endLocked(err)
	} else if !time.Now().Before(c.deadline) {
		c.endLocked(context.DeadlineExceeded)
	}
}

func (c *deadlineContext) end(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.endLocked(err)
}

func (c *deadlineContext) endLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
		c.stopParent()
	}
}

// release ends c as cancelled, as a context.CancelFunc would, freeing its timer;
// on nil it does nothing.
func (c *deadlineContext) release() {
	if c != nil {
		c.end(context.Canceled)
	}
}
