package lazyctx

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"
)

type ctxKey struct{}

func ended(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

// TestContext: a Context ends at its deadline, with its parent, or when
// cancelled, whether or not anything waited on Done before, as one from
// context.WithDeadline or context.WithCancel does.
func TestContext(t *testing.T) {
	bg := context.WithValue(context.Background(), ctxKey{}, "v")

	t.Run("deadline passes unwatched", func(t *testing.T) {
		d := time.Now().Add(5 * time.Millisecond)
		c := New(bg, d)
		defer c.Cancel()
		if got, ok := c.Deadline(); !ok || !got.Equal(d) || c.Err() != nil || c.Value(ctxKey{}) != "v" {
			t.Fatalf("deadline %v %v, err %v, value %v", got, ok, c.Err(), c.Value(ctxKey{}))
		}
		time.Sleep(10 * time.Millisecond)
		if !errors.Is(c.Err(), context.DeadlineExceeded) || !ended(c) {
			t.Errorf("past the deadline: err %v, done %v", c.Err(), ended(c))
		}
	})

	t.Run("deadline passes watched", func(t *testing.T) {
		c := New(bg, time.Now().Add(5*time.Millisecond))
		defer c.Cancel()
		child, cancel := context.WithCancel(c)
		defer cancel()
		select {
		case <-child.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed at the deadline")
		}
		if !errors.Is(c.Err(), context.DeadlineExceeded) || !errors.Is(child.Err(), context.DeadlineExceeded) {
			t.Errorf("err %v, child's %v", c.Err(), child.Err())
		}
	})

	t.Run("no deadline", func(t *testing.T) {
		parent, cancel := context.WithTimeout(bg, time.Hour)
		defer cancel()
		c := New(parent, time.Time{})
		defer c.Cancel()
		if got, ok := c.Deadline(); !ok || time.Until(got) < 59*time.Minute {
			t.Errorf("deadline %v %v, want the parent's", got, ok)
		}
		if ended(c) || c.Err() != nil {
			t.Error("ended without a cause")
		}
		if got, _ := New(parent, time.Now().Add(2*time.Hour)).Deadline(); time.Until(got) > time.Hour {
			t.Errorf("deadline in %v under a parent's in an hour", time.Until(got))
		}
	})

	t.Run("parent ends", func(t *testing.T) {
		for _, watched := range []bool{false, true} {
			for _, deadline := range []time.Time{{}, time.Now().Add(time.Hour)} {
				parent, cancel := context.WithCancel(bg)
				c := New(parent, deadline)
				if watched && ended(c) {
					t.Fatal("ended before its parent")
				}
				cancel()
				if watched {
					select {
					case <-c.Done():
					case <-time.After(5 * time.Second):
						t.Fatal("Done not closed when the parent ended")
					}
				}
				if !errors.Is(c.Err(), context.Canceled) || !ended(c) {
					t.Errorf("watched %v, deadline %v: err %v, done %v", watched, deadline, c.Err(), ended(c))
				}
				c.Cancel()
			}
		}
	})

	t.Run("cancelled", func(t *testing.T) {
		c := New(bg, time.Now().Add(time.Hour))
		done := c.Done()
		c.Cancel()
		c.Cancel()
		select {
		case <-done:
		default:
			t.Fatal("Done not closed on Cancel")
		}
		if !errors.Is(c.Err(), context.Canceled) {
			t.Errorf("err %v", c.Err())
		}
		var none *Context
		none.Cancel() // does nothing
	})
}

// TestDerived: contexts the standard library derives from a Context end with it,
// and are told through its AfterFunc, not by a goroutine each.
func TestDerived(t *testing.T) {
	c := New(context.Background(), time.Now().Add(time.Hour))
	before := runtime.NumGoroutine()
	children := make([]context.Context, 100)
	for i := range children {
		var cancel context.CancelFunc
		children[i], cancel = context.WithCancel(c)
		defer cancel()
	}
	ran := make(chan struct{})
	context.AfterFunc(c, func() { close(ran) })
	stopped := false
	stop := context.AfterFunc(c, func() { stopped = true })
	if !stop() || stop() {
		t.Error("stop did not report the first cancellation alone")
	}
	if n := runtime.NumGoroutine() - before; n > 2 {
		t.Errorf("%d goroutines for 100 derived contexts", n)
	}
	c.Cancel()
	for i, ch := range children {
		select {
		case <-ch.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("child %d not ended with its parent", i)
		}
	}
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc not run")
	}
	time.Sleep(10 * time.Millisecond)
	if stopped {
		t.Error("a stopped AfterFunc ran")
	}
	late := make(chan struct{})
	context.AfterFunc(c, func() { close(late) })
	select {
	case <-late:
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc on an ended context not run")
	}
}

// BenchmarkContext compares a context no one waits on (a pipeline's, a call's
// that decides without waiting) with the standard library's.
func BenchmarkContext(b *testing.B) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.Run("lazyctx", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			c := New(parent, time.Now().Add(time.Second))
			_, _ = c.Deadline()
			c.Cancel()
		}
	})
	b.Run("context.WithDeadline", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			ctx, cancel := context.WithDeadline(parent, time.Now().Add(time.Second))
			_, _ = ctx.Deadline()
			cancel()
		}
	})
}
