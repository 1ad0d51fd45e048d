//go:build !unix

package redisquota

// alive takes a connection as alive where its socket cannot be looked at: one
// that Redis closed while it idled fails its next pipeline, counted, and is
// replaced.
func (c *respConn) alive() bool { return c.in.Buffered() == 0 }
