package loadtest

import (
	"bufio"
	"cmp"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/redis/go-redis/v9"

	"github.com/sluicemesh/sluice/mixer/envoy"
	"github.com/sluicemesh/sluice/mixer/sysmon"
)

//go:embed checkbench/*.yaml
var checkBench embed.FS

// CheckLoadOptions configure the check-path benchmark.
type CheckLoadOptions struct {
	// Server is the sluice binary; RedisServer the redis-server binary.
	Server, RedisServer string
	// RedisHz is redis-server's hz, how often its background cycle runs (0:
	// Redis's own default, 10); a cycle's time for deleting expired keys is 1/4 of
	// its period, so a higher hz stalls Redis for shorter times.
	RedisHz int
	// RedisSocket is how the server reaches redis-server: tcp (the default, on a
	// loopback port) or unix (a Unix socket, as a Redis on the same node can be
	// reached; envoyproxy/ratelimit's REDIS_SOCKET_TYPE=unix).
	RedisSocket string
	// ServerEnv is added to the environment of the server (and of the
	// do-nothing servers), as KEY=VALUE: a runtime setting to compare, such as
	// GOMAXPROCS=1.
	ServerEnv []string
	Rates     []int
	Duration  time.Duration
	// Services: ext_authz, ratelimit. Backends: memquota, redis, noop (a
	// do-nothing grpc-go server: the floor of a grpc-go server on this machine),
	// noop-h2 (a do-nothing server speaking HTTP/2 by hand: the floor of any
	// server) and noop-redis (noop-h2 counting each call in Redis before it
	// answers: the floor of any server that hears from Redis; ServeNoopH2).
	// Caches: hit, miss.
	Services, Backends, Caches []string
	// Listeners are Sluice's ports to load: grpc (the contract's gRPC port, grpc-go)
	// and check (--check-addr, the lean HTTP/2 transport). The noop backends have
	// one transport each and run once.
	Listeners []string
	// Client is loop (the default: the lean HTTP/2 client on one thread with the
	// pacer, answers timed by the kernel; see evLoop), h2 (the same client with a
	// reader goroutine per connection, answers timed when read) or grpc (grpc-go's
	// own client, which costs this machine far more CPU per call).
	Client string
	// Conns is the number of client connections; Workers the in-flight bound of the
	// grpc client.
	Conns, Workers int
	// TargetP99 is the latency the "highest rate" column is reported against.
	TargetP99 time.Duration
	// SearchSteps, when positive, refines the highest rate under TargetP99 of each
	// scenario after its fixed rates: that many more runs, each halving the gap
	// between the highest rate that met the target and the lowest that did not.
	SearchSteps int
	// Repeat is how many times each rate is offered, back to back (at least once).
	// A row is then the run with the median p99, with the spread of all of them:
	// on a VM whose runs differ by 2×, one run says little, and a search steered
	// by one lucky or unlucky run goes astray.
	Repeat int
	// Profile, when set, receives a CPU profile of the server during each run, and
	// heap profiles before and after it, whose difference is the run's allocations
	// (go tool pprof -sample_index=alloc_space -base F.heap0 F.heap1). The file
	// names get the scenario appended.
	Profile string
	// HostProbe is how long host stalls are probed before each run (0: not at
	// all); see HostStalls.
	HostProbe time.Duration
	// LatencyLog, when set, receives every measured request of every run as a line
	// "scenario rate due latency" (due as Unix seconds, latency in microseconds), to
	// see whether a tail is spread out or a few stalls, and when they happened.
	LatencyLog string
	Out        io.Writer
}

// CheckRow is one measured scenario at one offered rate.
type CheckRow struct {
	Service, Backend, Cache string
	// Listener is grpc or check for Sluice, "-" for the noop servers.
	Listener            string
	Offered             int
	Achieved            float64
	P50, P99, P999, Max time.Duration
	// Errors are the requests that failed, Late among them those answered after
	// the deadline Envoy would have given them (a timeout to Envoy).
	Errors, Late int64
	// Fallbacks are the quota decisions the server's fail policy made because
	// its backend failed or was too slow (-1 when unknown): answers that did not
	// come from Redis, which a run that measures Redis must not have.
	Fallbacks       int64
	ServerCPUPerReq time.Duration
	// RedisCPUPerReq is redis-server's CPU during the run, for the redis backend
	// (zero for the others, negative when it could not be read): Redis shares the
	// cores too. Deleting a run's keys falls after their window, partly in the
	// next run, so in a sequence of runs each pays for about the one before.
	RedisCPUPerReq time.Duration
	// ClientCPUPerReq is the load generator's own CPU, taken from the same cores.
	ClientCPUPerReq time.Duration
	// PacerLagP99 is how late the generator released requests (p99): latency
	// includes it, so a large value means the generator, not the server, was behind.
	PacerLagP99 time.Duration
	// P99Read is the p99 to when the generator read the answers: P99 but for the
	// loop client, whose P99 runs to their arrival. The difference is the
	// generator's own delay in reading, which a client sharing the server's
	// machine (a sidecar) pays too.
	P99Read time.Duration
	// ServerBytesPerReq is what the server allocated per request, and ServerGCs
	// its garbage collections during the run (from its go_memstats and go_gc
	// metrics; -1 when they could not be read): each collection's mark phase
	// takes CPU from the calls, and the calls that overlap it make much of the
	// tail.
	ServerBytesPerReq float64
	ServerGCs         int
	// ServerProcs is the server's GOMAXPROCS during the run (0 when unknown).
	ServerProcs int
	// CallsPerPipeline is how many script calls the server's Redis pipelines
	// carried on average during the run (0 without Redis, or when unknown): each
	// pipeline costs a write and a read on both sides, however many it carries.
	CallsPerPipeline float64
	// RedisRoundTrip is the mean time the server's Redis pipelines took from
	// their write to their last answer during the run
	// (sluice_redisquota_roundtrip_seconds; 0 without Redis, or when unknown):
	// the share of a Redis check's latency spent waiting on Redis.
	RedisRoundTrip time.Duration
	// HandedOff is the share of the lean listener's calls that were handed to
	// a goroutine rather than run on their connection's reader, and
	// ReaderPauses how many times the listener stopped running calls on readers
	// (sluice_h2unary_calls_total, sluice_h2unary_reader_pauses_total); HandedOff
	// is -1 when unknown or when the run had no such calls.
	HandedOff    float64
	ReaderPauses int
	// InBursts is the share of the lean listener's calls run on their reader
	// as part of a burst, the requests read together, their Redis calls sent
	// together (mode burst of sluice_h2unary_calls_total); -1 when unknown.
	InBursts float64
	// Runs is how many runs the row stands for (Repeat); P99Low and P99High are
	// the lowest and highest p99 among them. Errors are those of all the runs.
	Runs            int
	P99Low, P99High time.Duration
	// Host is what the host-stall probe saw just before the run, the server
	// started and idle (zero when not probed).
	Host HostStalls
}

// RunCheckLoad runs every scenario at every rate, open loop: requests are sent at
// their scheduled times whether or not earlier ones were answered, and latency is
// measured from the scheduled time, so that a slow server cannot hide its queue.
func RunCheckLoad(ctx context.Context, o CheckLoadOptions) ([]CheckRow, error) {
	for _, kv := range o.ServerEnv {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("server environment %q: want KEY=VALUE", kv)
		}
	}
	switch o.RedisSocket {
	case "":
		o.RedisSocket = "tcp"
	case "tcp", "unix":
	default:
		return nil, fmt.Errorf("unknown Redis socket %q: tcp or unix", o.RedisSocket)
	}
	switch o.Client {
	case "":
		o.Client = defaultClient
	case "h2", "loop", "grpc":
	default:
		return nil, fmt.Errorf("unknown client %q: h2, loop or grpc", o.Client)
	}
	if o.LatencyLog != "" {
		// Refused now rather than after the first run.
		f, err := os.OpenFile(o.LatencyLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, fmt.Errorf("latency log: %w", err)
		}
		f.Close()
	}
	for _, b := range o.Backends {
		switch b {
		case "noop", "noop-h2", "noop-redis", "memquota", "redis":
		default:
			return nil, fmt.Errorf("unknown backend %q: noop, noop-h2, noop-redis, memquota or redis", b)
		}
	}
	if o.Repeat < 0 {
		return nil, fmt.Errorf("repeat %d: each rate is offered at least once", o.Repeat)
	}
	if len(o.Listeners) == 0 {
		o.Listeners = []string{"grpc"}
	}
	for _, l := range o.Listeners {
		if l != "grpc" && l != "check" {
			return nil, fmt.Errorf("unknown listener %q: grpc or check", l)
		}
	}
	type target struct{ backend, listener string }
	var targets []target
	for _, b := range o.Backends {
		if strings.HasPrefix(b, "noop") {
			targets = append(targets, target{b, "-"})
			continue
		}
		for _, l := range o.Listeners {
			targets = append(targets, target{b, l})
		}
	}
	var rows []CheckRow
	for _, tg := range targets {
		backend := tg.backend
		srv, err := startCheckServer(ctx, o, backend, tg.listener)
		if err != nil {
			return nil, err
		}
		for _, svc := range o.Services {
			for _, cache := range o.Caches {
				if svc == "ratelimit" && cache == "hit" && len(o.Caches) > 1 {
					// The rate-limit service has no cache: one row per rate is
					// enough, with a new user each request (see cacheLabel).
					continue
				}
				measure := func(rate int) (CheckRow, error) {
					runs := make([]CheckRow, 0, max(o.Repeat, 1)) // zero: once
					for n := range cap(runs) {
						fmt.Fprintf(o.Out, "%s / %s / %s / cache %s at %d/s for %s", svc, backend, tg.listener, cacheLabel(svc, cache), rate, o.Duration)
						if cap(runs) > 1 {
							fmt.Fprintf(o.Out, " (run %d of %d)", n+1, cap(runs))
						}
						fmt.Fprint(o.Out, "… ")
						row, err := runScenario(ctx, o, srv, svc, cache, rate)
						if err != nil {
							return row, err
						}
						row.Backend, row.Listener, row.Cache = backend, tg.listener, cacheLabel(svc, cache)
						fmt.Fprintf(o.Out, "p50 %s p99 %s p99.9 %s, %.0f/s achieved, %d errors, %s fallbacks\n", us(row.P50), us(row.P99), us(row.P999), row.Achieved, row.Errors, known(float64(row.Fallbacks)))
						runs = append(runs, row)
					}
					row := medianRun(runs)
					rows = append(rows, row)
					return row, nil
				}
				var tried []CheckRow
				for _, rate := range o.Rates {
					row, err := measure(rate)
					if err != nil {
						srv.stop()
						return nil, err
					}
					tried = append(tried, row)
				}
				lo, hi := searchBounds(tried, o.TargetP99)
				for step := 0; step < o.SearchSteps && hi > 0 && hi-lo > minSearchGap; step++ {
					rate := (lo + hi) / 2 / 100 * 100
					row, err := measure(rate)
					if err != nil {
						srv.stop()
						return nil, err
					}
					if meets(row, o.TargetP99) {
						lo = rate
					} else {
						hi = rate
					}
				}
			}
		}
		srv.stop()
	}
	printCheckRows(o, rows)
	return rows, nil
}

// medianRun returns the run with the median p99 (the higher of the two middle ones
// for an even count: never the flattering one), its Runs, P99Low and P99High
// describing all of runs, and its Errors and Fallbacks theirs summed (Fallbacks
// unknown, -1, if any run's are): a run with errors or fallbacks fails the target
// however good the median.
func medianRun(runs []CheckRow) CheckRow {
	byP99 := slices.SortedStableFunc(slices.Values(runs), func(a, b CheckRow) int { return cmp.Compare(a.P99, b.P99) })
	row := byP99[len(byP99)/2]
	row.Runs, row.P99Low, row.P99High, row.Errors, row.Late, row.Fallbacks = len(runs), byP99[0].P99, byP99[len(byP99)-1].P99, 0, 0, 0
	for _, r := range runs {
		row.Errors += r.Errors
		row.Late += r.Late
		if r.Fallbacks < 0 || row.Fallbacks < 0 {
			row.Fallbacks = -1 // unknown for a run: unknown for the row
		} else {
			row.Fallbacks += r.Fallbacks
		}
	}
	return row
}

// minSearchGap is the finest step of the rate search, in requests per second.
const minSearchGap = 200

// meets reports whether a run met the latency target, without errors and with
// every quota decided by its backend (fallbacks known to be none).
func meets(r CheckRow, target time.Duration) bool {
	return r.P99 < target && r.Errors == 0 && r.Fallbacks == 0
}

// searchBounds returns the highest offered rate that met the target (0 for none)
// and the lowest above it that did not (0 for none: there is nothing to search).
func searchBounds(rows []CheckRow, target time.Duration) (lo, hi int) {
	for _, r := range rows {
		if meets(r, target) && r.Offered > lo {
			lo = r.Offered
		}
	}
	for _, r := range rows {
		if !meets(r, target) && r.Offered > lo && (hi == 0 || r.Offered < hi) {
			hi = r.Offered
		}
	}
	return lo, hi
}

// cacheLabel names a row's cache scenario. The rate-limit service has no cache,
// but its requests name users as ext_authz's do (the same hundred, or a new one
// each request), and a new user is a new counter in the quota backend, which
// costs Redis more: the label says which.
func cacheLabel(svc, cache string) string {
	if svc == "ratelimit" {
		if cache == "miss" {
			return "n/a (new users)"
		}
		return "n/a (100 users)"
	}
	return cache
}

// known formats a count, or "-" for one that could not be read (negative).
func known(v float64) string {
	if v < 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func us(d time.Duration) string { return fmt.Sprintf("%.0fµs", float64(d)/1e3) }

func printCheckRows(o CheckLoadOptions, rows []CheckRow) {
	w := tabwriter.NewWriter(o.Out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(o.Out)
	repeated := o.Repeat > 1
	header := "service\tbackend\tport\tcache\toffered/s\tachieved/s\tp50\tp99\t"
	if repeated {
		header += "p99 of runs\t"
	}
	fmt.Fprintln(w, header+"p99.9\tmax\tp99 at read\terrors\tfallbacks\tprocs\tserver CPU/req\tRedis CPU/req\tserver B/req\tserver GCs\tcalls/pipeline\tRedis RTT\thanded off\tin bursts\tgenerator CPU/req\tpacer lag p99\thost stalls/s\t")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%.0f\t%s\t%s\t", r.Service, r.Backend, r.Listener, r.Cache, r.Offered, r.Achieved, us(r.P50), us(r.P99))
		if repeated {
			fmt.Fprintf(w, "%s–%s\t", us(r.P99Low), us(r.P99High))
		}
		redis, batch, rtt := "-", "-", "-"
		if usesRedis(r.Backend) && r.RedisCPUPerReq >= 0 {
			redis = us(r.RedisCPUPerReq)
		}
		if r.CallsPerPipeline > 0 {
			batch = fmt.Sprintf("%.2f", r.CallsPerPipeline)
		}
		if r.RedisRoundTrip > 0 {
			rtt = us(r.RedisRoundTrip)
		}
		handed := "-"
		if r.HandedOff >= 0 {
			handed = fmt.Sprintf("%.1f%% (%d pauses)", 100*r.HandedOff, r.ReaderPauses)
		}
		bursts := "-"
		if r.InBursts >= 0 {
			bursts = fmt.Sprintf("%.1f%%", 100*r.InBursts)
		}
		host := "-"
		if r.Host.Duration > 0 {
			host = fmt.Sprintf("%.1f (worst %.1fms)", r.Host.PerSecond(), float64(r.Host.Worst)/1e6)
		}
		procs := "-"
		if r.ServerProcs > 0 {
			procs = strconv.Itoa(r.ServerProcs)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			us(r.P999), us(r.Max), us(r.P99Read), r.Errors, known(float64(r.Fallbacks)), procs, us(r.ServerCPUPerReq), redis, known(r.ServerBytesPerReq), known(float64(r.ServerGCs)), batch, rtt, handed, bursts, us(r.ClientCPUPerReq), us(r.PacerLagP99), host)
	}
	w.Flush()
	if repeated {
		fmt.Fprintf(o.Out, "\nEach row is the median of %d runs by p99 (the other columns are that run's); \"p99 of runs\" is their spread, and errors and fallbacks are all runs'.\n", o.Repeat)
	}
	for _, r := range rows {
		if r.Fallbacks > 0 {
			fmt.Fprintf(o.Out, "\nFallbacks: quota decisions made by the server's fail policy because its backend failed or was too slow (sluice_instances_dropped_total);\n"+
				"a row with any does not measure its backend, and does not count as meeting the p99 target.\n")
			break
		}
	}
	fmt.Fprintf(o.Out, "\nHighest offered rate with p99 under %s (of the rates tried):\n", o.TargetP99)
	best := map[string]int{}
	var keys []string
	for _, r := range rows {
		k := r.Service + " / " + r.Backend + " / " + r.Listener + " / cache " + r.Cache
		if _, ok := best[k]; !ok {
			keys = append(keys, k)
			best[k] = 0
		}
		if meets(r, o.TargetP99) && r.Offered > best[k] {
			best[k] = r.Offered
		}
	}
	for _, k := range keys {
		fmt.Fprintf(o.Out, "  %-40s %d/s\n", k, best[k])
	}
	fmt.Fprintf(o.Out, "\nGenerator: the %s client. It shares the machine's cores with the server; its own CPU is not counted in server CPU/req.\n"+
		"Latency runs from each request's due time, so it includes the pacer's lag, to %s;\n"+
		"\"p99 at read\" runs to when the generator read the answers.\n", o.Client, answerTime(o.Client))
	if len(o.ServerEnv) > 0 {
		fmt.Fprintf(o.Out, "Server environment: %s.\n", strings.Join(o.ServerEnv, " "))
	}
	if slices.ContainsFunc(o.Backends, usesRedis) {
		fmt.Fprintf(o.Out, "Redis: redis-server on this machine, reached through %s.\n", map[string]string{"tcp": "a loopback TCP port", "unix": "a Unix socket"}[o.RedisSocket])
	}
	if slices.Contains(o.Backends, "noop-redis") {
		fmt.Fprintln(o.Out, "noop-redis: the noop-h2 server counting each call in Redis (one script call per check, one per descriptor) before it answers, one round trip for what it read at once:\n"+
			"the floor of any check server that hears from Redis, to read the redis rows against.")
	}
	if o.HostProbe > 0 {
		fmt.Fprintf(o.Out, "Host stalls/s: before each run, for %s with the server idle, how many %s sleeps a second woke %s or more late\n"+
			"(the host had descheduled the VM's CPU), and the latest; a run on a host stalling more often has a worse tail, whatever the server does.\n",
			o.HostProbe, stallProbeSleep, stallThreshold)
	}
	fmt.Fprintln(o.Out, ""+
		"Reference (DEPENDENCIES.md, measured there): envoyproxy/ratelimit with Redis p99 14–25 ms at 10k/s, ~340 µs CPU/request;\n"+
		"OPA-Envoy publishes p99 3.5 ms at 2k/s.")
}

// checkServer is a sluice (and maybe redis) child process.
type checkServer struct {
	grpcAddr, adminAddr string
	target              string // the address loaded: the gRPC port or the check listener
	cmd, redis          *exec.Cmd
	dir                 string
	backend, listener   string // what it serves, for the latency log
	// seq numbers the requests of all runs on this server, which each reserve
	// theirs, so that no run repeats another's users: a cache-miss run must not
	// find the users of the run before it in the server's check cache.
	seq atomic.Int64
}

// reserve returns the first of n request numbers no other run on c uses.
func (c *checkServer) reserve(n int) int64 {
	return c.seq.Add(int64(n)) - int64(n) + 1<<20 // past the warm-up's numbers
}

// redisCPU is the CPU redis-server has used so far: zero without one, an error
// when it cannot be read.
func (c *checkServer) redisCPU() (time.Duration, error) {
	if c.redis == nil || c.redis.Process == nil {
		return 0, nil
	}
	return procCPU(c.redis.Process.Pid)
}

func (c *checkServer) stop() {
	for _, p := range []*exec.Cmd{c.cmd, c.redis} {
		if p != nil && p.Process != nil {
			_ = p.Process.Signal(syscall.SIGTERM)
			_ = p.Wait()
		}
	}
	os.RemoveAll(c.dir)
}

func startCheckServer(ctx context.Context, o CheckLoadOptions, backend, listener string) (*checkServer, error) {
	dir, err := os.MkdirTemp("", "sluice-checkbench-")
	if err != nil {
		return nil, err
	}
	srv := &checkServer{grpcAddr: freeAddr(), adminAddr: freeAddr(), dir: dir, backend: backend, listener: listener}
	srv.target = srv.grpcAddr
	var raddr string // the Redis the server uses, host:port or unix://PATH
	if usesRedis(backend) {
		if raddr, err = startRedis(ctx, o, srv); err != nil {
			srv.stop()
			return nil, err
		}
	}
	if strings.HasPrefix(backend, "noop") {
		// This very binary, as the do-nothing server.
		self, err := os.Executable()
		if err != nil {
			srv.stop()
			return nil, err
		}
		srv.cmd = exec.CommandContext(ctx, self, "noop-server", "--grpc-addr", srv.grpcAddr, "--admin-addr", srv.adminAddr, "--h2="+strconv.FormatBool(backend != "noop"), "--redis-addr", raddr)
		// The runtime setting `sluice serve` gives itself, so that the floor is
		// measured alike (and, like it, left to a GODEBUG that sets schedtrace).
		srv.cmd.Env, _ = sysmon.Environ(mergeEnv(os.Environ(), o.ServerEnv))
		srv.cmd.Stderr = os.Stderr
		if err := srv.cmd.Start(); err != nil {
			srv.stop()
			return nil, err
		}
		if err := waitReady(ctx, "http://"+srv.adminAddr+"/readyz"); err != nil {
			srv.stop()
			return nil, err
		}
		return srv, nil
	}
	args := []string{"serve", "--grpc-addr", srv.grpcAddr, "--admin-addr", srv.adminAddr, "--log-level", "warn", "--config", dir}
	if listener == "check" {
		srv.target = freeAddr()
		args = append(args, "--check-addr", srv.target)
	}
	spec := memquotaSpec
	if backend == "redis" {
		args = append(args, "--redis-addr", raddr)
		spec = redisquotaSpec(raddr)
	}
	body, err := benchConfig(spec)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "bench.yaml"), body, 0o644)
	}
	if err != nil {
		srv.stop()
		return nil, err
	}
	srv.cmd = exec.CommandContext(ctx, o.Server, args...)
	if len(o.ServerEnv) > 0 {
		srv.cmd.Env = mergeEnv(os.Environ(), o.ServerEnv)
	}
	srv.cmd.Stderr = os.Stderr
	if err := srv.cmd.Start(); err != nil {
		srv.stop()
		return nil, fmt.Errorf("start %s: %w", o.Server, err)
	}
	if err := waitReady(ctx, "http://"+srv.adminAddr+"/readyz"); err != nil {
		srv.stop()
		return nil, err
	}
	return srv, nil
}

// startRedis starts redis-server for srv, which stops it, and waits until it
// answers; it returns its address, host:port or unix://PATH.
func startRedis(ctx context.Context, o CheckLoadOptions, srv *checkServer) (string, error) {
	raddr := freeAddr()
	network, dialAddr := "tcp", raddr
	_, port, _ := strings.Cut(raddr, ":")
	rargs := []string{"--port", port, "--bind", "127.0.0.1"}
	if o.RedisSocket == "unix" {
		sock := filepath.Join(srv.dir, "redis.sock")
		if len(sock) >= maxSocketPath {
			return "", fmt.Errorf("the Redis socket path %s is %d bytes, over the %d a Unix socket allows: set TMPDIR to a shorter directory", sock, len(sock), maxSocketPath-1)
		}
		rargs = []string{"--port", "0", "--unixsocket", sock, "--unixsocketperm", "700"}
		raddr, network, dialAddr = "unix://"+sock, "unix", sock
	}
	// Warnings only, on stderr: why a Redis did not start, without its banner.
	rargs = append(rargs, "--save", "", "--appendonly", "no", "--loglevel", "warning")
	if o.RedisHz > 0 {
		rargs = append(rargs, "--hz", strconv.Itoa(o.RedisHz))
	}
	srv.redis = exec.CommandContext(ctx, o.RedisServer, rargs...)
	srv.redis.Stdout, srv.redis.Stderr = os.Stderr, os.Stderr
	if err := srv.redis.Start(); err != nil {
		return "", fmt.Errorf("start %s (install redis-server): %w", o.RedisServer, err)
	}
	// The servers load their scripts at start: a Redis not yet listening would
	// fail the floor, or have Sluice's first checks decided by the fail policy.
	if err := waitRedis(ctx, network, dialAddr); err != nil {
		return "", err
	}
	return raddr, nil
}

// usesRedis reports whether a backend's server is given a redis-server.
func usesRedis(backend string) bool { return backend == "redis" || backend == "noop-redis" }

// maxSocketPath is the size of a Unix socket address's path, its final NUL
// included (sun_path on Linux).
const maxSocketPath = 108

// waitRedis waits until the Redis at addr answers PING, for up to 10 s.
func waitRedis(ctx context.Context, network, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var last error
	for {
		if last = pingRedis(ctx, network, addr); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the Redis at %s did not answer PING: %w", addr, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// pingRedis sends one PING to the Redis at addr, through go-redis, and reads
// its PONG.
func pingRedis(ctx context.Context, network, addr string) error {
	c := redis.NewClient(&redis.Options{Network: network, Addr: addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
	defer c.Close()
	return c.Ping(ctx).Err()
}

// mergeEnv returns base with the KEY=VALUE entries of extra, each replacing
// base's entries of the same key, so that the process sees exactly one value per
// key whatever reads the environment (first or last entry wins elsewhere).
func mergeEnv(base, extra []string) []string {
	if len(extra) == 0 {
		return base
	}
	keys := map[string]bool{}
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		keys[k] = true
	}
	out := make([]string, 0, len(base)+len(extra))
	for _, kv := range base {
		if k, _, _ := strings.Cut(kv, "="); !keys[k] {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

// perUserQuota is the benchmark quota handler's quotas param: high enough never
// to deny.
const perUserQuota = "    quotas:\n    - {name: per-user, maxAmount: 1000000000, validDuration: 1s}\n"

// memquotaSpec is the benchmark config's quota handler in memquota.
const memquotaSpec = "  adapter: memquota\n  params:\n" + perUserQuota

// BenchConfig is the config of the check benchmark's memquota runs, for
// benchmarks of the check path in process (mixer/check).
func BenchConfig() ([]byte, error) { return benchConfig(memquotaSpec) }

// BenchRedisConfig is the config of the check benchmark's Redis runs, its quota
// handler a redisquota on the Redis at addr (HOST:PORT), as the load tool's
// redis backend serves ext_authz.
func BenchRedisConfig(addr string) ([]byte, error) { return benchConfig(redisquotaSpec(addr)) }

// redisquotaSpec is the benchmark config's quota handler in redisquota, on the
// Redis at addr.
func redisquotaSpec(addr string) string {
	return fmt.Sprintf("  adapter: redisquota\n  params:\n    redisServerUrl: %s\n%s", addr, perUserQuota)
}

// BenchScenario is the requests of one of the check benchmark's scenarios, for
// benchmarks of the check path in process: the work the load tool's runs ask of
// the server, without the network.
type BenchScenario struct {
	// Method is the gRPC method path the requests go to.
	Method string
	sc     *scenario
}

// NewBenchScenario returns the scenario of svc (ext_authz or ratelimit) and
// cache (hit or miss; ratelimit has no cache).
func NewBenchScenario(svc, cache string) (*BenchScenario, error) {
	sc, err := newScenario(svc, cache)
	if err != nil {
		return nil, err
	}
	return &BenchScenario{Method: sc.method, sc: sc}, nil
}

// AppendRequest appends the i-th request, encoded, without gRPC's prefix, to
// dst: a benchmark reuses one buffer, as the lean listener does.
func (b *BenchScenario) AppendRequest(dst []byte, i int64) []byte { return b.sc.appendRequest(dst, i) }

// Check accepts an encoded answer that allows the request.
func (b *BenchScenario) Check(resp []byte) error { return b.sc.check(resp) }

// benchConfig is the check benchmark's config with quotaSpec as the spec of its
// quota handler.
func benchConfig(quotaSpec string) ([]byte, error) {
	cfg, err := checkBench.ReadFile("checkbench/policy.yaml")
	if err != nil {
		return nil, err
	}
	const placeholder = "\nQUOTA_HANDLER_SPEC\n"
	if !strings.Contains(string(cfg), placeholder) {
		return nil, errors.New("checkbench/policy.yaml: no QUOTA_HANDLER_SPEC line for the quota handler's spec")
	}
	return []byte(strings.Replace(string(cfg), placeholder, "\n"+quotaSpec, 1)), nil
}

// scenario is one service's requests and how their answers are judged.
type scenario struct {
	method string
	// timeout is the deadline Envoy gives such a check by default.
	timeout time.Duration
	// template returns the encoded request the i-th is made from: shared, never to
	// be written to.
	template func(i int64) []byte
	// stamp, in cache-miss runs, writes the i-th request's own user into a copy of
	// its template, so that every i gives a request the server has not seen; nil
	// when requests are their templates.
	stamp func(msg []byte, i int64)
	check func(resp []byte) error
}

// request returns the i-th request, in memory of its own when it is not its
// template. The lean client stamps the copy in the frame it writes instead: a copy
// per request (with another into a fresh frame payload, since gone) made the
// generator collect garbage on the cores the server runs on, which added 0.3 ms
// to the p99 of cache-miss runs.
func (sc *scenario) request(i int64) []byte {
	if sc.stamp == nil {
		return sc.template(i)
	}
	return sc.appendRequest(nil, i)
}

// appendRequest appends the i-th request to dst.
func (sc *scenario) appendRequest(dst []byte, i int64) []byte {
	msg := sc.template(i)
	dst = append(dst, msg...)
	if sc.stamp != nil {
		sc.stamp(dst[len(dst)-len(msg):], i)
	}
	return dst
}

// newScenario prepares a scenario's requests. They are encoded before the run, the
// cache-miss ones with a counter patched into a fixed-width field, so that the
// generator's CPU, taken from the server's two cores, stays small.
func newScenario(svc, cache string) (*scenario, error) {
	const width = 12 // digits of the per-request user in cache-miss runs
	user := func(i int64) string {
		if cache == "miss" {
			return fmt.Sprintf("u%0*d", width, i)
		}
		return fmt.Sprintf("u%0*d", width, i%100)
	}
	sc := &scenario{}
	var encode func(i int64) ([]byte, error)
	if svc == "ratelimit" {
		sc.method = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
		sc.timeout = envoyRateLimitTimeout
		encode = func(i int64) ([]byte, error) {
			return proto.Marshal(&rlsv3.RateLimitRequest{
				Domain: "bench",
				Descriptors: []*rlcommon.RateLimitDescriptor{
					{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: user(i)}}},
					{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "remote_address", Value: "10.1.0." + strconv.FormatInt(i%250, 10)}}},
				},
			})
		}
		sc.check = checkRateLimitAnswer
	} else {
		sc.method = "/envoy.service.auth.v3.Authorization/Check"
		sc.timeout = envoyAuthzTimeout
		encode = func(i int64) ([]byte, error) { return proto.Marshal(checkRequest(user(i), i)) }
		sc.check = checkAuthzAnswer
	}
	// A pool of distinct encoded requests; in cache-miss runs each send rewrites the
	// user digits of a copy of one, so every request is new to the cache.
	const pool = 256
	tmpl := make([][]byte, pool)
	for k := range tmpl {
		b, err := encode(int64(k))
		if err != nil {
			return nil, err
		}
		tmpl[k] = b
	}
	// Where each template's user digits are (other fields vary in length).
	at := make([]int, pool)
	for k := range tmpl {
		at[k] = strings.Index(string(tmpl[k]), user(int64(k))) + 1
	}
	sc.template = func(i int64) []byte { return tmpl[i%pool] }
	if cache == "miss" {
		sc.stamp = func(msg []byte, i int64) {
			k := i % pool
			for p := at[k] + width - 1; p >= at[k]; p-- {
				msg[p] = '0' + byte(i%10)
				i /= 10
			}
		}
	}
	return sc, nil
}

// The answers are judged from their encoding, without building messages: the
// generator's allocations cost collections on the cores the server runs on.

// checkAuthzAnswer accepts a CheckResponse whose status is OK.
func checkAuthzAnswer(raw []byte) error {
	var code uint64
	var msg []byte
	err := wireFields(raw, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if num != 1 || typ != protowire.BytesType { // status
			return nil
		}
		return wireFields(v, func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error {
			switch {
			case num == 1 && typ == protowire.VarintType:
				code = u
			case num == 2 && typ == protowire.BytesType:
				msg = v
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("undecodable CheckResponse: %w", err)
	}
	if int32(code) != 0 {
		return fmt.Errorf("denied (%s): %s", codes.Code(int32(code)), msg)
	}
	return nil
}

// checkRateLimitAnswer accepts a RateLimitResponse whose overall code is OK.
func checkRateLimitAnswer(raw []byte) error {
	var code uint64
	err := wireFields(raw, func(num protowire.Number, typ protowire.Type, _ []byte, u uint64) error {
		if num == 1 && typ == protowire.VarintType { // overall_code
			code = u
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("undecodable RateLimitResponse: %w", err)
	}
	if c := rlsv3.RateLimitResponse_Code(int32(code)); c != rlsv3.RateLimitResponse_OK {
		return fmt.Errorf("unexpected %v", c)
	}
	return nil
}

// wireFields calls f with each field of an encoded message: its bytes for the
// length-delimited, its value for the others; bytes that are not fields fail.
func wireFields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return protowire.ParseError(m)
		}
		v := b[n : n+m]
		var u uint64
		switch typ {
		case protowire.VarintType:
			u, _ = protowire.ConsumeVarint(v)
		case protowire.BytesType:
			v, _ = protowire.ConsumeBytes(v)
		}
		if err := f(num, typ, v, u); err != nil {
			return err
		}
		b = b[n+m:]
	}
	return nil
}

// invoke sends one request of the scenario through grpc-go.
func (sc *scenario) invoke(ctx context.Context, conn *grpc.ClientConn, i int64) error {
	ctx, cancel := context.WithTimeout(ctx, sc.timeout)
	defer cancel()
	var resp RawBytes
	if err := conn.Invoke(ctx, sc.method, RawBytes(sc.request(i)), &resp, grpc.ForceCodecV2(RawCodec{})); err != nil {
		return err
	}
	return sc.check(resp)
}

// checkRequest is an ext_authz request as an Envoy sidecar sends it.
func checkRequest(user string, i int64) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{
			Address:   envoy.Address("10.44.1."+strconv.FormatInt(i%200, 10), 40000),
			Principal: "spiffe://cluster.local/ns/bench/sa/frontend",
		},
		Destination: &authv3.AttributeContext_Peer{
			Address:   envoy.Address("10.44.2.7", 8080),
			Principal: "spiffe://cluster.local/ns/bench/sa/api",
		},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &authv3.AttributeContext_HttpRequest{
				Id: strconv.FormatInt(i, 10), Method: "GET", Path: "/api/items?page=2", Host: "api.bench.svc.cluster.local:8080",
				Scheme: "http", Protocol: "HTTP/1.1",
				Headers: map[string]string{
					":authority": "api.bench.svc.cluster.local:8080", ":method": "GET", ":path": "/api/items?page=2",
					"x-user": user, "x-request-id": strconv.FormatInt(i, 10), "user-agent": "bench/1.0",
					"accept": "application/json", "x-forwarded-proto": "http",
				},
			},
		},
	}}
}

// runScenario offers rate requests per second for o.Duration and collects latencies.
func runScenario(ctx context.Context, o CheckLoadOptions, srv *checkServer, svc, cache string, rate int) (CheckRow, error) {
	row := CheckRow{Service: svc, Offered: rate}
	sc, err := newScenario(svc, cache)
	if err != nil {
		return row, err
	}
	total := int(float64(rate) * o.Duration.Seconds())
	r := &run{lat: make([]time.Duration, total), lag: make([]time.Duration, total), latRead: make([]time.Duration, total),
		interval: time.Second / time.Duration(rate), timeout: sc.timeout}
	seq := srv.reserve(total)
	var client loadClient
	switch o.Client {
	case "grpc":
		client, err = newGRPCClient(ctx, o, srv.target, sc, r, seq)
	case "loop":
		client, err = newLoopClient(o, srv.target, sc, r, seq)
	default:
		client, err = newH2Client(o, srv.target, sc, r, seq)
	}
	if err != nil {
		return row, err
	}
	defer client.close()
	// Warm up connections and the server's caches of this scenario.
	if err := client.warm(200); err != nil {
		return row, fmt.Errorf("warm up %s: %w", svc, err)
	}
	heapProfile := func(suffix string) {
		// The runtime publishes allocations at the end of a collection, so one is
		// forced before each snapshot; the two bracket the run exactly.
		if o.Profile == "" {
			return
		}
		name := fmt.Sprintf("%s.%s-%s-%d.%s", o.Profile, svc, cache, rate, suffix)
		if err := fetch(ctx, "http://"+srv.adminAddr+"/debug/pprof/heap?gc=1", name); err != nil {
			fmt.Fprintln(os.Stderr, "allocation profile:", err)
		}
	}
	if o.HostProbe > 0 {
		row.Host = probeHostStalls(o.HostProbe)
	}
	heapProfile("heap0")
	cpu0, _ := procCPU(srv.cmd.Process.Pid)
	redis0, redisErr := srv.redisCPU()
	count0, countErr := serverCounters(ctx, srv.adminAddr)
	self0 := selfCPU()
	var wg sync.WaitGroup
	if o.Profile != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			secs := max(1, int(o.Duration.Seconds())-1)
			name := fmt.Sprintf("%s.%s-%s-%d", o.Profile, svc, cache, rate)
			if err := fetch(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", srv.adminAddr, secs), name); err != nil {
				fmt.Fprintln(os.Stderr, "profile:", err)
			}
		}()

	}
	// The schedule starts now, after the setup above, so that no request falls
	// due while the connections warm up.
	r.start = time.Now()
	pause, unlock := client.pacer()
	r.pace(total, client.release, pause)
	unlock()
	client.wait()
	wg.Wait()
	elapsed := time.Since(r.start)
	cpu1, _ := procCPU(srv.cmd.Process.Pid)
	row.RedisCPUPerReq = -1
	if redis1, err := srv.redisCPU(); err == nil && redisErr == nil {
		row.RedisCPUPerReq = (redis1 - redis0) / time.Duration(total)
	}
	row.ServerBytesPerReq, row.ServerGCs, row.Fallbacks, row.HandedOff, row.InBursts = -1, -1, -1, -1, -1
	if count1, err := serverCounters(ctx, srv.adminAddr); err == nil && countErr == nil {
		row.ServerBytesPerReq = (count1.allocated - count0.allocated) / float64(total)
		row.ServerGCs = int(count1.gcs - count0.gcs)
		row.Fallbacks = int64(count1.fallbacks - count0.fallbacks)
		row.ServerProcs = int(count1.procs)
		if n := count1.pipelines - count0.pipelines; n > 0 {
			row.CallsPerPipeline = (count1.pipelineCalls - count0.pipelineCalls) / n
		}
		if n := count1.roundTrips - count0.roundTrips; n > 0 {
			row.RedisRoundTrip = time.Duration((count1.roundTripSeconds - count0.roundTripSeconds) / n * 1e9)
		}
		if n := count1.calls - count0.calls; n > 0 {
			row.HandedOff = (count1.handedOff - count0.handedOff) / n
			row.InBursts = (count1.inBursts - count0.inBursts) / n
		}
		row.ReaderPauses = int(count1.pauses - count0.pauses)
	} else {
		fmt.Fprintf(o.Out, "(server counters unknown: %v) ", errors.Join(countErr, err))
	}
	heapProfile("heap1") // after the counters: its collection is not the run's
	row.ClientCPUPerReq = (selfCPU() - self0) / time.Duration(total)
	if o.LatencyLog != "" {
		if err := appendLatencies(o.LatencyLog, fmt.Sprintf("%s/%s/%s/%s", svc, srv.backend, srv.listener, cacheLabel(svc, cache)), rate, r); err != nil {
			fmt.Fprintln(os.Stderr, "latency log:", err)
		}
	}
	row.P50, row.P99, row.P999, row.Max = percentiles(r.lat)
	_, row.P99Read, _, _ = percentiles(r.latRead)
	_, row.PacerLagP99, _, _ = percentiles(r.lag)
	row.Achieved = float64(total) / elapsed.Seconds()
	row.Errors, row.Late = r.errs.Load(), r.late.Load()
	row.ServerCPUPerReq = (cpu1 - cpu0) / time.Duration(total)
	if row.Errors > 0 {
		fmt.Fprintf(o.Out, "(%d errors, %d of them answers past the %v deadline; first: %v) ", row.Errors, row.Late, r.timeout, r.firstErr.Load())
	}
	if h, ok := client.(*h2Client); ok && h.unstampedReads() > 0 {
		fmt.Fprintf(o.Out, "(%d reads timed when read: the kernel gave no receive time) ", h.unstampedReads())
	}
	return row, nil
}

// appendLatencies appends run r's latencies to the file at path.
func appendLatencies(path, scenario string, rate int, r *run) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	w := bufio.NewWriter(f)
	for i, lat := range r.lat {
		fmt.Fprintf(w, "%s %d %.6f %d\n", scenario, rate, float64(r.due(i).UnixNano())/1e9, lat.Microseconds())
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// answerTime says when a client's answers count as answered.
func answerTime(client string) string {
	if client == "loop" {
		return "when the answer reached the client's socket (the kernel's receive time)"
	}
	return "when the client read the answer"
}

// counters are a server's cumulative allocation counters, and its Redis
// pipelines: how many, and the script calls they carried.
type counters struct {
	allocated, gcs, pipelines, pipelineCalls, fallbacks, procs float64
	// The Redis pipelines' round trips, and their time in all.
	roundTrips, roundTripSeconds float64
	// The lean listener's calls, those handed to goroutines and those run in
	// bursts, and its reader pauses.
	calls, handedOff, inBursts, pauses float64
}

// serverCounters reads a server's counters from its /metrics.
func serverCounters(ctx context.Context, adminAddr string) (counters, error) {
	f, err := Scrape(ctx, "http://"+adminAddr+"/metrics")
	if err != nil {
		return counters{}, err
	}
	if f["go_memstats_alloc_bytes_total"] == nil {
		return counters{}, fmt.Errorf("%s/metrics has no go_memstats_alloc_bytes_total", adminAddr)
	}
	c := counters{
		allocated:  f.Sum("go_memstats_alloc_bytes_total", nil),
		gcs:        f.Sum("go_gc_duration_seconds", nil),
		pipelines:  f.Sum("sluice_redisquota_pipeline_calls", nil),
		roundTrips: f.Sum("sluice_redisquota_roundtrip_seconds", nil),
		procs:      f.Sum("go_sched_gomaxprocs_threads", nil),
		calls:      f.Sum("sluice_h2unary_calls_total", nil),
		handedOff:  f.Sum("sluice_h2unary_calls_total", map[string]string{"mode": "goroutine"}),
		inBursts:   f.Sum("sluice_h2unary_calls_total", map[string]string{"mode": "burst"}),
		pauses:     f.Sum("sluice_h2unary_reader_pauses_total", nil),
		fallbacks:  f.FailPolicyDecisions(),
	}
	for _, s := range f.Series("sluice_redisquota_pipeline_calls", nil) {
		c.pipelineCalls += s.GetHistogram().GetSampleSum()
	}
	for _, s := range f.Series("sluice_redisquota_roundtrip_seconds", nil) {
		c.roundTripSeconds += s.GetHistogram().GetSampleSum()
	}
	return c, nil
}

// percentiles sorts ds and returns its p50, p99, p99.9 and maximum.
func percentiles(ds []time.Duration) (p50, p99, p999, top time.Duration) {
	sort.Slice(ds, func(a, b int) bool { return ds[a] < ds[b] })
	pct := func(p float64) time.Duration { return ds[min(len(ds)-1, int(p*float64(len(ds))))] }
	return pct(0.50), pct(0.99), pct(0.999), ds[len(ds)-1]
}

// run is the schedule and the record of one scenario at one rate: request i is due
// at start + i×interval, and its latency is measured from then, so that neither a
// slow server nor a late generator can hide a queue.
type run struct {
	start    time.Time
	interval time.Duration
	// timeout is the deadline Envoy would give each request: an answer later than
	// that, from its due time, is a timeout.
	timeout  time.Duration
	lat, lag []time.Duration // per request: latency from its due time; release lag
	// latRead is latency from the due time to when the client read the answer:
	// lat too, except with the loop client, which times answers by their arrival.
	latRead  []time.Duration
	errs     atomic.Int64
	late     atomic.Int64 // of errs, the answers past timeout, or that the server said came too late
	firstErr atomic.Value
}

func (r *run) due(i int) time.Time { return r.start.Add(time.Duration(i) * r.interval) }

// done records request i's outcome, answered at (or failed by) time at; warm-up
// requests (negative i) count only errors.
// An answer later than the timeout is counted as the timeout Envoy would have seen
// (the lean listener runs in-memory checks with no deadline of their own), and a
// failed request enters the percentiles at the timeout at least, so that fast
// failures (a connection refused) never make the tail look better.
func (r *run) done(i int, at time.Time, err error) {
	if i >= 0 {
		due := r.due(i)
		lat, read := at.Sub(due), time.Since(due)
		switch {
		case err == nil && r.timeout > 0 && lat > r.timeout:
			r.late.Add(1)
			err = fmt.Errorf("answered %v after it was due, past its %v deadline: %w", lat.Round(time.Microsecond), r.timeout, context.DeadlineExceeded)
		case errors.Is(err, context.DeadlineExceeded):
			// The server's DEADLINE_EXCEEDED: the request reached it, or was
			// started, past its deadline, which Envoy would have seen as a timeout.
			r.late.Add(1)
		}
		if err != nil {
			lat, read = max(lat, r.timeout), max(read, r.timeout)
		}
		r.lat[i] = lat
		if r.latRead != nil {
			r.latRead[i] = read
		}
	}
	if err != nil && r.errs.Add(1) == 1 {
		r.firstErr.Store(err.Error())
	}
}

// pace releases requests 0…total-1 as they come due, all those due at once in one
// call, pausing in between (see precisePause).
func (r *run) pace(total int, release func(from, to int), pause func(time.Duration)) {
	for next := 0; next < total; {
		now := time.Now()
		end := next
		for end < total && !r.due(end).After(now) {
			r.lag[end] = now.Sub(r.due(end))
			end++
		}
		if end > next {
			release(next, end)
			next = end
			continue
		}
		pause(r.due(next).Sub(now))
	}
}

// loadClient sends a scenario's requests to the server.
type loadClient interface {
	// warm sends n requests and waits for their answers.
	warm(n int) error
	// release sends requests [from, to) now; their outcomes go to the run.
	release(from, to int)
	// pacer returns how the pacer pauses between releases, and what ends that.
	pacer() (pause func(time.Duration), unlock func())
	// wait returns when every released request is answered.
	wait()
	close()
}

// grpcClient sends through grpc-go's own client: connections round robin, a
// bounded pool of workers so that requests beyond it wait (and that wait counts).
type grpcClient struct {
	ctx   context.Context
	conns []*grpc.ClientConn
	sc    *scenario
	slots chan int
	wg    sync.WaitGroup
	seq   atomic.Int64
}

func newGRPCClient(ctx context.Context, o CheckLoadOptions, addr string, sc *scenario, r *run, seq int64) (*grpcClient, error) {
	c := &grpcClient{ctx: ctx, sc: sc, slots: make(chan int, len(r.lat))}
	for range o.Conns {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			c.close()
			return nil, err
		}
		c.conns = append(c.conns, cc)
	}
	c.seq.Store(seq - 1) // Add(1) gives seq first
	for range o.Workers {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for i := range c.slots {
				err := sc.invoke(ctx, c.conns[i%len(c.conns)], c.seq.Add(1))
				if status.Code(err) == codes.DeadlineExceeded {
					err = fmt.Errorf("%w (%w)", err, context.DeadlineExceeded)
				}
				r.done(i, time.Now(), err)
			}
		}()
	}
	return c, nil
}

func (c *grpcClient) warm(n int) error {
	for i := range n {
		if err := c.sc.invoke(c.ctx, c.conns[i%len(c.conns)], int64(i)); err != nil {
			return err
		}
	}
	return nil
}

func (c *grpcClient) release(from, to int) {
	for i := from; i < to; i++ {
		c.slots <- i
	}
}

func (c *grpcClient) pacer() (func(time.Duration), func()) { return precisePause() }

func (c *grpcClient) wait() {
	close(c.slots)
	c.wg.Wait()
}

func (c *grpcClient) close() {
	for _, cc := range c.conns {
		cc.Close()
	}
}

// h2Client sends through lean HTTP/2 connections (h2Conn): every request released
// at once goes out in one write per connection. Their answers are read by a
// goroutine per connection, or with loop by the pacer's own thread (the loop
// client).
type h2Client struct {
	conns []*h2Conn
	loop  *evLoop
	sc    *scenario
	run   *run
	batch [][]h2Request
	seq   int64
}

func newH2Client(o CheckLoadOptions, addr string, sc *scenario, r *run, seq int64) (*h2Client, error) {
	return dialH2Client(o, nil, addr, sc, r, seq)
}

// newLoopClient returns an h2Client whose connections, pacing and reading run on
// one thread (evLoop).
func newLoopClient(o CheckLoadOptions, addr string, sc *scenario, r *run, seq int64) (*h2Client, error) {
	l, err := newEvLoop()
	if err != nil {
		return nil, err
	}
	return dialH2Client(o, l, addr, sc, r, seq)
}

func dialH2Client(o CheckLoadOptions, l *evLoop, addr string, sc *scenario, r *run, seq int64) (*h2Client, error) {
	c := &h2Client{loop: l, sc: sc, run: r, seq: seq - 1} // incremented before each use
	dial := dialH2
	if l != nil {
		dial = l.dial
	}
	for range o.Conns {
		hc, err := dial(addr, sc.method, sc.timeout, sc.check, r.done, sc.stamp)
		if err != nil {
			c.close()
			return nil, err
		}
		c.conns = append(c.conns, hc)
	}
	c.batch = make([][]h2Request, len(c.conns))
	return c, nil
}

func (c *h2Client) warm(n int) error {
	// In small rounds: a burst of all n at once would queue the last of them past
	// Envoy's deadline (20 ms for rate limits) on a busy machine, and fail a run
	// before it starts, for a load that is not the one measured.
	round := 8 * len(c.conns)
	for from := 0; from < n; from += round {
		for i := from; i < min(n, from+round); i++ {
			// Warm-up slots are negative: they are not measured.
			c.conns[i%len(c.conns)].send([]h2Request{{slot: -1 - i, msg: c.sc.template(int64(i)), seq: int64(i)}})
		}
		if err := c.waitConns(); err != nil {
			return err
		}
	}
	if c.loop != nil {
		c.loop.unstamped = 0 // the kernel may not stamp the first reads
	}
	if failed := c.run.errs.Swap(0); failed > 0 {
		return fmt.Errorf("%d of %d requests failed, the first: %v", failed, n, c.run.firstErr.Load())
	}
	return nil
}

func (c *h2Client) release(from, to int) {
	for k := range c.batch {
		c.batch[k] = c.batch[k][:0]
	}
	for i := from; i < to; i++ {
		k := i % len(c.conns)
		c.seq++
		c.batch[k] = append(c.batch[k], h2Request{slot: i, msg: c.sc.template(c.seq), seq: c.seq})
	}
	for k, b := range c.batch {
		if len(b) > 0 {
			c.conns[k].send(b)
		}
	}
	if c.loop != nil {
		c.loop.pollIfBehind()
	}
}

func (c *h2Client) pacer() (func(time.Duration), func()) {
	if c.loop != nil {
		return c.loop.pacer()
	}
	return precisePause()
}

func (c *h2Client) wait() {
	_ = c.waitConns() // failures were reported per request
}

// waitConns returns when no call is open or queued, with the first error of a
// connection or of the loop.
func (c *h2Client) waitConns() error {
	if c.loop != nil {
		if err := c.loop.waitIdle(); err != nil {
			return err
		}
	}
	for _, hc := range c.conns {
		if err := hc.wait(); err != nil {
			return err
		}
	}
	return nil
}

// unstampedReads is how many reads since the warm-up the loop timed when read,
// the kernel having given no receive time.
func (c *h2Client) unstampedReads() int {
	if c.loop == nil {
		return 0
	}
	return c.loop.unstamped
}

func (c *h2Client) close() {
	for _, hc := range c.conns {
		hc.close()
	}
	if c.loop != nil {
		c.loop.close()
	}
}
