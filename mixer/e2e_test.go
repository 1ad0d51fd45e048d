package mixer_test

import (
	"bufio"
	"context"
	"encoding/json"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/sluicemesh/sluice/loadtest"
)

// The traffic of the end-to-end test, fixed by hand so that every expected value
// below is known without running any of Sluice's code.
func fixedCalls(mesh *loadtest.Mesh) []loadtest.Call {
	w := map[string]*loadtest.Workload{}
	for _, x := range mesh.Workloads {
		w[x.Name] = x
	}
	mtlsHTTP := &loadtest.Route{Protocol: "http", MTLS: true}
	plainGRPC := &loadtest.Route{Protocol: "grpc"}
	mtlsTCP := &loadtest.Route{Protocol: "tcp", MTLS: true}
	t0 := time.Unix(1_790_000_000, 0)
	var calls []loadtest.Call
	http := func(r *loadtest.Route, src, dst string, code uint32, grpc, flags string, ms int, reqH, reqB, respH, respB uint64) {
		calls = append(calls, loadtest.Call{
			Route: r, Source: w[src], Dest: w[dst], Protocol: r.Protocol, Method: "GET", Path: "/p",
			Code: code, GRPCStatus: grpc, Flags: flags, Start: t0.Add(time.Duration(len(calls)) * time.Second),
			Duration:   time.Duration(ms) * time.Millisecond,
			ReqHeaders: reqH, ReqBody: reqB, RespHeaders: respH, RespBody: respB,
		})
	}
	for range 3 {
		http(mtlsHTTP, "productpage-v1", "details-v1", 200, "", "", 12, 300, 0, 150, 1000)
	}
	http(mtlsHTTP, "productpage-v1", "details-v1", 503, "", "UF", 2, 300, 0, 100, 0)
	for range 2 {
		http(mtlsHTTP, "productpage-v1", "reviews-v2", 200, "", "", 40, 400, 20, 200, 2000)
	}
	for range 2 {
		http(plainGRPC, "productpage-v1", "recommendations-v1", 200, "0", "", 5, 100, 10, 50, 20)
	}
	http(plainGRPC, "productpage-v1", "recommendations-v1", 200, "14", "", 1, 100, 10, 50, 0)
	for i, b := range []uint64{100, 200} {
		calls = append(calls, loadtest.Call{Route: mtlsTCP, Source: w["ratings-v1"], Dest: w["mongodb-v1"], Protocol: "tcp",
			Start: t0.Add(time.Duration(100+i) * time.Second), Duration: time.Second, Sent: b, Received: b / 10})
	}
	return calls
}

// side is one workload's identity labels, as Istio names them.
func side(prefix string, w *loadtest.Workload) map[string]string {
	return map[string]string{
		prefix + "_workload":           w.Name,
		prefix + "_workload_namespace": w.Namespace,
		prefix + "_app":                w.App,
		prefix + "_version":            w.Version,
		prefix + "_canonical_service":  w.App,
		prefix + "_canonical_revision": w.Version,
		prefix + "_cluster":            "Kubernetes",
	}
}

func httpLabels(reporter string, src, dst *loadtest.Workload, mtls bool, protocol, code, grpc, flags string) map[string]string {
	l := map[string]string{
		"reporter": reporter, "request_protocol": protocol, "response_code": code,
		"grpc_response_status": grpc, "response_flags": flags,
		"destination_service":           dst.FQDN(),
		"destination_service_name":      dst.Service,
		"destination_service_namespace": dst.Namespace,
		"source_principal":              "unknown", "destination_principal": "unknown",
		"connection_security_policy": "unknown",
	}
	maps.Copy(l, side("source", src))
	maps.Copy(l, side("destination", dst))
	if reporter == "destination" {
		l["connection_security_policy"] = "none"
		if mtls {
			l["connection_security_policy"] = "mutual_tls"
			l["source_principal"] = src.Principal()
			l["destination_principal"] = dst.Principal()
		}
	}
	return l
}

func tcpLabels(reporter string, src, dst *loadtest.Workload) map[string]string {
	l := httpLabels(reporter, src, dst, true, "tcp", "", "", "-")
	delete(l, "response_code")
	delete(l, "grpc_response_status")
	return l
}

// Istio's label names (Telemetry v2, "Istio Standard Metrics").
var istioHTTPLabels = []string{
	"connection_security_policy", "destination_app", "destination_canonical_revision", "destination_canonical_service",
	"destination_cluster", "destination_principal", "destination_service", "destination_service_name",
	"destination_service_namespace", "destination_version", "destination_workload", "destination_workload_namespace",
	"grpc_response_status", "reporter", "request_protocol", "response_code", "response_flags", "source_app",
	"source_canonical_revision", "source_canonical_service", "source_cluster", "source_principal", "source_version",
	"source_workload", "source_workload_namespace",
}

const telemetryConfig = `
apiVersion: sluice.dev/v1alpha1
kind: Instance
metadata: {name: accesslog, namespace: sluice-system}
spec:
  template: logentry
  params:
    severity: 'response.code >= 500 ? "error" : "info"'
    timestamp: request.time
    variables:
      source: source.workload.name
      destination: destination.workload.name
      code: response.code
      reporter: context.reporter.role
---
apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: logfile, namespace: sluice-system}
spec:
  adapter: stdio
  params: {outputPath: LOGFILE}
---
apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: http-log, namespace: sluice-system}
spec:
  match: context.protocol == "http" || context.protocol == "grpc"
  actions:
  - handler: logfile
    instances: [accesslog]
`

func TestEndToEndIstioMetrics(t *testing.T) {
	mesh := loadtest.Bookinfo()
	dir := t.TempDir()
	logFile := filepath.Join(t.TempDir(), "access.jsonl")
	writeFile(t, dir, "workloads.yaml", mesh.WorkloadEntries())
	writeFile(t, dir, "telemetry.yaml", replace(telemetryConfig, "LOGFILE", logFile))
	h := start(t, dir, nil)

	fleet := loadtest.NewFleet(h.conn())
	fleet.Batch = 3 // several messages per stream
	calls := fixedCalls(mesh)
	if err := fleet.Send(context.Background(), calls); err != nil {
		t.Fatal(err)
	}
	if err := fleet.Close(); err != nil {
		t.Fatal(err)
	}
	f := h.waitProcessed(22) // 9 HTTP and 2 TCP calls, each reported by both sidecars
	if got := f.Sum("sluice_entries_processed_total", nil); got != 22 {
		t.Fatalf("processed %v entries, want 22", got)
	}
	if got := f.Sum("sluice_entries_dropped_total", nil); got != 0 {
		t.Errorf("dropped %v entries", got)
	}

	w := map[string]*loadtest.Workload{}
	for _, x := range mesh.Workloads {
		w[x.Name] = x
	}
	pp, det, rev, rec, rat, mongo := w["productpage-v1"], w["details-v1"], w["reviews-v2"], w["recommendations-v1"], w["ratings-v1"], w["mongodb-v1"]

	type series struct {
		labels map[string]string
		count  float64
		sum    float64 // histograms only
	}
	var requests, durations, reqBytes, respBytes []series
	for _, rep := range []string{"source", "destination"} {
		requests = append(requests,
			series{httpLabels(rep, pp, det, true, "http", "200", "", "-"), 3, 0},
			series{httpLabels(rep, pp, det, true, "http", "503", "", "UF"), 1, 0},
			series{httpLabels(rep, pp, rev, true, "http", "200", "", "-"), 2, 0},
			series{httpLabels(rep, pp, rec, false, "grpc", "200", "0", "-"), 2, 0},
			series{httpLabels(rep, pp, rec, false, "grpc", "200", "14", "-"), 1, 0},
		)
		durations = append(durations,
			series{httpLabels(rep, pp, det, true, "http", "200", "", "-"), 3, 36},
			series{httpLabels(rep, pp, det, true, "http", "503", "", "UF"), 1, 2},
			series{httpLabels(rep, pp, rev, true, "http", "200", "", "-"), 2, 80},
			series{httpLabels(rep, pp, rec, false, "grpc", "200", "0", "-"), 2, 10},
			series{httpLabels(rep, pp, rec, false, "grpc", "200", "14", "-"), 1, 1},
		)
		reqBytes = append(reqBytes,
			series{httpLabels(rep, pp, det, true, "http", "200", "", "-"), 3, 900},
			series{httpLabels(rep, pp, rev, true, "http", "200", "", "-"), 2, 840},
		)
		respBytes = append(respBytes,
			series{httpLabels(rep, pp, det, true, "http", "200", "", "-"), 3, 3450},
			series{httpLabels(rep, pp, det, true, "http", "503", "", "UF"), 1, 100},
			series{httpLabels(rep, pp, rec, false, "grpc", "200", "14", "-"), 1, 50},
		)
	}
	checkExact := func(name string, want []series, all bool) {
		t.Helper()
		fam := f[name]
		if fam == nil {
			t.Fatalf("no %s on /metrics", name)
		}
		for _, s := range want {
			got := exactSeries(fam, s.labels)
			if got == nil {
				t.Errorf("%s: no series with labels %v", name, s.labels)
				continue
			}
			switch {
			case got.Counter != nil:
				if got.GetCounter().GetValue() != s.count {
					t.Errorf("%s%v = %v, want %v", name, s.labels, got.GetCounter().GetValue(), s.count)
				}
			case got.Histogram != nil:
				hg := got.GetHistogram()
				if float64(hg.GetSampleCount()) != s.count || hg.GetSampleSum() != s.sum {
					t.Errorf("%s%v: count %d sum %v, want %v and %v", name, s.labels, hg.GetSampleCount(), hg.GetSampleSum(), s.count, s.sum)
				}
			}
		}
		if all && len(fam.GetMetric()) != len(want) {
			t.Errorf("%s has %d series, want exactly %d", name, len(fam.GetMetric()), len(want))
		}
		for _, m := range fam.GetMetric() {
			names := slices.Sorted(maps.Keys(loadtest.Labels(m)))
			wantNames := istioHTTPLabels
			if name == "istio_tcp_sent_bytes_total" || name == "istio_tcp_received_bytes_total" ||
				name == "istio_tcp_connections_opened_total" || name == "istio_tcp_connections_closed_total" {
				wantNames = slices.DeleteFunc(slices.Clone(istioHTTPLabels), func(s string) bool {
					return s == "response_code" || s == "grpc_response_status"
				})
			}
			if !slices.Equal(names, wantNames) {
				t.Errorf("%s label names %v, want Istio's %v", name, names, wantNames)
				break
			}
		}
	}
	checkExact("istio_requests_total", requests, true)
	checkExact("istio_request_duration_milliseconds", durations, true)
	checkExact("istio_request_bytes", reqBytes, false)
	checkExact("istio_response_bytes", respBytes, false)
	var tcpSent, tcpRecv, opened []series
	for _, rep := range []string{"source", "destination"} {
		tcpSent = append(tcpSent, series{tcpLabels(rep, rat, mongo), 300, 0})
		tcpRecv = append(tcpRecv, series{tcpLabels(rep, rat, mongo), 30, 0})
		opened = append(opened, series{tcpLabels(rep, rat, mongo), 2, 0})
	}
	checkExact("istio_tcp_sent_bytes_total", tcpSent, true)
	checkExact("istio_tcp_received_bytes_total", tcpRecv, true)
	checkExact("istio_tcp_connections_opened_total", opened, true)
	checkExact("istio_tcp_connections_closed_total", opened, true)

	// Histogram buckets are Envoy's, and observations land in the right ones.
	dur := exactSeries(f["istio_request_duration_milliseconds"], httpLabels("source", pp, det, true, "http", "200", "", "-"))
	wantBounds := []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000, math.Inf(1)}
	var bounds []float64
	for _, b := range dur.GetHistogram().GetBucket() {
		bounds = append(bounds, b.GetUpperBound())
		switch b.GetUpperBound() {
		case 10:
			if b.GetCumulativeCount() != 0 {
				t.Errorf("le=10 holds %d, want 0 (three 12 ms requests)", b.GetCumulativeCount())
			}
		case 25:
			if b.GetCumulativeCount() != 3 {
				t.Errorf("le=25 holds %d, want 3", b.GetCumulativeCount())
			}
		}
	}
	if !slices.Equal(bounds, wantBounds) {
		t.Errorf("buckets %v, want Envoy's %v", bounds, wantBounds)
	}

	// The stdio handler wrote one JSON line per HTTP entry; stop flushes it.
	if err := h.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	lines := readJSONLines(t, logFile)
	if len(lines) != 18 {
		t.Fatalf("%d log lines, want 18", len(lines))
	}
	errorsLogged := 0
	for _, l := range lines {
		if l["instance"] != "sluice-system/accesslog" || l["source"] != "productpage-v1" {
			t.Errorf("log line %v", l)
		}
		if l["level"] == "error" {
			errorsLogged++
		}
	}
	if errorsLogged != 2 { // the 503, reported by both sidecars
		t.Errorf("%d error-level lines, want 2", errorsLogged)
	}
}

// exactSeries returns the series whose label set is exactly want.
func exactSeries(fam *dto.MetricFamily, want map[string]string) *dto.Metric {
	for _, m := range fam.GetMetric() {
		if maps.Equal(loadtest.Labels(m), want) {
			return m
		}
	}
	return nil
}

func readJSONLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("bad JSON line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func replace(s, old, new string) string { return strings.ReplaceAll(s, old, new) }
