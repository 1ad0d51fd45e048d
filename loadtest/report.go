package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// ReportOptions configure the report-path benchmark.
type ReportOptions struct {
	// Server is the sluice binary to run as a child process.
	Server string
	// Entries per run; Batches are the entries per message to compare.
	Entries int
	Batches []int
	// Repeat runs each batch size this many times and keeps the median.
	Repeat int
	// Streams is the number of concurrent sidecar streams.
	Streams int
	// Profile, when set, receives a CPU profile of the server taken while it works.
	Profile string
	Out     io.Writer
}

// ReportRow is one measured batch size.
type ReportRow struct {
	Batch              int
	BytesPerEntry      float64
	ServerNsPerEntry   float64
	ServerAllocs       float64
	EntriesPerSec      float64
	UnmarshalNsEntry   float64
	UnmarshalAllocs    float64
	Ratio              float64
	ServerCPUFraction  float64
	ServerMaxRSSMBytes float64
}

// RunReport measures, for the same pre-encoded batches, the CPU the Sluice server
// process spends per entry on its whole report path (gRPC receive, decode, attributes,
// rules, the Istio standard metrics) and the CPU a plain proto.Unmarshal of those
// batches costs, and prints both with their ratio.
func RunReport(ctx context.Context, o ReportOptions) ([]ReportRow, error) {
	if o.Repeat < 1 {
		o.Repeat = 1
	}
	var rows []ReportRow
	for _, batch := range o.Batches {
		msgs, perStream, size, entries, err := reportTraffic(o.Entries, batch, o.Streams)
		if err != nil {
			return nil, err
		}
		var runs []ReportRow
		for r := 0; r < o.Repeat; r++ {
			fmt.Fprintf(o.Out, "batch %d, run %d/%d: %d entries over %d streams… ", batch, r+1, o.Repeat, entries, len(perStream))
			row, err := measureServer(ctx, o.Server, perStream, entries, o.Profile)
			if err != nil {
				return nil, err
			}
			row.Batch = batch
			row.BytesPerEntry = float64(size) / float64(entries)
			row.UnmarshalNsEntry, row.UnmarshalAllocs = measureUnmarshal(msgs)
			row.Ratio = row.ServerNsPerEntry / row.UnmarshalNsEntry
			fmt.Fprintf(o.Out, "server %.0f ns/entry, proto.Unmarshal %.0f ns/entry\n", row.ServerNsPerEntry, row.UnmarshalNsEntry)
			runs = append(runs, row)
		}
		sort.Slice(runs, func(i, j int) bool { return runs[i].Ratio < runs[j].Ratio })
		rows = append(rows, runs[len(runs)/2])
	}
	w := tabwriter.NewWriter(o.Out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(o.Out)
	fmt.Fprintln(w, "batch\tbytes/entry\tserver CPU ns/entry\tserver allocs/entry\tentries/s (server)\tproto.Unmarshal ns/entry\tUnmarshal allocs/entry\tratio\t")
	for _, r := range rows {
		fmt.Fprintf(w, "%d\t%.0f\t%.0f\t%.2f\t%.0f\t%.0f\t%.1f\t%.3f\t\n", r.Batch, r.BytesPerEntry, r.ServerNsPerEntry,
			r.ServerAllocs, r.EntriesPerSec, r.UnmarshalNsEntry, r.UnmarshalAllocs, r.Ratio)
	}
	w.Flush()
	fmt.Fprintf(o.Out, "\nratio = server CPU per entry / proto.Unmarshal CPU per entry, median of %d runs; goal ≤ 0.2.\n"+
		"Reference (DEPENDENCIES.md, measured there, not here): Istio 1.7 Mixer ≈ 134 µs CPU/entry, 21–26× proto.Unmarshal.\n", o.Repeat)
	return rows, nil
}

// reportTraffic encodes bookinfo HTTP traffic: entries of realistic size, spread over
// the sidecars and then over streams (a sidecar may hold several streams).
func reportTraffic(entries, batch, streams int) (all [][]byte, perStream [][][]byte, size, n int, err error) {
	tr := NewTraffic(Bookinfo(), 1)
	var calls []Call
	for len(calls)*2 < entries {
		if c := tr.Next(); c.Protocol != "tcp" {
			calls = append(calls, c)
		}
	}
	r := Report(calls)
	sidecars := r.Sidecars()
	if streams < len(sidecars) {
		streams = len(sidecars)
	}
	perStream = make([][][]byte, streams)
	for si := 0; si < streams; si++ {
		w := sidecars[si%len(sidecars)]
		rep := r[w]
		// Each stream of a sidecar takes its share of the sidecar's entries.
		share := (len(rep.HTTP) + streams/len(sidecars) - 1) / max(1, streams/len(sidecars))
		k := si / len(sidecars)
		lo, hi := k*share, min((k+1)*share, len(rep.HTTP))
		if lo >= hi {
			continue
		}
		part := &SidecarReport{HTTP: rep.HTTP[lo:hi]}
		for i, m := range part.Messages(batch) {
			if i == 0 {
				m.Identifier = Identifier(w)
			}
			b, err := proto.Marshal(m)
			if err != nil {
				return nil, nil, 0, 0, err
			}
			perStream[si] = append(perStream[si], b)
			all = append(all, b)
			size += len(b)
			n += len(m.GetHttpLogs().GetLogEntry())
		}
	}
	return all, perStream, size, n, nil
}

// measureServer starts the server, streams the messages and reads the server's CPU
// time from /proc before and after.
func measureServer(ctx context.Context, bin string, perStream [][][]byte, total int, profile string) (ReportRow, error) {
	var row ReportRow
	grpcAddr, adminAddr, err := freeAddr(), freeAddr(), error(nil)
	cmd := exec.CommandContext(ctx, bin, "serve", "--grpc-addr", grpcAddr, "--admin-addr", adminAddr,
		"--log-level", "warn", "--queue-size", "65536")
	cmd.Stderr = os.Stderr
	if err = cmd.Start(); err != nil {
		return row, fmt.Errorf("start %s: %w", bin, err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	metrics := "http://" + adminAddr + "/metrics"
	if err := waitReady(ctx, "http://"+adminAddr+"/readyz"); err != nil {
		return row, err
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return row, err
	}
	defer conn.Close()
	// Warm up: connections, the first series, the runtime's first GC cycles.
	if err := SendRaw(ctx, conn, perStream[0][:1]); err != nil {
		return row, fmt.Errorf("warm-up: %w", err)
	}
	warm, err := processed(ctx, metrics, 1)
	if err != nil {
		return row, err
	}
	f0, _ := Scrape(ctx, metrics)
	cpu0, err := procCPU(cmd.Process.Pid)
	if err != nil {
		return row, err
	}
	start := time.Now()
	var wg sync.WaitGroup
	if profile != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fetch(ctx, "http://"+adminAddr+"/debug/pprof/profile?seconds=3", profile); err != nil {
				fmt.Fprintln(os.Stderr, "profile:", err)
			}
		}()
	}
	errs := make(chan error, len(perStream))
	for _, msgs := range perStream {
		if len(msgs) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := SendRaw(ctx, conn, msgs); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return row, err
	}
	// Wait for the server's CPU to settle rather than polling /metrics, whose every
	// scrape would be server work charged to the entries.
	cpu1, elapsed, err := settle(cmd.Process.Pid, start)
	if err != nil {
		return row, err
	}
	// One scrape after the work: its own allocations would count against the entries.
	f1, err := Scrape(ctx, metrics)
	if err != nil {
		return row, err
	}
	if got := f1.Sum("sluice_entries_processed_total", nil) + f1.Sum("sluice_entries_dropped_total", nil); got < warm+float64(total) {
		return row, fmt.Errorf("the server settled after %v of %v entries", got-warm, total)
	}
	if profile != "" {
		if err := fetch(ctx, "http://"+adminAddr+"/debug/pprof/allocs", profile+".allocs"); err != nil {
			return row, err
		}
	}
	if d := f1.Sum("sluice_entries_dropped_total", nil); d > 0 {
		return row, fmt.Errorf("the server dropped %v entries; the measurement would be wrong", d)
	}
	cpu := cpu1 - cpu0
	row.ServerNsPerEntry = float64(cpu.Nanoseconds()) / float64(total)
	row.ServerAllocs = (f1.Sum("go_memstats_mallocs_total", nil) - f0.Sum("go_memstats_mallocs_total", nil)) / float64(total)
	row.EntriesPerSec = float64(total) / elapsed.Seconds()
	row.ServerCPUFraction = cpu.Seconds() / elapsed.Seconds()
	return row, nil
}

// measureUnmarshal decodes every message with the standard decoder in this process
// and returns the process CPU per entry, collector included, and allocations per entry.
func measureUnmarshal(msgs [][]byte) (nsPerEntry, allocsPerEntry float64) {
	runtime.GC()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	c0 := selfCPU()
	n := 0
	for _, m := range msgs {
		var s alsv3.StreamAccessLogsMessage
		if err := proto.Unmarshal(m, &s); err == nil {
			n += len(s.GetHttpLogs().GetLogEntry())
		}
	}
	runtime.GC() // charge the collection the decode caused, as the server's CPU includes its own
	c1 := selfCPU()
	runtime.ReadMemStats(&ms1)
	return float64((c1 - c0).Nanoseconds()) / float64(n), float64(ms1.Mallocs-ms0.Mallocs) / float64(n)
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU reads a process's user and system time from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read server CPU: %w", err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / ticks, nil
}

// settle waits until a process's CPU time stops growing, and returns it and when it
// last grew.
func settle(pid int, start time.Time) (time.Duration, time.Duration, error) {
	last, lastChange := time.Duration(-1), time.Now()
	for quiet := 0; quiet < 6; {
		time.Sleep(50 * time.Millisecond)
		cpu, err := procCPU(pid)
		if err != nil {
			return 0, 0, err
		}
		if cpu != last {
			last, lastChange, quiet = cpu, time.Now(), 0
			continue
		}
		quiet++
	}
	return last, lastChange.Sub(start), nil
}

func processed(ctx context.Context, url string, want float64) (float64, error) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		f, err := Scrape(ctx, url)
		if err == nil {
			got := f.Sum("sluice_entries_processed_total", nil) + f.Sum("sluice_entries_dropped_total", nil)
			if got >= want {
				return got, nil
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the server did not process %v entries in time", want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitReady(ctx context.Context, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := Scrape(ctx, strings.Replace(url, "/readyz", "/metrics", 1)); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("server at %s not ready", url)
}

func fetch(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer l.Close()
	return l.Addr().String()
}
