//go:build !linux

package loadtest

import "time"

// precisePause returns time.Sleep where no finer sleep is known.
func precisePause() (pause func(time.Duration), release func()) {
	return time.Sleep, func() {}
}
