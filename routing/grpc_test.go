package routing_test

import (
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// meshYAML is the test mesh: one gRPC service, echo, with subsets v1, v2 and flaky,
// and a ring-hashed service, sticky, on the v1 and v2 backends.
func meshYAML(ports map[string]int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: test}
spec:
  hosts: [echo.test.svc.cluster.local]
  ports: [{number: 7070, name: grpc, protocol: GRPC}]
  resolution: STATIC
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sticky, namespace: test}
spec:
  hosts: [sticky.test.svc.cluster.local]
  ports: [{number: 7070, name: grpc, protocol: GRPC}]
  resolution: STATIC
  workloadSelector: {labels: {sticky: "yes"}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky, namespace: test}
spec:
  host: sticky
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: test}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: flaky, labels: {version: flaky}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-v1, namespace: test}
spec: {address: 127.0.0.11, labels: {app: echo, version: v1, sticky: "yes"}, ports: {grpc: %d}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-v2, namespace: test}
spec: {address: 127.0.0.12, labels: {app: echo, version: v2, sticky: "yes"}, ports: {grpc: %d}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-flaky, namespace: test}
spec: {address: 127.0.0.13, labels: {app: echo, version: flaky}, ports: {grpc: %d}}
`, ports["v1"], ports["v2"], ports["flaky"])
}

// routesYAML is echo's VirtualService; conv says where x-conv requests go.
func routesYAML(conv string) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: test}
spec:
  hosts: [echo]
  http:
  - name: canary-by-header
    match: [{headers: {x-canary: {exact: "1"}}}]
    route: [{destination: {host: echo, subset: v2}}]
  - name: half-aborted
    match: [{headers: {x-fault: {exact: abort}}}]
    route: [{destination: {host: echo, subset: v1}}]
    fault:
      abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: {value: 50}}
  - name: retried
    match: [{headers: {x-retry: {exact: "1"}}}]
    route: [{destination: {host: echo, subset: flaky}}]
    retries: {attempts: 3, retryOn: unavailable}
  - name: not-retried
    match: [{headers: {x-retry: {exact: "0"}}}]
    route: [{destination: {host: echo, subset: flaky}}]
    retries: {attempts: 0}
  - name: timed-out
    match: [{headers: {x-timeout: {exact: "1"}}}]
    route: [{destination: {host: echo, subset: v1}}]
    timeout: 100ms
  - name: converge
    match: [{headers: {x-conv: {exact: "1"}}}]
    route: [{destination: {host: echo, subset: %s}}]
  - name: split
    route:
    - {destination: {host: echo, subset: v1}, weight: 80}
    - {destination: {host: echo, subset: v2}, weight: 20}
`, conv)
}

// TestProxylessGRPC runs grpc-go's own xDS client (in child processes) against the
// routing core, with real gRPC backends on loopback.
func TestProxylessGRPC(t *testing.T) {
	ports := map[string]int{}
	for i, name := range []string{"v1", "v2", "flaky"} {
		ports[name] = startBackend(t, fmt.Sprintf("127.0.0.%d", 11+i), &backend{name: name, flaky: name == "flaky"})
	}
	s := startSluice(t, map[string]string{"mesh.yaml": meshYAML(ports), "routes.yaml": routesYAML("v1")})
	const target = "xds:///echo.test.svc.cluster.local:7070"
	agents := make([]*agent, 3)
	for i := range agents {
		agents[i] = startAgent(t, s.xdsAddr(), fmt.Sprintf("sidecar~127.0.1.%d~client-%d.test~test.svc.cluster.local", i+1, i))
	}
	a := agents[0]

	t.Run("weighted split 80/20", func(t *testing.T) {
		const n = 5000
		r := a.do(t, command{Op: "calls", Target: target, N: n, Concurrency: 8})
		if r.Codes["OK"] != n {
			t.Fatalf("codes %v (%v)", r.Codes, r.Errors)
		}
		share := 100 * float64(r.Backends["v1"]) / n
		t.Logf("v1 %.1f%%, v2 %.1f%% of %d calls", share, 100-share, n)
		if math.Abs(share-80) > 3 {
			t.Errorf("v1 got %.1f%% of the calls, want 80 ± 3 (%v)", share, r.Backends)
		}
	})

	t.Run("header match routes to its subset", func(t *testing.T) {
		r := a.do(t, command{Op: "calls", Target: target, N: 200, Concurrency: 4, Metadata: map[string]string{"x-canary": "1"}})
		if r.Backends["v2"] != 200 {
			t.Errorf("x-canary: 1 went to %v (codes %v), want all to v2", r.Backends, r.Codes)
		}
	})

	t.Run("50% abort fault", func(t *testing.T) {
		const n = 2000
		r := a.do(t, command{Op: "calls", Target: target, N: n, Concurrency: 8, Metadata: map[string]string{"x-fault": "abort"}})
		failed := r.Codes["ResourceExhausted"]
		t.Logf("codes %v", r.Codes)
		if failed+r.Codes["OK"] != n {
			t.Errorf("unexpected codes %v (%v)", r.Codes, r.Errors)
		}
		if share := 100 * float64(failed) / n; math.Abs(share-50) > 5 {
			t.Errorf("%.1f%% aborted, want 50 ± 5", share)
		}
	})

	t.Run("retries turn a failure into success", func(t *testing.T) {
		// The flaky backend fails every other call: without retries about half the
		// calls fail, with them none does.
		without := a.do(t, command{Op: "calls", Target: target, N: 60, Concurrency: 1, Metadata: map[string]string{"x-retry": "0"}})
		if without.Codes["Unavailable"] != 30 {
			t.Errorf("without retries: %v, want half Unavailable", without.Codes)
		}
		with := a.do(t, command{Op: "calls", Target: target, N: 60, Concurrency: 1, Metadata: map[string]string{"x-retry": "1"}})
		if with.Codes["OK"] != 60 {
			t.Errorf("with retries: %v (%v), want all OK", with.Codes, with.Errors)
		}
	})

	t.Run("timeout from max_stream_duration", func(t *testing.T) {
		r := a.do(t, command{Op: "calls", Target: target, N: 5, Metadata: map[string]string{"x-timeout": "1", "x-sleep": "1s"}})
		if r.Codes["DeadlineExceeded"] != 5 {
			t.Errorf("slow calls: %v, want DeadlineExceeded after the route's 100ms", r.Codes)
		}
	})

	t.Run("ring hash keeps a user on one backend", func(t *testing.T) {
		const sticky = "xds:///sticky.test.svc.cluster.local:7070"
		// The ring's places come from the backends' addresses, new ports each run:
		// with two backends, eight users all landed on one about once in a hundred
		// runs; with 24 the chance is under one in a million.
		seen := map[string]bool{}
		for i := range 24 {
			user := fmt.Sprint("user-", i)
			r := a.do(t, command{Op: "calls", Target: sticky, N: 12, Concurrency: 3, Metadata: map[string]string{"x-user": user}})
			if len(r.Backends) != 1 || r.Codes["OK"] != 12 {
				t.Errorf("user %s went to %v (codes %v), want one backend", user, r.Backends, r.Codes)
			}
			for b := range r.Backends {
				seen[b] = true
			}
		}
		if len(seen) < 2 {
			t.Errorf("24 users all hashed to %v; the ring is not spreading them", seen)
		}
	})

	t.Run("config edit re-routes every client within a second", func(t *testing.T) {
		md := map[string]string{"x-conv": "1"}
		for _, ag := range agents {
			if r := ag.do(t, command{Op: "calls", Target: target, N: 5, Metadata: md}); r.Backends["v1"] != 5 {
				t.Fatalf("before the edit: %v", r.Backends)
			}
		}
		for _, ag := range agents {
			ag.send(t, command{Op: "until", Target: target, Metadata: md, Backend: "v2", Timeout: 10 * time.Second})
		}
		edited := time.Now()
		writeFile(t, filepath.Join(s.dir, "routes.yaml"), routesYAML("v2"))
		for i, ag := range agents {
			r := ag.recv(t)
			took := time.Unix(0, r.FirstSeen).Sub(edited)
			t.Logf("client %d re-routed %v after the edit", i, took.Round(time.Millisecond))
			if took > time.Second {
				t.Errorf("client %d took %v", i, took)
			}
			if !r.Stable {
				t.Errorf("client %d went back to the old route", i)
			}
		}
	})

	t.Run("bad edit keeps the last good config", func(t *testing.T) {
		writeFile(t, filepath.Join(s.dir, "routes.yaml"), strings.Replace(routesYAML("v1"), "weight: 20", "weight: 25", 1))
		deadline := time.Now().Add(5 * time.Second)
		for s.watcher.LastError() == nil && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		err := s.watcher.LastError()
		if err == nil || !strings.Contains(err.Error(), "routes.yaml:") || !strings.Contains(err.Error(), "add up to 105, not 100") {
			t.Fatalf("bad edit: %v", err)
		}
		// x-conv still goes to v2: the rejected file changed nothing.
		if r := a.do(t, command{Op: "calls", Target: target, N: 20, Metadata: map[string]string{"x-conv": "1"}}); r.Backends["v2"] != 20 {
			t.Errorf("after a rejected edit: %v", r.Backends)
		}
	})
}
