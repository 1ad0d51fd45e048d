package redisquota

import (
	"context"
	"time"

	"github.com/sluicemesh/sluice/adapters/lazyctx"
)

// withDeadline returns parent bounded by deadline: parent itself, and a nil
// *lazyctx.Context, when parent's own deadline comes first or deadline is zero.
// Cancel the second result when the work under the context is done. A Redis
// Cluster's pipelines take it (a single server's take the deadline itself): the
// go-redis client reads only the deadline (it sets its socket deadlines from it;
// see newClient), so the context arms no timer.
func withDeadline(parent context.Context, deadline time.Time) (context.Context, *lazyctx.Context) {
	if d, ok := parent.Deadline(); deadline.IsZero() || (ok && !d.After(deadline)) {
		return parent, nil
	}
	c := lazyctx.New(parent, deadline)
	return c, c
}
