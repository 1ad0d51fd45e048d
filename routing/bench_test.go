package routing_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/registry"
	"github.com/sluicemesh/sluice/routing/mesh"
	"github.com/sluicemesh/sluice/routing/translate"
)

// fleetEnv marks a child process that runs simulated Envoy sidecars.
const fleetEnv = "SLUICE_TEST_XDS_FLEET"

// meshSpec sizes a generated mesh. Every ServiceEntry has Hosts hosts, each with a
// DestinationRule (subsets v1, v2) and a VirtualService (a header match to v2 and a
// V1Weight/100-V1Weight split); Endpoints WorkloadEntries per ServiceEntry, half v1.
type meshSpec struct {
	Services, Hosts, Endpoints, V1Weight int
}

// files renders the mesh as config files, one per kind.
func (m meshSpec) files() map[string]string {
	var se, dr, vs, we strings.Builder
	for i := range m.Services {
		ns := fmt.Sprintf("ns%d", i%20)
		port, proto := 8080, "HTTP"
		if i%2 == 1 {
			port, proto = 9090, "GRPC"
		}
		var hosts []string
		for h := range m.Hosts {
			hosts = append(hosts, fmt.Sprintf("svc%d-h%d", i, h))
		}
		fmt.Fprintf(&se, "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc%d, namespace: %s}\nspec:\n  hosts: [%s]\n  ports: [{number: %d, name: p, protocol: %s}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: svc%d}}\n",
			i, ns, strings.Join(hosts, ", "), port, proto, i)
		for _, h := range hosts {
			fmt.Fprintf(&dr, "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: %s, namespace: %s}\nspec:\n  host: %s\n  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 5}}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n", h, ns, h)
			fmt.Fprintf(&vs, "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: %s, namespace: %s}\nspec:\n  hosts: [%s]\n  http:\n  - match: [{headers: {x-canary: {exact: \"1\"}}}]\n    route: [{destination: {host: %s, subset: v2}}]\n  - route:\n    - {destination: {host: %s, subset: v1}, weight: %d}\n    - {destination: {host: %s, subset: v2}, weight: %d}\n    retries: {attempts: 2, retryOn: \"5xx,unavailable\"}\n    timeout: 3s\n",
				h, ns, h, h, h, m.V1Weight, h, 100-m.V1Weight)
		}
		for e := range m.Endpoints {
			version := "v1"
			if e%2 == 1 {
				version = "v2"
			}
			n := i*m.Endpoints + e
			fmt.Fprintf(&we, "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: svc%d-%d, namespace: %s}\nspec: {address: 10.%d.%d.%d, labels: {app: svc%d, version: %s}}\n",
				i, e, ns, 1+n/65536, (n/256)%256, n%256, i, version)
		}
	}
	return map[string]string{"se.yaml": se.String(), "dr.yaml": dr.String(), "vs.yaml": vs.String(), "we.yaml": we.String()}
}

func loadMesh(tb testing.TB, spec meshSpec) *config.Snapshot {
	tb.Helper()
	dir := tb.TempDir()
	for name, body := range spec.files() {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	l := &config.Loader{Dir: dir, Layers: []config.Layer{}, Validators: []config.Validator{mesh.Validator{}}}
	s, err := l.Load()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// BenchmarkBuild computes every xDS resource of 1,000 ServiceEntries (2,000 hosts),
// 10,000 endpoints and 2,000 VirtualServices and DestinationRules: the work of one
// config or registry change. "load" adds reading and checking the files.
func BenchmarkBuild(b *testing.B) {
	spec := meshSpec{Services: 1000, Hosts: 2, Endpoints: 10, V1Weight: 90}
	snap := loadMesh(b, spec)
	reg := registry.New("")
	reg.SetSource(registry.ConfigSource, registry.FromSnapshot(snap))
	b.Run("translate", func(b *testing.B) {
		b.ReportAllocs()
		var res *translate.Resources
		for b.Loop() {
			m, err := mesh.Build(snap, mesh.Options{})
			if err != nil {
				b.Fatal(err)
			}
			res = translate.Build(m, reg.Snapshot(), translate.Options{Advertise: "sluice:9091"})
		}
		b.ReportMetric(float64(len(res.Envoy.Clusters)), "clusters")
		b.ReportMetric(float64(len(res.Endpoints)), "endpoint-sets")
		b.ReportMetric(float64(len(res.GRPC.Listeners)), "grpc-listeners")
	})
	b.Run("load", func(b *testing.B) {
		dir := b.TempDir()
		for name, body := range spec.files() {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		l := &config.Loader{Dir: dir, Layers: []config.Layer{}, Validators: []config.Validator{mesh.Validator{}}}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := l.Load(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// convergenceMesh is the mesh the fleet benchmarks serve: 100 services on one port,
// 500 endpoints.
var convergenceMesh = meshSpec{Services: 100, Hosts: 1, Endpoints: 5, V1Weight: 90}

// BenchmarkConvergence measures, with 1,000 simulated Envoy sidecars connected
// (in a child process on the same machine), the time from a config being applied
// to the last sidecar receiving the new routes. ns/op is that time.
func BenchmarkConvergence(b *testing.B) {
	for _, delta := range []bool{false, true} {
		b.Run(map[bool]string{false: "sotw", true: "delta"}[delta], func(b *testing.B) {
			const clients = 1000
			spec := convergenceMesh
			s := startSluice(b, spec.files())
			spec.V1Weight = 80
			snaps := []*config.Snapshot{loadMesh(b, spec), s.watcher.Current()}
			f := startFleet(b, s.xdsAddr(), clients, delta)
			var p50, last time.Duration
			b.ResetTimer()
			for i := range b.N {
				start := time.Now()
				s.routing.OnApply(context.Background(), snaps[i%2])
				times := f.collect(b, clients)
				p50 += times[len(times)/2].Sub(start)
				last += times[len(times)-1].Sub(start)
				b.StopTimer()
				f.settle()
				b.StartTimer()
			}
			b.ReportMetric(float64(p50.Milliseconds())/float64(b.N), "p50-client-ms")
			b.ReportMetric(float64(last.Milliseconds())/float64(b.N), "last-client-ms")
		})
	}
}

// BenchmarkMemoryPerClient measures the server's heap per connected, synced Envoy
// sidecar (the clients run in a child process), on the fleet mesh and on a mesh of
// 1,000 services.
func BenchmarkMemoryPerClient(b *testing.B) {
	for _, tc := range []struct {
		name    string
		spec    meshSpec
		clients int
	}{
		{"100-services", convergenceMesh, 1000},
		{"1000-services", meshSpec{Services: 1000, Hosts: 1, Endpoints: 10, V1Weight: 90}, 100},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := startSluice(b, tc.spec.files())
			for b.Loop() {
				// The streams of an earlier round must be gone before measuring.
				for deadline := time.Now().Add(10 * time.Second); s.routing.Clients() > 0 && time.Now().Before(deadline); {
					time.Sleep(10 * time.Millisecond)
				}
				before := heap()
				f := startFleet(b, s.xdsAddr(), tc.clients, false)
				after := heap()
				if path := os.Getenv("SLUICE_BENCH_HEAP_PROFILE"); path != "" {
					writeHeapProfile(b, path+"."+tc.name)
				}
				b.ReportMetric(float64(after-before)/float64(tc.clients), "bytes/client")
				f.stop()
			}
		})
	}
}

// writeHeapProfile saves what the server holds, to see what a client costs.
func writeHeapProfile(tb testing.TB, path string) {
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		tb.Fatal(err)
	}
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// fleet is a child process of simulated sidecars.
type fleet struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

func startFleet(tb testing.TB, addr string, n int, delta bool) *fleet {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s;%d;%t", fleetEnv, addr, n, delta))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	f := &fleet{cmd: cmd, in: in, lines: make(chan string, 4*n)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f.lines <- sc.Text()
		}
		close(f.lines)
	}()
	tb.Cleanup(f.stop)
	select {
	case l := <-f.lines:
		if l != "ready" {
			tb.Fatalf("fleet: %q", l)
		}
	case <-time.After(5 * time.Minute):
		tb.Fatal("fleet not ready")
	}
	return f
}

func (f *fleet) stop() {
	_ = f.in.Close()
	_ = f.cmd.Wait()
}

// settle drops the reports of a change that arrive after every client had it.
func (f *fleet) settle() {
	time.Sleep(200 * time.Millisecond)
	for {
		select {
		case <-f.lines:
		default:
			return
		}
	}
}

// collect waits for a route update on n clients and returns when each first got
// it, sorted.
func (f *fleet) collect(tb testing.TB, n int) []time.Time {
	tb.Helper()
	var out []time.Time
	seen := map[int]bool{}
	timeout := time.After(2 * time.Minute)
	for len(out) < n {
		select {
		case l, ok := <-f.lines:
			if !ok {
				tb.Fatal("fleet exited")
			}
			var idx int
			var ns int64
			if _, err := fmt.Sscanf(l, "rds %d %d", &idx, &ns); err != nil {
				tb.Fatalf("fleet: %q", l)
			}
			if !seen[idx] {
				seen[idx] = true
				out = append(out, time.Unix(0, ns))
			}
		case <-timeout:
			tb.Fatalf("%d of %d clients updated", len(out), n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// runFleet runs n simulated Envoy sidecars against addr until stdin closes: each
// subscribes to listeners and clusters, then to the routes and endpoints they name,
// ACKs every response, and reports each routes update after the first.
func runFleet(spec string, in io.Reader, out io.Writer) int {
	parts := strings.Split(spec, ";")
	if len(parts) != 3 {
		return 2
	}
	addr := parts[0]
	n, _ := strconv.Atoi(parts[1])
	delta := parts[2] == "true"
	var mu sync.Mutex
	w := bufio.NewWriter(out)
	report := func(line string) {
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.WriteString(line + "\n")
		_ = w.Flush()
	}
	var conns []*grpc.ClientConn
	for range 16 {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			report("error " + err.Error())
			return 1
		}
		conns = append(conns, cc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var ready sync.WaitGroup
	for i := range n {
		ready.Add(1)
		node := &core.Node{Id: fmt.Sprintf("sidecar~10.200.%d.%d~fleet-%d.bench~bench.svc.cluster.local", i/256, i%256, i)}
		c := &fleetClient{idx: i, node: node, ready: ready.Done, report: report}
		ads := discovery.NewAggregatedDiscoveryServiceClient(conns[i%len(conns)])
		if delta {
			go c.runDelta(ctx, ads)
		} else {
			go c.runSotw(ctx, ads)
		}
	}
	ready.Wait()
	report("ready")
	_, _ = io.Copy(io.Discard, in)
	cancel()
	for _, cc := range conns {
		_ = cc.Close()
	}
	return 0
}

type fleetClient struct {
	idx    int
	node   *core.Node
	ready  func()
	report func(string)
	synced bool
	seen   map[string]bool
}

func protoUnmarshal(b []byte, m proto.Message) error { return proto.Unmarshal(b, m) }

// routeNames reads the route names of listeners and the endpoint names of clusters, as
// Envoy does to subscribe to them.
func routeNames(resources [][]byte) []string {
	var out []string
	for _, r := range resources {
		l := &listener.Listener{}
		if err := protoUnmarshal(r, l); err != nil {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				h := &hcm.HttpConnectionManager{}
				if f.GetTypedConfig().UnmarshalTo(h) == nil && h.GetRds() != nil {
					out = append(out, h.GetRds().GetRouteConfigName())
				}
			}
		}
	}
	return out
}

// edsNames reads the endpoint names of clusters.
func edsNames(resources [][]byte) []string {
	var out []string
	for _, r := range resources {
		c := &cluster.Cluster{}
		if err := protoUnmarshal(r, c); err == nil && c.GetType() == cluster.Cluster_EDS {
			out = append(out, c.GetEdsClusterConfig().GetServiceName())
		}
	}
	return out
}

// got notes a response; it reports readiness once all four types arrived, and
// route updates after that.
func (c *fleetClient) got(typ string) {
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	if c.synced && typ == resourcev3.RouteType {
		c.report(fmt.Sprintf("rds %d %d", c.idx, time.Now().UnixNano()))
	}
	c.seen[typ] = true
	if !c.synced && len(c.seen) == 4 {
		c.synced = true
		c.ready()
	}
}

func (c *fleetClient) runSotw(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient) {
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		c.report("error " + err.Error())
		return
	}
	names := map[string][]string{}
	send := func(r *discovery.DiscoveryRequest) {
		if err := st.Send(r); err != nil && ctx.Err() == nil {
			c.report("error " + err.Error())
		}
	}
	send(&discovery.DiscoveryRequest{Node: c.node, TypeUrl: resourcev3.ClusterType})
	send(&discovery.DiscoveryRequest{TypeUrl: resourcev3.ListenerType})
	for {
		resp, err := st.Recv()
		if err != nil {
			return
		}
		typ := resp.GetTypeUrl()
		raw := make([][]byte, len(resp.GetResources()))
		for i, a := range resp.GetResources() {
			raw[i] = a.GetValue()
		}
		send(&discovery.DiscoveryRequest{TypeUrl: typ, ResourceNames: names[typ], VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
		switch typ {
		case resourcev3.ListenerType:
			if names[resourcev3.RouteType] == nil {
				names[resourcev3.RouteType] = routeNames(raw)
				send(&discovery.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: names[resourcev3.RouteType]})
			}
		case resourcev3.ClusterType:
			if names[resourcev3.EndpointType] == nil {
				names[resourcev3.EndpointType] = edsNames(raw)
				send(&discovery.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: names[resourcev3.EndpointType]})
			}
		}
		c.got(typ)
	}
}

func (c *fleetClient) runDelta(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient) {
	st, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		c.report("error " + err.Error())
		return
	}
	send := func(r *discovery.DeltaDiscoveryRequest) {
		if err := st.Send(r); err != nil && ctx.Err() == nil {
			c.report("error " + err.Error())
		}
	}
	send(&discovery.DeltaDiscoveryRequest{Node: c.node, TypeUrl: resourcev3.ClusterType})
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType})
	subscribed := map[string]bool{}
	for {
		resp, err := st.Recv()
		if err != nil {
			return
		}
		typ := resp.GetTypeUrl()
		raw := make([][]byte, len(resp.GetResources()))
		for i, r := range resp.GetResources() {
			raw[i] = r.GetResource().GetValue()
		}
		send(&discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: resp.GetNonce()})
		switch typ {
		case resourcev3.ListenerType:
			if !subscribed[resourcev3.RouteType] {
				subscribed[resourcev3.RouteType] = true
				send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNamesSubscribe: routeNames(raw)})
			}
		case resourcev3.ClusterType:
			if !subscribed[resourcev3.EndpointType] {
				subscribed[resourcev3.EndpointType] = true
				send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: edsNames(raw)})
			}
		}
		c.got(typ)
	}
}
