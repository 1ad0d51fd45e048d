package loadtest

import (
	"testing"
	"time"
)

func TestSearchBounds(t *testing.T) {
	row := func(rate int, p99 time.Duration, errs int64) CheckRow {
		return CheckRow{Offered: rate, P99: p99, Errors: errs}
	}
	ms := time.Millisecond
	for _, tc := range []struct {
		name   string
		rows   []CheckRow
		lo, hi int
	}{
		{"none met", []CheckRow{row(1000, 2*ms, 0), row(10000, 5*ms, 0)}, 0, 1000},
		{"all met", []CheckRow{row(1000, ms/2, 0), row(10000, ms/2, 0)}, 10000, 0},
		{"between", []CheckRow{row(1000, ms/2, 0), row(10000, 3*ms, 0), row(30000, 9*ms, 0)}, 1000, 10000},
		{"errors do not meet", []CheckRow{row(1000, ms/2, 0), row(5000, ms/2, 3), row(10000, 3*ms, 0)}, 1000, 5000},
		{"a noisy failure below the best is ignored", []CheckRow{row(1000, 2*ms, 0), row(5000, ms/2, 0), row(10000, 3*ms, 0)}, 5000, 10000},
		{"exactly the target does not meet it", []CheckRow{row(1000, ms, 0)}, 0, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lo, hi := searchBounds(tc.rows, ms)
			if lo != tc.lo || hi != tc.hi {
				t.Errorf("searchBounds = %d, %d; want %d, %d", lo, hi, tc.lo, tc.hi)
			}
		})
	}
}
