package mesh_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/routing/mesh"
)

// base is a valid mesh the cases add objects to.
const base = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`

// loadDir writes files into a fresh config directory and loads it with the mesh
// validator, as sluice serve does.
func loadDir(t *testing.T, files map[string]string) (*config.Snapshot, error) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l := &config.Loader{Dir: dir, Layers: []config.Layer{}, Validators: []config.Validator{mesh.Validator{}}}
	return l.Load()
}

func TestBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		// want are "LINE: substring" of the errors in vs.yaml, or
		// "FILE:LINE: substring" in another file.
		want []string
	}{
		{"unknown host", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: ratings}
`, []string{`8: unknown host "ratings" (ratings.default.svc.cluster.local is not a host of any ServiceEntry)`}},
		{"unknown subset", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
        subset: v3
`, []string{`10: unknown subset "v3" of host reviews.default.svc.cluster.local (DestinationRule default/reviews at `}},
		{"weights", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 30
`, []string{`8: weights of http[0] add up to 110, not 100`}},
		{"bad regex", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri:
        regex: "/a(b"
    route:
    - destination: {host: reviews}
  - match:
    - headers:
        x-user: {regex: "[z-a]"}
    route:
    - destination: {host: reviews}
`, []string{`9: invalid regex "/a(b": missing closing ): ` + "`/a(b`", `14: invalid regex "[z-a]": invalid character class range: ` + "`z-a`"}},
		{"duplicate route", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews, subset: v1}}]
`, []string{`9: duplicate route: http[0] has the same match at`, `12: http[3] can never match: http[2] at`}},
		{"unsupported fields", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    rewrite: {uri: /v2}
    corsPolicy:
      allowOrigins: [{exact: "*"}]
    match:
    - queryParams: {q: {exact: "1"}}
  tcp:
  - route: [{destination: {host: reviews}}]
`, []string{`8: VirtualService field "http[0].rewrite" is not supported by Sluice`, `9: VirtualService field "http[0].corsPolicy" is not supported`,
			`12: VirtualService field "http[0].match[0].queryParams" is not supported`, `13: VirtualService field "tcp" is not supported`}},
		{"reserved port", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: admin}
spec:
  hosts: [admin]
  ports: [{number: 15001, name: http}]
  resolution: STATIC
`, []string{`6: port 15001 is reserved for the sidecar`}},
		{"deprecated fields", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    fault:
      delay: {fixedDelay: 1s, percent: 10}
`, []string{`9: VirtualService field "http[0].fault.delay.percent" is deprecated and not supported by Sluice: use percentage.value`}},
		{"two virtual services for one host", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http: [{route: [{destination: {host: reviews}}]}]
`, []string{`12: host reviews.default.svc.cluster.local is already routed by VirtualService default/a at`}},
		{"faults, retries, timeouts", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec:
  hosts: [reviews]
  gateways: [my-gateway]
  http:
  - route: [{destination: {host: reviews}}]
    timeout: -1s
    retries: {attempts: 2, retryOn: "5xx,sometimes"}
    fault:
      abort: {grpcStatus: NOT_A_STATUS, percentage: {value: 150}}
`, []string{`6: gateway "my-gateway" is not supported`, `9: timeout must be a positive duration`, `10: unknown retryOn condition "sometimes"`,
			`12: grpcStatus "NOT_A_STATUS" is not a gRPC error status name`, `12: percentage 150 is not between 0 and 100`}},
		{"service entries and rules", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: pg, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dup}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    loadBalancer: {simple: RANDOM}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm}
spec: {address: vm.example.com}
`, []string{`6: port 5432: protocol "TCP" is not supported`, `7: resolution DNS is not supported`,
			// The rules are read in name order: dup first, so reviews is the duplicate.
			`base.yaml:14: host reviews.default.svc.cluster.local already has DestinationRule default/dup at`,
			`15: DestinationRule field "trafficPolicy.tls" is not supported`, `16: load balancer RANDOM is not supported`,
			`21: WorkloadEntry address "vm.example.com" is not an IP address`}},
		{"destination port", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: multi}
spec:
  hosts: [multi]
  ports: [{number: 80, name: http}, {number: 81, name: grpc}]
  resolution: STATIC
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /x}}]
    route: [{destination: {host: multi}}]
  - route: [{destination: {host: multi, port: {number: 82}}}]
`, []string{`16: destination multi.default.svc.cluster.local has several ports and none is 9080`, `17: host multi.default.svc.cluster.local has no port 82`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadDir(t, map[string]string{"base.yaml": base, "vs.yaml": tc.yaml})
			if err == nil {
				t.Fatal("config accepted")
			}
			got := config.Errors(err)
			for _, w := range tc.want {
				at, msg, _ := strings.Cut(w, ": ")
				file, line, ok := strings.Cut(at, ":")
				if !ok {
					file, line = "vs.yaml", at
				}
				found := false
				for _, e := range got {
					if filepath.Base(e.Pos.File) == file && e.Pos.String() == e.Pos.File+":"+line && strings.Contains(e.Msg, msg) {
						found = true
					}
				}
				if !found {
					t.Errorf("no error %q; got:\n%v", w, err)
				}
			}
			if len(got) != len(tc.want) {
				t.Errorf("%d errors, want %d:\n%v", len(got), len(tc.want), err)
			}
		})
	}
}

func TestGoodConfig(t *testing.T) {
	s, err := loadDir(t, map[string]string{"base.yaml": base, "vs.yaml": `apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews.default]
  gateways: [mesh]
  http:
  - match: [{headers: {end-user: {exact: jason}}}, {uri: {prefix: /v2}, ignoreUriCase: true}]
    route: [{destination: {host: reviews, subset: v2}}]
    fault:
      delay: {fixedDelay: 1.5s, percentage: {value: 10}}
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
    - {destination: {host: reviews}, weight: 0}
    timeout: 250ms
    retries: {attempts: 3, perTryTimeout: 100ms, retryOn: "unavailable,503"}
`})
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.Build(s, mesh.Options{})
	if err != nil {
		t.Fatal(err)
	}
	svc, ok := m.Service("reviews.default.svc.cluster.local")
	if !ok {
		t.Fatal("no reviews service")
	}
	if got := svc.Aliases; strings.Join(got, ",") != "reviews.default,reviews.default.svc" {
		t.Errorf("aliases = %v", got)
	}
	if len(svc.Routes) != 2 || len(svc.Routes[0].Matches) != 2 || svc.Routes[0].Fault.DelayPercent != 10 {
		t.Fatalf("routes = %+v", svc.Routes)
	}
	r := svc.Routes[1]
	if r.Timeout.Milliseconds() != 250 || r.Retries.Attempts != 3 || strings.Join(r.Retries.RetryOn, ",") != "unavailable,retriable-status-codes" || r.Retries.StatusCode[0] != 503 {
		t.Errorf("route = %+v, retries %+v", r, r.Retries)
	}
}

// TestAliasesYieldToHosts: a host written as reviews.default wins over the alias of
// reviews.default.svc.cluster.local, in whichever order they are read.
func TestAliasesYieldToHosts(t *testing.T) {
	for _, names := range [][2]string{{"a", "b"}, {"b", "a"}} {
		s, err := loadDir(t, map[string]string{"se.yaml": `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ` + names[0] + `}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: STATIC
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ` + names[1] + `}
spec:
  hosts: [reviews.default]
  ports: [{number: 80, name: http}]
  resolution: STATIC
`})
		if err != nil {
			t.Fatal(err)
		}
		m, err := mesh.Build(s, mesh.Options{})
		if err != nil {
			t.Fatal(err)
		}
		svc, _ := m.Service("reviews.default.svc.cluster.local")
		if strings.Join(svc.Aliases, ",") != "reviews.default.svc" {
			t.Errorf("order %v: aliases %v", names, svc.Aliases)
		}
	}
}
