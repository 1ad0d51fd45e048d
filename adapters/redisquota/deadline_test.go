package redisquota

import (
	"context"
	"errors"
	"testing"
	"time"
)

type ctxKey struct{}

// TestWithDeadline: the context ends at its deadline, with its parent, or when
// released, whether or not anything waited on Done before, as one from
// context.WithDeadline does.
func TestWithDeadline(t *testing.T) {
	bg := context.WithValue(context.Background(), ctxKey{}, "v")
	ended := func(ctx context.Context) bool {
		select {
		case <-ctx.Done():
			return true
		default:
			return false
		}
	}

	t.Run("a sooner parent deadline is the parent", func(t *testing.T) {
		parent, cancel := context.WithTimeout(bg, time.Minute)
		defer cancel()
		ctx, dc := withDeadline(parent, time.Now().Add(time.Hour))
		dc.release()
		if ctx != parent || parent.Err() != nil {
			t.Errorf("got a new context (%v), or release ended the parent (%v)", ctx != parent, parent.Err())
		}
		if ctx, _ := withDeadline(parent, time.Time{}); ctx != parent {
			t.Error("a zero deadline made a new context")
		}
	})

	t.Run("deadline passes unwatched", func(t *testing.T) {
		d := time.Now().Add(5 * time.Millisecond)
		ctx, dc := withDeadline(bg, d)
		defer dc.release()
		if got, ok := ctx.Deadline(); !ok || !got.Equal(d) || ctx.Err() != nil || ctx.Value(ctxKey{}) != "v" {
			t.Fatalf("deadline %v %v, err %v, value %v", got, ok, ctx.Err(), ctx.Value(ctxKey{}))
		}
		time.Sleep(10 * time.Millisecond)
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) || !ended(ctx) {
			t.Errorf("past the deadline: err %v, done %v", ctx.Err(), ended(ctx))
		}
	})

	t.Run("deadline passes watched", func(t *testing.T) {
		ctx, dc := withDeadline(bg, time.Now().Add(5*time.Millisecond))
		defer dc.release()
		child, cancel := context.WithCancel(ctx)
		defer cancel()
		select {
		case <-child.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed at the deadline")
		}
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) || !errors.Is(child.Err(), context.DeadlineExceeded) {
			t.Errorf("err %v, child's %v", ctx.Err(), child.Err())
		}
	})

	t.Run("parent ends", func(t *testing.T) {
		for _, watched := range []bool{false, true} {
			parent, cancel := context.WithCancel(bg)
			ctx, dc := withDeadline(parent, time.Now().Add(time.Hour))
			if watched && ended(ctx) {
				t.Fatal("ended before its parent")
			}
			cancel()
			if watched {
				select {
				case <-ctx.Done():
				case <-time.After(5 * time.Second):
					t.Fatal("Done not closed when the parent ended")
				}
			}
			if !errors.Is(ctx.Err(), context.Canceled) || !ended(ctx) {
				t.Errorf("watched %v: err %v, done %v", watched, ctx.Err(), ended(ctx))
			}
			dc.release()
		}
	})

	t.Run("released", func(t *testing.T) {
		ctx, dc := withDeadline(bg, time.Now().Add(time.Hour))
		done := ctx.Done()
		dc.release()
		dc.release()
		select {
		case <-done:
		default:
			t.Fatal("Done not closed on release")
		}
		if !errors.Is(ctx.Err(), context.Canceled) {
			t.Errorf("err %v", ctx.Err())
		}
	})
}

// BenchmarkWithDeadline compares a deadline no one waits on (the pipeline's path)
// with context.WithDeadline.
func BenchmarkWithDeadline(b *testing.B) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.Run("lazy", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			ctx, dc := withDeadline(parent, time.Now().Add(time.Second))
			_, _ = ctx.Deadline()
			dc.release()
		}
	})
	b.Run("context.WithDeadline", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			ctx, release := context.WithDeadline(parent, time.Now().Add(time.Second))
			_, _ = ctx.Deadline()
			release()
		}
	})
}
