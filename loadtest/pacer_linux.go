package loadtest

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// precisePause returns a sleep for the pacer that wakes within tens of
// microseconds: time.Sleep rounds short sleeps up to about a millisecond when the
// runtime is idle (its network poller waits in whole milliseconds), which would
// release requests in bursts. The calling goroutine keeps its thread, whose timer
// slack is set to 1 µs, until release is called.
func precisePause() (pause func(time.Duration), release func()) {
	runtime.LockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
	return func(d time.Duration) {
		ts := unix.NsecToTimespec(d.Nanoseconds())
		_ = unix.Nanosleep(&ts, nil)
	}, runtime.UnlockOSThread
}
