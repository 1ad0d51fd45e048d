// Package metric is the metric template: instances that the core aggregates per series
// in its shards, and the Source through which handlers read the merged aggregates.
package metric

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"strconv"
)

// Kind is how observations of a series are aggregated.
type Kind uint8

// Aggregation kinds.
const (
	// Counter sums observed values.
	Counter Kind = iota + 1
	// Gauge keeps the last observed value.
	Gauge
	// Distribution counts observations into buckets and sums them.
	Distribution
)

func (k Kind) String() string {
	switch k {
	case Counter:
		return "COUNTER"
	case Gauge:
		return "GAUGE"
	case Distribution:
		return "DISTRIBUTION"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// DefaultMaxSeries is the per-metric bound on series per replica (DESIGN.md §6).
const DefaultMaxSeries = 100000

// OverflowValue is the label value of every label of a metric's overflow series.
const OverflowValue = "overflow"

// Instance is a compiled metric instance as a handler sees it.
type Instance struct {
	// Name is the instance's qualified name, NAMESPACE/NAME.
	Name string
	// Dimensions are the label names, in the order of Series.Labels.
	Dimensions []string
	// Fingerprint changes whenever the instance's definition changes.
	Fingerprint string
}

// Aggregation is how a handler wants an instance aggregated.
type Aggregation struct {
	// Name identifies the aggregate in Sluice's own metrics (for example the
	// Prometheus metric name in sluice_series_overflow_total{metric}).
	Name    string
	Kind    Kind
	Buckets []float64 // upper bounds, strictly increasing, for Distribution
	// MaxSeries bounds the number of series; 0 means DefaultMaxSeries.
	MaxSeries int
}

// Validate checks the aggregation.
func (a Aggregation) Validate() error {
	switch a.Kind {
	case Counter, Gauge:
	case Distribution:
		if len(a.Buckets) == 0 {
			return fmt.Errorf("a DISTRIBUTION needs buckets")
		}
		for i, b := range a.Buckets {
			if math.IsNaN(b) || math.IsInf(b, 0) {
				return fmt.Errorf("bucket %d is not a finite number", i)
			}
			if i > 0 && b <= a.Buckets[i-1] {
				return fmt.Errorf("buckets must increase: %g follows %g", b, a.Buckets[i-1])
			}
		}
	default:
		return fmt.Errorf("unknown kind %v", a.Kind)
	}
	if a.MaxSeries < 0 {
		return fmt.Errorf("maxSeries must not be negative")
	}
	return nil
}

// Key identifies one aggregate: an instance definition aggregated one way.
type Key string

// KeyOf returns the key under which the core keeps inst aggregated as agg.
func KeyOf(inst Instance, agg Aggregation) Key {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s|%d|%d|%s", inst.Fingerprint, agg.Kind, agg.maxSeries(), agg.Name)
	for _, b := range agg.Buckets {
		fmt.Fprintf(h, "|%g", b)
	}
	return Key(inst.Name + "#" + strconv.FormatUint(h.Sum64(), 16))
}

func (a Aggregation) maxSeries() int {
	if a.MaxSeries == 0 {
		return DefaultMaxSeries
	}
	return a.MaxSeries
}

// Limit returns the effective series bound.
func (a Aggregation) Limit() int { return a.maxSeries() }

// Series is one aggregated series, merged over the shards.
type Series struct {
	// Labels are the values of the instance's dimensions, in order.
	Labels []string
	// Count is the number of observations.
	Count uint64
	// Sum is the counter's total, the distribution's sum, or the gauge's last value.
	Sum float64
	// Buckets counts observations per bucket (not cumulative); the last element is
	// the +Inf bucket. Empty unless the aggregation is a Distribution.
	Buckets []uint64
}

// Source gives handlers read access to the aggregates the core keeps for them.
type Source interface {
	// Collect calls fn for every series of the aggregate key, merged over shards. The
	// Series and its slices are valid only during the call.
	Collect(ctx context.Context, key Key, fn func(*Series)) error
}
