package loadtest

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
)

func TestSearchBounds(t *testing.T) {
	row := func(rate int, p99 time.Duration, errs int64) CheckRow {
		return CheckRow{Offered: rate, P99: p99, Errors: errs}
	}
	ms := time.Millisecond
	for _, tc := range []struct {
		name   string
		rows   []CheckRow
		lo, hi int
	}{
		{"none met", []CheckRow{row(1000, 2*ms, 0), row(10000, 5*ms, 0)}, 0, 1000},
		{"all met", []CheckRow{row(1000, ms/2, 0), row(10000, ms/2, 0)}, 10000, 0},
		{"between", []CheckRow{row(1000, ms/2, 0), row(10000, 3*ms, 0), row(30000, 9*ms, 0)}, 1000, 10000},
		{"errors do not meet", []CheckRow{row(1000, ms/2, 0), row(5000, ms/2, 3), row(10000, 3*ms, 0)}, 1000, 5000},
		{"a noisy failure below the best is ignored", []CheckRow{row(1000, 2*ms, 0), row(5000, ms/2, 0), row(10000, 3*ms, 0)}, 5000, 10000},
		{"exactly the target does not meet it", []CheckRow{row(1000, ms, 0)}, 0, 1000},
		{"fail-policy decisions do not meet it", []CheckRow{row(1000, ms/2, 0), func() CheckRow {
			r := row(5000, ms/2, 0)
			r.Fallbacks = 40
			return r
		}()}, 1000, 5000},
		{"unknown fail-policy decisions do not meet it", []CheckRow{row(1000, ms/2, 0), func() CheckRow {
			r := row(5000, ms/2, 0)
			r.Fallbacks = -1
			return r
		}()}, 1000, 5000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lo, hi := searchBounds(tc.rows, ms)
			if lo != tc.lo || hi != tc.hi {
				t.Errorf("searchBounds = %d, %d; want %d, %d", lo, hi, tc.lo, tc.hi)
			}
		})
	}
}

func TestMedianRun(t *testing.T) {
	ms := time.Millisecond
	run := func(p99 time.Duration, errs int64, achieved float64) CheckRow {
		return CheckRow{P99: p99, Errors: errs, Achieved: achieved}
	}
	fallbacks := func(r CheckRow, n int64) CheckRow {
		r.Fallbacks = n
		return r
	}
	for _, tc := range []struct {
		name string
		runs []CheckRow
		want CheckRow
	}{
		{"one run", []CheckRow{run(2*ms, 0, 1)}, CheckRow{P99: 2 * ms, Achieved: 1, Runs: 1, P99Low: 2 * ms, P99High: 2 * ms}},
		{"the middle of three, its own columns", []CheckRow{run(5*ms, 0, 1), run(ms, 0, 2), run(3*ms, 0, 3)},
			CheckRow{P99: 3 * ms, Achieved: 3, Runs: 3, P99Low: ms, P99High: 5 * ms}},
		{"the higher middle of two: never the flattering one", []CheckRow{run(4*ms, 0, 1), run(2*ms, 0, 2)},
			CheckRow{P99: 4 * ms, Achieved: 1, Runs: 2, P99Low: 2 * ms, P99High: 4 * ms}},
		{"errors of every run", []CheckRow{run(ms, 2, 1), run(2*ms, 0, 2), run(3*ms, 5, 3)},
			CheckRow{P99: 2 * ms, Errors: 7, Achieved: 2, Runs: 3, P99Low: ms, P99High: 3 * ms}},
		{"equal p99s keep their order", []CheckRow{run(ms, 0, 1), run(ms, 0, 2), run(ms, 0, 3)},
			CheckRow{P99: ms, Achieved: 2, Runs: 3, P99Low: ms, P99High: ms}},
		{"fallbacks of every run", []CheckRow{fallbacks(run(ms, 0, 1), 3), run(2*ms, 0, 2), fallbacks(run(3*ms, 0, 3), 4)},
			CheckRow{P99: 2 * ms, Fallbacks: 7, Achieved: 2, Runs: 3, P99Low: ms, P99High: 3 * ms}},
		{"fallbacks unknown for one run", []CheckRow{fallbacks(run(ms, 0, 1), 3), fallbacks(run(2*ms, 0, 2), -1), run(3*ms, 0, 3)},
			CheckRow{P99: 2 * ms, Fallbacks: -1, Achieved: 2, Runs: 3, P99Low: ms, P99High: 3 * ms}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := medianRun(tc.runs); got != tc.want {
				t.Errorf("medianRun = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestRunDone: a request is timed from its due time; an answer past the
// scenario's timeout is counted as a timeout, and a failed request enters the
// percentiles at the timeout at least, so that fast failures do not flatter them.
func TestRunDone(t *testing.T) {
	const timeout = 20 * time.Millisecond
	for _, tc := range []struct {
		name     string
		age      time.Duration // how long ago the request was due
		err      error
		wantErr  bool
		atLeast  time.Duration
		lessThan time.Duration
	}{
		{"in time", 5 * time.Millisecond, nil, false, 5 * time.Millisecond, timeout},
		{"late", 30 * time.Millisecond, nil, true, 30 * time.Millisecond, time.Second},
		{"a fast failure", time.Millisecond, errors.New("connection refused"), true, timeout, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &run{start: time.Now().Add(-tc.age), interval: time.Millisecond, timeout: timeout, lat: make([]time.Duration, 1)}
			r.done(0, time.Now(), tc.err)
			if got := r.errs.Load() == 1; got != tc.wantErr {
				t.Errorf("counted as an error: %v, want %v", got, tc.wantErr)
			}
			if late := r.late.Load() == 1; late != (tc.wantErr && tc.err == nil) {
				t.Errorf("counted as late: %v", late)
			}
			if r.lat[0] < tc.atLeast || r.lat[0] >= tc.lessThan {
				t.Errorf("latency %v, want in [%v, %v)", r.lat[0], tc.atLeast, tc.lessThan)
			}
		})
	}
}

// TestRunsUseTheirOwnUsers: runs on one server reserve request numbers no other
// run uses, so that a cache-miss run never asks for a user another run asked for.
func TestRunsUseTheirOwnUsers(t *testing.T) {
	srv := &checkServer{}
	seen := map[int64]bool{}
	for run, n := range []int{100, 1, 60000} {
		first := srv.reserve(n)
		if first < 1<<20 {
			t.Fatalf("run %d starts at %d, among the warm-up's numbers", run, first)
		}
		for i := first; i < first+int64(n); i++ {
			if seen[i] {
				t.Fatalf("run %d reuses request number %d", run, i)
			}
			seen[i] = true
		}
	}
}

// TestAnswerCheckers: the generator's wire-level judges of answers agree with
// judging the decoded messages.
func TestAnswerCheckers(t *testing.T) {
	enc := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	okAuthz := enc(&authv3.CheckResponse{Status: &rpcstatus.Status{}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}})
	for _, tt := range []struct {
		name    string
		raw     []byte
		ratelim bool
		wantErr bool
	}{
		{name: "authz allowed", raw: okAuthz},
		{name: "authz without status", raw: enc(&authv3.CheckResponse{})},
		{name: "authz denied", raw: enc(&authv3.CheckResponse{Status: &rpcstatus.Status{Code: 7, Message: "rule x"}}), wantErr: true},
		{name: "authz status merged from two fields", raw: append(enc(&authv3.CheckResponse{Status: &rpcstatus.Status{Code: 7}}), okAuthz...), wantErr: true},
		{name: "authz truncated", raw: okAuthz[:len(okAuthz)-1], wantErr: true},
		{name: "authz garbage", raw: []byte{0xff, 0xff, 0xff}, wantErr: true},
		{name: "rls ok", ratelim: true, raw: enc(&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK, Statuses: []*rlsv3.RateLimitResponse_DescriptorStatus{{Code: rlsv3.RateLimitResponse_OK, LimitRemaining: 3}}})},
		{name: "rls over limit", ratelim: true, raw: enc(&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT}), wantErr: true},
		{name: "rls unknown code", ratelim: true, raw: enc(&rlsv3.RateLimitResponse{}), wantErr: true},
		{name: "rls garbage", ratelim: true, raw: []byte{0x0a, 0x05, 1}, wantErr: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			judge, decoded := checkAuthzAnswer, error(nil)
			if tt.ratelim {
				judge = checkRateLimitAnswer
				var m rlsv3.RateLimitResponse
				if decoded = proto.Unmarshal(tt.raw, &m); decoded == nil && m.GetOverallCode() != rlsv3.RateLimitResponse_OK {
					decoded = errors.New("not OK")
				}
			} else {
				var m authv3.CheckResponse
				if decoded = proto.Unmarshal(tt.raw, &m); decoded == nil && m.GetStatus().GetCode() != 0 {
					decoded = errors.New("denied")
				}
			}
			err := judge(tt.raw)
			if (err != nil) != tt.wantErr || (decoded != nil) != tt.wantErr {
				t.Errorf("wire judge: %v; decoded judge: %v; want failure %v", err, decoded, tt.wantErr)
			}
		})
	}
}

// TestScenarioRequests: in cache-miss runs every request names its own user, both
// as a copy (the grpc client) and stamped into the frame the lean client writes,
// and the shared templates stay as they were; otherwise requests are templates.
// Rows are labelled by the users they name.
func TestScenarioRequests(t *testing.T) {
	user := func(t *testing.T, svc string, msg []byte) string {
		t.Helper()
		if svc == "ratelimit" {
			var req rlsv3.RateLimitRequest
			if err := proto.Unmarshal(msg, &req); err != nil {
				t.Fatal(err)
			}
			return req.GetDescriptors()[0].GetEntries()[0].GetValue()
		}
		var req authv3.CheckRequest
		if err := proto.Unmarshal(msg, &req); err != nil {
			t.Fatal(err)
		}
		return req.GetAttributes().GetRequest().GetHttp().GetHeaders()["x-user"]
	}
	for _, svc := range []string{"ext_authz", "ratelimit"} {
		t.Run(svc, func(t *testing.T) {
			hit, err := newScenario(svc, "hit")
			if err != nil {
				t.Fatal(err)
			}
			// Request 1234 is template 1234 % 256, whose user is 210 % 100.
			if hit.stamp != nil || user(t, svc, hit.request(1234)) != "u000000000010" {
				t.Errorf("cache hit: request 1234 is user %q (stamped: %v)", user(t, svc, hit.request(1234)), hit.stamp != nil)
			}
			sc, err := newScenario(svc, "miss")
			if err != nil {
				t.Fatal(err)
			}
			// A row's label says which users its requests name: for rate limits,
			// which have no cache, as many as a thousand requests name.
			users := func(sc *scenario) int {
				seen := map[string]bool{}
				for i := range int64(1000) {
					seen[user(t, svc, sc.request(i))] = true
				}
				return len(seen)
			}
			wantHit, wantMiss := "hit", "miss"
			if svc == "ratelimit" {
				wantHit, wantMiss = fmt.Sprintf("n/a (%d users)", users(hit)), "n/a (new users)"
				if n := users(sc); n != 1000 {
					t.Errorf("a thousand cache-miss requests name %d users, want one each", n)
				}
			}
			if got := cacheLabel(svc, "hit"); got != wantHit {
				t.Errorf("hit rows are labelled %q, want %q", got, wantHit)
			}
			if got := cacheLabel(svc, "miss"); got != wantMiss {
				t.Errorf("miss rows are labelled %q, want %q", got, wantMiss)
			}
			for _, i := range []int64{0, 7, 255, 256, 1<<20 + 3, 999_999_999_999} {
				want := fmt.Sprintf("u%012d", i)
				if got := user(t, svc, sc.request(i)); got != want {
					t.Errorf("request %d: user %q, want %q", i, got, want)
				}
				frame := append([]byte(nil), sc.template(i)...)
				sc.stamp(frame, i)
				if got := user(t, svc, frame); got != want {
					t.Errorf("stamped request %d: user %q, want %q", i, got, want)
				}
				if got := user(t, svc, sc.template(i)); got != fmt.Sprintf("u%012d", i%256) {
					t.Errorf("template of request %d written to: user %q", i, got)
				}
			}
		})
	}
}

// TestMergeEnv: the server gets exactly one entry per key, --server-env's.
func TestMergeEnv(t *testing.T) {
	for _, tc := range []struct {
		name              string
		base, extra, want []string
	}{
		{"nothing to add", []string{"A=1", "B=2"}, nil, []string{"A=1", "B=2"}},
		{"new key", []string{"A=1"}, []string{"GOMAXPROCS=1"}, []string{"A=1", "GOMAXPROCS=1"}},
		{"replaced, duplicates too", []string{"GODEBUG=x=1", "A=1", "GODEBUG=y=2"}, []string{"GODEBUG=gctrace=1"}, []string{"A=1", "GODEBUG=gctrace=1"}},
		{"a key that prefixes another is not it", []string{"GOGC=50", "GOGCX=1"}, []string{"GOGC=off"}, []string{"GOGCX=1", "GOGC=off"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := mergeEnv(tc.base, tc.extra); !slices.Equal(got, tc.want) {
				t.Errorf("mergeEnv = %q, want %q", got, tc.want)
			}
		})
	}
}

// stallLag is the generator's own p99 lag past which a failed run is put down
// to the machine: Envoy's deadline in the load tool's requests.
const stallLag = 20 * time.Millisecond

// checkLoadProblems returns what is wrong with rows, and whether every row with a
// problem ran while the generator itself fell stallLag behind.
func checkLoadProblems(rows []CheckRow) (problems []string, stalled bool) {
	stalled = true
	for _, r := range rows {
		name := r.Service + "/" + r.Backend
		before := len(problems)
		if r.Errors != r.Late || r.Late > 50 || r.Achieved < 400 {
			problems = append(problems, fmt.Sprintf("%s: %d errors (%d of them late answers), %.0f/s achieved of 500", name, r.Errors, r.Late, r.Achieved))
		}
		if r.Fallbacks != 0 {
			problems = append(problems, fmt.Sprintf("%s: %d decisions by the fail policy, not the backend", name, r.Fallbacks))
		}
		if r.ServerBytesPerReq <= 0 || r.ServerCPUPerReq <= 0 {
			problems = append(problems, fmt.Sprintf("%s: server counters not read: %.0f B/req, %v CPU/req", name, r.ServerBytesPerReq, r.ServerCPUPerReq))
		}
		// The lean listener counts every call by how it ran.
		if r.HandedOff < 0 || r.InBursts < 0 || r.HandedOff+r.InBursts > 1 || r.ReaderPauses < 0 {
			problems = append(problems, fmt.Sprintf("%s: handed off %.3f and in bursts %.3f with %d reader pauses, want shares in [0, 1]", name, r.HandedOff, r.InBursts, r.ReaderPauses))
		}
		switch r.Backend {
		case "redis":
			if r.CallsPerPipeline < 1 || r.RedisCPUPerReq <= 0 || r.RedisRoundTrip <= 0 {
				problems = append(problems, fmt.Sprintf("%s: %.2f calls per pipeline, Redis CPU %v per request, round trips of %v; want at least one call per pipeline, some CPU and some time", name, r.CallsPerPipeline, r.RedisCPUPerReq, r.RedisRoundTrip))
			}
		default:
			if r.CallsPerPipeline != 0 || r.RedisRoundTrip != 0 {
				problems = append(problems, fmt.Sprintf("%s: %.2f calls per Redis pipeline, round trips of %v, without Redis", name, r.CallsPerPipeline, r.RedisRoundTrip))
			}
		}
		if len(problems) > before && r.PacerLagP99 < stallLag {
			stalled = false
		}
	}
	return problems, stalled
}

func TestCheckLoadProblems(t *testing.T) {
	good := func(backend string) CheckRow {
		r := CheckRow{Service: "ratelimit", Backend: backend, Achieved: 500, ServerBytesPerReq: 300, ServerCPUPerReq: 70 * time.Microsecond, PacerLagP99: time.Millisecond}
		if backend == "redis" {
			r.CallsPerPipeline, r.RedisCPUPerReq, r.RedisRoundTrip = 1.1, 30*time.Microsecond, 90*time.Microsecond
		}
		return r
	}
	failing := func(lag time.Duration) CheckRow {
		r := good("redis")
		r.Errors, r.Fallbacks, r.PacerLagP99 = 61, 4, lag
		return r
	}
	late := good("memquota")
	late.Errors, late.Late = 10, 10
	for _, tt := range []struct {
		name     string
		rows     []CheckRow
		problems int
		stalled  bool
	}{
		{"all good", []CheckRow{good("memquota"), good("redis"), late}, 0, true},
		{"errors in a calm run", []CheckRow{good("memquota"), failing(2 * time.Millisecond)}, 2, false},
		{"errors while the generator stalled", []CheckRow{good("memquota"), failing(43 * time.Millisecond)}, 2, true},
		{"one row stalled, one not", []CheckRow{failing(43 * time.Millisecond), failing(time.Millisecond)}, 4, false},
		{"Redis pipelines without Redis", []CheckRow{func() CheckRow { r := good("memquota"); r.CallsPerPipeline = 1; return r }()}, 1, false},
		{"Redis round trips without Redis", []CheckRow{func() CheckRow { r := good("memquota"); r.RedisRoundTrip = time.Millisecond; return r }()}, 1, false},
		{"no Redis round trips read", []CheckRow{func() CheckRow { r := good("redis"); r.RedisRoundTrip = 0; return r }()}, 1, false},
	} {
		problems, stalled := checkLoadProblems(tt.rows)
		if len(problems) != tt.problems || (len(problems) > 0 && stalled != tt.stalled) {
			t.Errorf("%s: %d problems %q, stalled %v; want %d, stalled %v", tt.name, len(problems), problems, stalled, tt.problems, tt.stalled)
		}
	}
}
