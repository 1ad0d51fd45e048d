package check

import (
	"math"
	"testing"
	"time"
)

func TestCeilSeconds(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want int64
	}{
		{0, 0},
		{time.Nanosecond, 1},
		{time.Second, 1},
		{time.Second + 1, 2},
		{59*time.Second + 500*time.Millisecond, 60},
		// The longest wait a window allows must not wrap to a negative header.
		{math.MaxInt64, math.MaxInt64/int64(time.Second) + 1},
	} {
		if got := ceilSeconds(tt.d); got != tt.want {
			t.Errorf("ceilSeconds(%v) = %d, want %d", tt.d, got, tt.want)
		}
	}
}
