package loadtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"
)

// WakeupOptions configures RunWakeup.
type WakeupOptions struct {
	// Rates are the round trips per second to pace, one row each.
	Rates []int
	// Duration is how long each rate is paced.
	Duration time.Duration
	// Addr is an echo server to measure against; empty starts this executable's
	// `echo-server` as a child process, so that each round trip crosses two
	// processes as a check does.
	Addr string
	// Out receives the table; nil prints nothing.
	Out io.Writer
}

// WakeupRow is the round-trip latency of one paced rate.
type WakeupRow struct {
	Rate                int
	Samples             int
	P50, P99, P999, Max time.Duration
}

// RunWakeup measures the machine's floor under any RPC: a 32-byte round trip over
// loopback TCP to an echo process, paced like the check benchmark. Each round
// trip wakes the echo process and then the caller, so its tail is what the kernel
// and the hypervisor add before any protocol runs; a gRPC call pays several.
func RunWakeup(ctx context.Context, o WakeupOptions) ([]WakeupRow, error) {
	if o.Duration <= 0 {
		return nil, fmt.Errorf("wakeup: duration %v must be positive", o.Duration)
	}
	for _, rate := range o.Rates {
		if rate <= 0 || rate > maxWakeupRate {
			return nil, fmt.Errorf("wakeup: rate %d/s is outside 1..%d", rate, maxWakeupRate)
		}
	}
	addr := o.Addr
	if addr == "" {
		a, stop, err := startEchoChild(ctx)
		if err != nil {
			return nil, err
		}
		defer stop()
		addr = a
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("wakeup: dial echo server %s: %w", addr, err)
	}
	defer conn.Close()
	// A blocked read does not watch ctx; closing the connection ends it.
	defer context.AfterFunc(ctx, func() { _ = conn.Close() })()
	if o.Out != nil {
		fmt.Fprintf(o.Out, "%10s %8s %9s %9s %9s %9s\n", "rate/s", "samples", "p50", "p99", "p99.9", "max")
	}
	var rows []WakeupRow
	for _, rate := range o.Rates {
		lat, err := pingPong(ctx, conn, rate, o.Duration)
		if err != nil {
			return rows, fmt.Errorf("wakeup at %d/s: %w", rate, err)
		}
		row := WakeupRow{Rate: rate, Samples: len(lat)}
		row.P50, row.P99, row.P999, row.Max = percentiles(lat)
		rows = append(rows, row)
		if o.Out != nil {
			fmt.Fprintf(o.Out, "%10d %8d %9s %9s %9s %9s\n", rate, row.Samples, us(row.P50), us(row.P99), us(row.P999), us(row.Max))
		}
	}
	return rows, nil
}

// maxWakeupRate keeps the pacing interval at a microsecond or more; one round trip
// at a time cannot go faster on any machine anyway.
const maxWakeupRate = 1_000_000

// roundTripTimeout ends a run whose echo server stopped answering, with an error
// rather than a hang.
const roundTripTimeout = time.Second

// pingPong paces round trips on conn at rate for d. A round trip that outlasts the
// interval delays the next one rather than overlapping it: this measures wake-ups,
// not queueing.
func pingPong(ctx context.Context, conn net.Conn, rate int, d time.Duration) ([]time.Duration, error) {
	pause, release := precisePause()
	defer release()
	interval := time.Second / time.Duration(rate)
	n := max(1, int(d/interval))
	lat := make([]time.Duration, 0, n)
	msg := make([]byte, 32)
	buf := make([]byte, len(msg))
	next := time.Now()
	for i := 0; i < n && ctx.Err() == nil; i++ {
		next = next.Add(interval)
		if w := time.Until(next); w > 0 {
			pause(w)
		}
		// Set before the clock starts: the deadline is a runtime timer, not part of
		// the round trip.
		if err := conn.SetReadDeadline(time.Now().Add(roundTripTimeout)); err != nil {
			return lat, fmt.Errorf("set read deadline: %w", err)
		}
		sent := time.Now()
		if _, err := conn.Write(msg); err != nil {
			return lat, fmt.Errorf("write: %w", err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			if ctx.Err() != nil {
				break
			}
			return lat, fmt.Errorf("read echo (%v without an answer is a failure): %w", roundTripTimeout, err)
		}
		lat = append(lat, time.Since(sent))
	}
	if len(lat) == 0 {
		return nil, ctx.Err()
	}
	return lat, nil
}

// startEchoChild runs this executable's echo-server and returns the address it
// printed on its first line of output.
func startEchoChild(ctx context.Context) (string, func(), error) {
	self, err := os.Executable()
	if err != nil {
		return "", nil, fmt.Errorf("wakeup: find own executable: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(ctx, self, "echo-server")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return "", nil, fmt.Errorf("wakeup: echo-server output: %w", err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		return "", nil, fmt.Errorf("wakeup: start %s echo-server: %w", self, err)
	}
	stop := func() {
		cancel()
		_ = cmd.Wait()
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("wakeup: read echo-server address: %w", err)
	}
	return strings.TrimSpace(line), stop, nil
}

// ServeEcho echoes every byte each connection on lis sends until ctx ends.
func ServeEcho(ctx context.Context, lis net.Listener) error {
	go func() {
		<-ctx.Done()
		_ = lis.Close()
	}()
	for {
		c, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("echo: accept: %w", err)
		}
		go echo(c)
	}
}

// echo writes back what c reads with plain reads and writes: io.Copy would splice
// through a pipe, which is not the path an RPC server takes.
func echo(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
