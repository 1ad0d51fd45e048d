package loadtest

import (
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// precisePause returns a sleep for the pacer that wakes within tens of
// microseconds: time.Sleep rounds short sleeps up to about a millisecond when the
// runtime is idle (its network poller waits in whole milliseconds), which would
// release requests in bursts. The calling goroutine keeps its thread, whose timer
// slack is set to 1 µs, until release is called.
//
// The sleep is a raw system call, which the runtime does not see: a sleep it
// knows of lets sysmon take the thread's processor away, and keeps sysmon
// waking every 20 µs to do so, which cost the generator a quarter of its CPU
// (futex and nanosleep calls of its own) at 10k requests/s. A goroutine in a raw
// call cannot be stopped for a collection until the call returns, but the
// runtime's preemption signal ends the sleep (EINTR) and the pacer sleeps again.
func precisePause() (pause func(time.Duration), release func()) {
	runtime.LockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
	return func(d time.Duration) {
		ts := unix.NsecToTimespec(d.Nanoseconds())
		_, _, _ = unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
	}, runtime.UnlockOSThread
}
