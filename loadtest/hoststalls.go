package loadtest

import "time"

// Host stalls: on a virtual machine, a thread waking from a short sleep may find
// its virtual CPU descheduled by the host and run milliseconds late. Each such
// stall holds up every request in flight and queues those due during it, and a
// busy server drains that queue slowly, so how often the host stalls moves a run's
// p99 as much as the server does. The host's rate changes from hour to hour (on
// the reference VM, from about 2 to 16 stalls a second of 1 ms or
// more on an idle machine), so the load tool measures it beside every run.

// stallProbeSleep is the probe's sleep: close to a request's interval at 10k/s,
// so that it wakes from idle as often as the pacer does.
const stallProbeSleep = 100 * time.Microsecond

// stallThreshold is how late a wake-up must be to count as a stall: the p99
// budget of the check path's goals is 1 to 2 ms.
const stallThreshold = time.Millisecond

// HostStalls is what the probe saw.
type HostStalls struct {
	// Wakeups is how many sleeps it woke from; Stalls how many of those woke
	// stallThreshold or more late.
	Wakeups, Stalls int
	// Worst is the latest wake-up, past the sleep asked for.
	Worst    time.Duration
	Duration time.Duration
}

// PerSecond is the stalls per second of probing.
func (h HostStalls) PerSecond() float64 {
	if h.Duration <= 0 {
		return 0
	}
	return float64(h.Stalls) / h.Duration.Seconds()
}

// probeHostStalls sleeps stallProbeSleep at a time, on a thread of its own with
// the pacer's precise sleep, for d, and counts the wake-ups that came late.
func probeHostStalls(d time.Duration) HostStalls {
	pause, unlock := precisePause()
	defer unlock()
	start := time.Now()
	var h HostStalls
	for {
		before := time.Now()
		if before.Sub(start) >= d {
			h.Duration = before.Sub(start)
			return h
		}
		pause(stallProbeSleep)
		late := time.Since(before) - stallProbeSleep
		h.Wakeups++
		if late >= stallThreshold {
			h.Stalls++
		}
		h.Worst = max(h.Worst, late)
	}
}
