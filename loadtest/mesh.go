// Package loadtest simulates an Envoy fleet: a mesh model (bookinfo), calls between its
// workloads, the access-log entries each sidecar reports for them, and ALS streams.
package loadtest

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"
)

// Workload is a workload of the simulated mesh.
type Workload struct {
	Name, Namespace, App, Version string
	ServiceAccount                string
	IP                            string
	// Service is the short name of the service the workload serves, and Port its port.
	Service string
	Port    uint32
	Cluster string
	// peer caches the x-envoy-peer-metadata header, costly to encode per entry.
	peer string
}

// Pod returns the workload's (single) pod name.
func (w *Workload) Pod() string { return w.Name + "-5d8f9c7b6-x2k4q" }

// NodeID returns the ID of the workload's sidecar, in Istio's format.
func (w *Workload) NodeID() string {
	return "sidecar~" + w.IP + "~" + w.Pod() + "." + w.Namespace + "~" + w.Namespace + ".svc.cluster.local"
}

// FQDN returns the workload's service host.
func (w *Workload) FQDN() string { return w.Service + "." + w.Namespace + ".svc.cluster.local" }

// Principal returns the workload's SPIFFE identity.
func (w *Workload) Principal() string {
	return "spiffe://cluster.local/ns/" + w.Namespace + "/sa/" + w.ServiceAccount
}

// Labels returns the pod labels.
func (w *Workload) Labels() map[string]string {
	return map[string]string{"app": w.App, "version": w.Version}
}

// Route is a kind of call in the mesh: from a workload to one of a service's workloads.
type Route struct {
	From     *Workload
	To       []*Workload // picked at random: a service's versions
	Protocol string      // http, grpc or tcp
	Paths    []string
	// Weight is the route's share of the traffic.
	Weight float64
	MTLS   bool
}

// Mesh is a set of workloads and the routes between them.
type Mesh struct {
	Workloads []*Workload
	Routes    []Route
}

// Bookinfo returns Istio's bookinfo sample as a mesh: productpage calls details and
// reviews over mTLS; reviews v2 and v3 call ratings; ratings talks TCP to mongodb;
// productpage also calls a gRPC "recommendations" service in plain text.
func Bookinfo() *Mesh {
	w := func(name, app, version, ip, svc string, port uint32) *Workload {
		return &Workload{Name: name, Namespace: "default", App: app, Version: version,
			ServiceAccount: "bookinfo-" + app, IP: ip, Service: svc, Port: port, Cluster: "Kubernetes"}
	}
	pp := w("productpage-v1", "productpage", "v1", "10.44.0.10", "productpage", 9080)
	det := w("details-v1", "details", "v1", "10.44.0.11", "details", 9080)
	r1 := w("reviews-v1", "reviews", "v1", "10.44.0.12", "reviews", 9080)
	r2 := w("reviews-v2", "reviews", "v2", "10.44.0.13", "reviews", 9080)
	r3 := w("reviews-v3", "reviews", "v3", "10.44.0.14", "reviews", 9080)
	rat := w("ratings-v1", "ratings", "v1", "10.44.0.15", "ratings", 9080)
	mongo := w("mongodb-v1", "mongodb", "v1", "10.44.0.16", "mongodb", 27017)
	rec := w("recommendations-v1", "recommendations", "v1", "10.44.0.17", "recommendations", 7070)
	return &Mesh{
		Workloads: []*Workload{pp, det, r1, r2, r3, rat, mongo, rec},
		Routes: []Route{
			{From: pp, To: []*Workload{det}, Protocol: "http", Paths: []string{"/details/0"}, Weight: 1, MTLS: true},
			{From: pp, To: []*Workload{r1, r2, r3}, Protocol: "http", Paths: []string{"/reviews/0"}, Weight: 1, MTLS: true},
			{From: r2, To: []*Workload{rat}, Protocol: "http", Paths: []string{"/ratings/0"}, Weight: 0.33, MTLS: true},
			{From: r3, To: []*Workload{rat}, Protocol: "http", Paths: []string{"/ratings/0"}, Weight: 0.33, MTLS: true},
			{From: rat, To: []*Workload{mongo}, Protocol: "tcp", Weight: 0.2, MTLS: true},
			{From: pp, To: []*Workload{rec}, Protocol: "grpc", Paths: []string{"/recommendations.Recommender/List"}, Weight: 0.5},
		},
	}
}

// WorkloadEntries returns the mesh as Istio WorkloadEntry objects (YAML), so that the
// registry can resolve addresses where no peer metadata is exchanged (TCP).
func (m *Mesh) WorkloadEntries() string {
	var b strings.Builder
	for _, w := range m.Workloads {
		fmt.Fprintf(&b, `---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: %s
  namespace: %s
  labels:
    service.istio.io/workload-name: %s
spec:
  address: %s
  serviceAccount: %s
  labels:
    app: %s
    version: %s
    topology.istio.io/cluster: %s
  ports:
    %s: %d
`, w.Pod(), w.Namespace, w.Name, w.IP, w.ServiceAccount, w.App, w.Version, w.Cluster, portName(w), w.Port)
	}
	return b.String()
}

func portName(w *Workload) string {
	if w.App == "mongodb" {
		return "tcp-mongo"
	}
	return "http"
}

// Call is one simulated request (or TCP connection) between two workloads.
type Call struct {
	Route    *Route
	Source   *Workload
	Dest     *Workload
	Protocol string
	Method   string
	Path     string
	Code     uint32
	// GRPCStatus is set for gRPC calls.
	GRPCStatus string
	Start      time.Time
	Duration   time.Duration
	// Request and response header and body sizes.
	ReqHeaders, ReqBody, RespHeaders, RespBody uint64
	// Sent and Received are a TCP connection's bytes, as the destination counts them.
	Sent, Received uint64
	// Flags is an Envoy response flag short name ("UF", "UO"), empty for none.
	Flags string
}

// Traffic draws calls from a mesh with a seeded generator, so runs repeat exactly.
type Traffic struct {
	mesh  *Mesh
	rng   *rand.Rand
	total float64
	now   time.Time
}

// NewTraffic returns a call generator.
func NewTraffic(m *Mesh, seed uint64) *Traffic {
	t := &Traffic{mesh: m, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), now: time.Unix(1_790_000_000, 0)}
	for _, r := range m.Routes {
		t.total += r.Weight
	}
	return t
}

// Next returns the next call.
func (t *Traffic) Next() Call {
	x := t.rng.Float64() * t.total
	ri := 0
	for i, r := range t.mesh.Routes {
		if x < r.Weight {
			ri = i
			break
		}
		x -= r.Weight
		ri = i
	}
	r := &t.mesh.Routes[ri]
	t.now = t.now.Add(time.Millisecond)
	c := Call{
		Route: r, Source: r.From, Dest: r.To[t.rng.IntN(len(r.To))], Protocol: r.Protocol,
		Start: t.now, Duration: time.Duration(1+t.rng.ExpFloat64()*20*1e6) * time.Nanosecond,
	}
	switch r.Protocol {
	case "tcp":
		c.Sent = uint64(100 + t.rng.IntN(4000))
		c.Received = uint64(50 + t.rng.IntN(500))
	default:
		c.Method = "GET"
		if r.Protocol == "grpc" {
			c.Method = "POST"
		}
		c.Path = r.Paths[t.rng.IntN(len(r.Paths))]
		c.ReqHeaders, c.ReqBody = uint64(300+t.rng.IntN(200)), 0
		c.RespHeaders, c.RespBody = uint64(150+t.rng.IntN(50)), uint64(200+t.rng.IntN(3000))
		c.Code = 200
		switch p := t.rng.Float64(); {
		case p < 0.02:
			c.Code, c.Flags = 503, "UF"
		case p < 0.05:
			c.Code = 500
		case p < 0.08:
			c.Code = 404
		}
		if r.Protocol == "grpc" {
			c.Code = 200
			c.GRPCStatus = "0"
			if t.rng.Float64() < 0.05 {
				c.GRPCStatus = "14"
			}
		}
	}
	return c
}

// Services returns the distinct destination services of the mesh, sorted.
func (m *Mesh) Services() []string {
	set := map[string]bool{}
	for _, r := range m.Routes {
		for _, w := range r.To {
			set[w.FQDN()] = true
		}
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}
