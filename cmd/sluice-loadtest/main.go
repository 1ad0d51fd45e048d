// Command sluice-loadtest drives Sluice with a simulated Envoy fleet and reports
// what it costs: `report` measures the report path against a plain protobuf decode,
// `check` the check path's latency, `wakeup` the machine's round-trip floor.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluicemesh/sluice/loadtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{Use: "sluice-loadtest", Short: "Load tests and benchmark reports for Sluice", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newReport(), newCheck(), newWakeup(), newNoop(), newEcho())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-loadtest:", err)
		os.Exit(1)
	}
}

func newReport() *cobra.Command {
	o := loadtest.ReportOptions{Out: os.Stdout}
	cmd := &cobra.Command{
		Use:   "report --server bin/sluice",
		Short: "Server CPU per access-log entry, against proto.Unmarshal of the same batches",
		Long: `Starts the given sluice binary on free loopback ports with its default config,
streams pre-encoded bookinfo access logs to it (so that the client's encoding costs
nothing), and reads the server process's CPU time from /proc before and after. It
then decodes the same messages with proto.Unmarshal in this process and prints both
costs per entry, their ratio, and allocations per entry.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := loadtest.RunReport(cmd.Context(), o)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Server, "server", "bin/sluice", "sluice binary to measure")
	f.IntVar(&o.Entries, "entries", 200000, "access-log entries per run")
	f.IntSliceVar(&o.Batches, "batch", []int{10, 100, 1000}, "entries per message, one row each")
	f.IntVar(&o.Repeat, "repeat", 3, "runs per batch size (the median is reported)")
	f.IntVar(&o.Streams, "streams", 16, "concurrent access-log streams")
	f.StringVar(&o.Profile, "profile", "", "write a CPU profile of the server, taken while it works, to this file")
	return cmd
}

func newCheck() *cobra.Command {
	o := loadtest.CheckLoadOptions{Out: os.Stdout}
	var selfProfile, selfTrace string
	cmd := &cobra.Command{
		Use:   "check --server bin/sluice",
		Short: "Open-loop latency of ext_authz and rate-limit checks at fixed offered rates",
		Long: `Starts the given sluice binary (and, for the redis backend, redis-server) on free
loopback ports with a benchmark config (an rbac policy, a per-user quota, a rate-limit
domain), then offers each rate for --duration, open loop: requests leave at their
scheduled times whatever the server does, and latency is measured from that time.
It prints p50, p99, p99.9 and the server's CPU per request for every scenario, and
the highest rate at which p99 stays under --target-p99 (refined by --search).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var stop func()
			var err error
			switch {
			case selfProfile != "" && selfTrace != "":
				// With both on, the profile came out empty (measured, Go 1.26).
				return errors.New("--generator-profile and --generator-trace cannot be used together: the profile would be written empty; run them one at a time")
			case selfProfile != "":
				stop, err = startCPUProfile(selfProfile)
			case selfTrace != "":
				stop, err = startTrace(selfTrace)
			}
			if err != nil {
				return err
			}
			if stop != nil {
				defer stop()
			}
			_, err = loadtest.RunCheckLoad(cmd.Context(), o)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Server, "server", "bin/sluice", "sluice binary to measure")
	f.StringVar(&o.RedisServer, "redis-server", "redis-server", "redis-server binary, for the redis backend")
	f.IntVar(&o.RedisHz, "redis-hz", 100, "redis-server's hz (0: Redis's default, 10); 100, which redis.conf advises where very low latency is required,\ngives each cycle that deletes expired keys a tenth of the default's time budget, so no cycle stalls Redis for long")
	f.StringArrayVar(&o.ServerEnv, "server-env", nil, "KEY=VALUE added to the server's environment (repeatable), to compare a runtime setting such as GOMAXPROCS=1")
	f.StringVar(&o.RedisSocket, "redis-socket", "tcp", "how sluice reaches redis-server: tcp (a loopback port) or unix (a Unix socket, as for a Redis on the same node)")
	f.IntSliceVar(&o.Rates, "rate", []int{1000, 10000, 30000}, "offered requests per second, one row each")
	f.DurationVar(&o.Duration, "duration", 10*time.Second, "how long each rate is offered")
	f.StringSliceVar(&o.Services, "service", []string{"ext_authz", "ratelimit"}, "services to load")
	f.StringSliceVar(&o.Backends, "backend", []string{"noop", "noop-h2", "noop-redis", "memquota", "redis"}, "quota backends; noop is a do-nothing grpc-go server, noop-h2 a do-nothing server speaking HTTP/2 by hand: the machine's floors;\n"+
		"noop-redis is noop-h2 counting each call in Redis before it answers (one script call, one per descriptor), the floor of any server that hears from Redis")
	f.StringSliceVar(&o.Listeners, "listener", []string{"grpc", "check"}, "Sluice ports to load: grpc (the gRPC port, grpc-go) and check (--check-addr, the lean HTTP/2 transport)")
	f.StringSliceVar(&o.Caches, "cache", []string{"hit", "miss"}, "check-cache scenarios (ext_authz)")
	f.StringVar(&o.Client, "client", "loop", "loop: a lean HTTP/2 client that writes every request released at once in one write, as Envoy's event loop does,\n"+
		"on the pacer's own thread, which wakes only when requests are due; answers are timed by the kernel, when they reached the socket (~30 µs of CPU per request);\n"+
		"h2: the same client with a reader goroutine per connection, answers timed when read (~42 µs);\n"+
		"grpc: grpc-go's client (~80 µs)")
	f.IntVar(&o.Conns, "conns", 4, "client connections")
	f.IntVar(&o.Workers, "workers", 512, "requests in flight at most, with --client grpc")
	f.DurationVar(&o.TargetP99, "target-p99", time.Millisecond, "p99 the highest-rate summary is reported against")
	f.IntVar(&o.SearchSteps, "search", 0, "after the fixed rates, this many more runs per scenario, bisecting between the highest rate that kept p99 under --target-p99 and the lowest that did not")
	f.IntVar(&o.Repeat, "repeat", 1, "offer each rate this many times; a row is then the run with the median p99, and a column shows the spread of p99 over the runs")
	f.StringVar(&o.Profile, "profile", "", "write a CPU profile of the server per run to FILE.SCENARIO, and heap profiles before and after it to FILE.SCENARIO.heap0 and .heap1\n(the run's allocations: go tool pprof -sample_index=alloc_space -base FILE.SCENARIO.heap0 FILE.SCENARIO.heap1)")
	f.StringVar(&selfProfile, "generator-profile", "", "write a CPU profile of the load generator itself to this file")
	f.StringVar(&selfTrace, "generator-trace", "", "write an execution trace of the load generator itself to this file (go tool trace): when its goroutines waited for a core\nor the network; keep --duration short, a second of 10k/s traces to ~1 MB")
	f.StringVar(&o.LatencyLog, "latency-log", "", "append every measured request to this file as \"scenario rate due latency\" (due: Unix seconds; latency: µs),\nto tell a tail spread over the run from a few stalls")
	f.DurationVar(&o.HostProbe, "host-probe", time.Second, "before each run, how long to count the host's stalls: sleeps of 100µs that wake 1ms or more late, as a VM whose CPU the host descheduled does (0: no probe)")
	return cmd
}

func newNoop() *cobra.Command {
	var grpcAddr, adminAddr, redisAddr string
	var lean bool
	cmd := &cobra.Command{
		Use:    "noop-server",
		Short:  "A do-nothing ext_authz and rate-limit server, the baseline of `check`",
		Hidden: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return loadtest.ServeNoop(cmd.Context(), grpcAddr, adminAddr, lean, redisAddr)
		},
	}
	cmd.Flags().StringVar(&grpcAddr, "grpc-addr", "127.0.0.1:0", "gRPC listen address")
	cmd.Flags().StringVar(&adminAddr, "admin-addr", "127.0.0.1:0", "HTTP address of /metrics")
	cmd.Flags().BoolVar(&lean, "h2", false, "speak HTTP/2 by hand instead of through grpc-go")
	cmd.Flags().StringVar(&redisAddr, "redis-addr", "", "count each call in this Redis (host:port or unix://PATH) before answering it (with --h2)")
	return cmd
}

func newWakeup() *cobra.Command {
	o := loadtest.WakeupOptions{Out: os.Stdout}
	cmd := &cobra.Command{
		Use:   "wakeup",
		Short: "The machine's floor: paced 32-byte TCP round trips to an echo process",
		Long: `Starts an echo process on loopback and paces 32-byte round trips to it at each
rate, one at a time, printing p50, p99, p99.9 and the maximum. No protocol runs:
the tail is what waking two processes costs on this machine (scheduler, idle
vCPUs, timer slack), and every gRPC check pays it several times over.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := loadtest.RunWakeup(cmd.Context(), o)
			return err
		},
	}
	f := cmd.Flags()
	f.IntSliceVar(&o.Rates, "rate", []int{500, 1000, 2000, 10000}, "round trips per second, one row each")
	f.DurationVar(&o.Duration, "duration", 6*time.Second, "how long each rate is paced")
	f.StringVar(&o.Addr, "addr", "", "an echo server to measure against instead of a child process")
	return cmd
}

func newEcho() *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:    "echo-server",
		Short:  "Echoes TCP bytes back, for `wakeup`; prints its address first",
		Hidden: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lis, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listen %s: %w", addr, err)
			}
			fmt.Println(lis.Addr())
			return loadtest.ServeEcho(cmd.Context(), lis)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:0", "listen address")
	return cmd
}

// startTrace traces this process into path until the returned stop is called.
func startTrace(path string) (func(), error) { return startRecording(path, trace.Start, trace.Stop) }

// startCPUProfile profiles this process into path until the returned stop is called.
func startCPUProfile(path string) (func(), error) {
	return startRecording(path, pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// startRecording starts a recording of this process (start, stop) into a new
// file at path, and returns what ends it and closes the file.
func startRecording(path string, start func(io.Writer) error, stop func()) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("record into %s: %w", path, err)
	}
	return func() {
		stop()
		f.Close()
	}, nil
}
