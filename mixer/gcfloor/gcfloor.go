// Package gcfloor keeps the garbage collector's heap goal at or above a floor.
// Go's default goal, twice the live heap, makes a server whose live heap is a few
// megabytes collect every second or two under load; each collection takes a share
// of the cores from the calls it overlaps, and on a small machine those calls make
// the check path's p99. Raising GOGC while the live heap is small spaces the
// collections out for a bounded amount of memory.
package gcfloor

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"time"
)

const liveMetric = "/gc/heap/live:bytes"

// Tuner raises GOGC so that the heap may grow to Floor bytes between collections,
// never setting it below the process's own GOGC (its base: the GOGC environment
// variable's, 100 when unset) nor above Max. With a
// live heap of half the floor or more it leaves the base alone: the floor then
// costs nothing. A memory limit (GOMEMLIMIT) still bounds the heap as it always does.
type Tuner struct {
	// Floor is the heap goal to keep, in bytes.
	Floor uint64
	// Max bounds the GOGC the tuner sets; 0 means 2000.
	Max int
	// Interval is how often the live heap is read; 0 means a second.
	Interval time.Duration
}

// Percent is the GOGC that puts the heap goal, live×(1+GOGC/100), at floor: at
// least base, at most ceiling (unless base is above it). A base below zero
// (GOGC=off) is returned unchanged.
func Percent(live, floor uint64, base, ceiling int) int {
	if base < 0 || live == 0 || floor <= 2*live {
		return base
	}
	p := int((floor*100+live-1)/live) - 100
	return min(max(p, base), max(ceiling, base))
}

// Run adjusts GOGC until ctx ends, then restores the base. It changes a setting of
// the whole process: run one Tuner per process. The base comes from the
// environment, not from the current setting, so that a Tuner started while
// another's raised GOGC is still in force does not take that for the base.
func (t Tuner) Run(ctx context.Context) {
	if t.Floor == 0 {
		return
	}
	limit, every := t.Max, t.Interval
	if limit == 0 {
		limit = 2000
	}
	if every == 0 {
		every = time.Second
	}
	base := envPercent(os.Getenv("GOGC"))
	if base < 0 {
		return // collection is off: nothing to space out
	}
	defer debug.SetGCPercent(base)
	sample := []metrics.Sample{{Name: liveMetric}}
	current, set := base, false
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			p := Percent(sample[0].Value.Uint64(), t.Floor, base, limit)
			// A change under a tenth is not worth moving the goal for; the first
			// is always made, for what is in force may not be the base.
			if d := p - current; !set || d > current/10 || -d > current/10 {
				debug.SetGCPercent(p)
				current, set = p, true
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// envPercent reads a GOGC environment value as the Go runtime does: "off" is -1,
// anything that is not a number is 100.
func envPercent(v string) int {
	if v == "off" {
		return -1
	}
	if n, err := strconv.ParseInt(v, 10, 32); err == nil {
		return int(n)
	}
	return 100
}
