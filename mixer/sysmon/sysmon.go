// Package sysmon keeps the Go runtime's system monitor thread out of its deep sleep,
// by running the server with a GODEBUG setting the runtime reads only at start.
//
// When every processor of a Go program is idle, sysmon sleeps until the next
// system call, which wakes it before entering the kernel; it then polls every 20 µs
// until the program is idle again. A server whose requests arrive one by one, with
// idle gaps between them (a check path at a few thousand requests a second), so
// pays a sysmon wake-up, and its thread's sleep again, on nearly every request: on
// a 2-core VM this measured 1.8 of the server's 3.3 context switches per ext_authz
// check and a third of its CPU. With schedtrace set, sysmon never enters the deep
// sleep (it must stay awake to print the trace) and, while the program is idle,
// backs off to one wake-up per 10 ms instead. An interval of 2^31−1 ms (24.8 days)
// means that the trace line itself is printed on stderr at most once in that time
// (once at start on a host up longer than that); a fatal error also prints the
// scheduler's state before the stack traces.
package sysmon

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Setting is the GODEBUG setting that keeps sysmon awake.
const Setting = "schedtrace=2147483647"

// Environ returns environ with Setting added to its GODEBUG, and whether that
// changed it. A GODEBUG that sets schedtrace already is left as it is: the
// operator's choice, GODEBUG=schedtrace=0 turning this off.
func Environ(environ []string) ([]string, bool) {
	out := make([]string, 0, len(environ)+1)
	found := false
	for _, kv := range environ {
		v, ok := strings.CutPrefix(kv, "GODEBUG=")
		if !ok {
			out = append(out, kv)
			continue
		}
		if found {
			continue // the runtime reads the first; a later one would only confuse
		}
		found = true
		if _, set := schedtrace(v); set {
			return environ, false
		}
		if v != "" {
			v += ","
		}
		out = append(out, "GODEBUG="+v+Setting)
	}
	if !found {
		out = append(out, "GODEBUG="+Setting)
	}
	return out, true
}

// schedtrace returns the schedtrace value GODEBUG sets, the last one winning as the
// runtime reads them, and whether it sets one.
func schedtrace(godebug string) (value string, set bool) {
	for _, kv := range strings.Split(godebug, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(kv), "schedtrace="); ok {
			value, set = v, true
		}
	}
	return value, set
}

// Awake reports whether this process runs with sysmon kept awake: its GODEBUG,
// which the runtime read at start, sets schedtrace above 0.
func Awake() bool {
	v, _ := schedtrace(os.Getenv("GODEBUG"))
	n, err := strconv.Atoi(v)
	return err == nil && n > 0
}

// Reexec replaces the process with the same binary, run with args and Setting
// added to its GODEBUG, so that the runtime starts with it. It returns only when it
// did not: nil when the environment sets schedtrace already (as it does after the
// re-execution), or the error that stopped it, after which the caller goes on as it
// is. It must run before the process starts anything a new image would not inherit,
// such as listeners.
func Reexec(args []string) error {
	env, changed := Environ(os.Environ())
	if !changed {
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the running binary to re-execute it with GODEBUG=%s: %w", Setting, err)
	}
	if err := syscall.Exec(self, args, env); err != nil {
		return fmt.Errorf("re-execute %s with GODEBUG=%s: %w", self, Setting, err)
	}
	return nil // not reached: Exec returns only on failure
}
