package routing_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluicemesh/sluice/routing/xds"
)

// bookinfo starts Sluice on the test mesh of testdata/mesh.
func bookinfo(t *testing.T) *sluice {
	t.Helper()
	files := map[string]string{}
	for _, name := range []string{"services.yaml", "workloads.yaml", "routing.yaml"} {
		b, err := os.ReadFile(filepath.Join("testdata", "mesh", name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = string(b)
	}
	return startSluice(t, files)
}

func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

const sidecarID = "sidecar~10.0.0.11~reviews-v1-7d8f.default~default.svc.cluster.local"

// sotwClient speaks state-of-the-world ADS as Envoy does.
type sotwClient struct {
	t      testing.TB
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *core.Node
	sent   bool
	in     chan *discovery.DiscoveryResponse
	err    chan error
}

func newSotw(t testing.TB, ctx context.Context, cc *grpc.ClientConn, id string) *sotwClient {
	t.Helper()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &sotwClient{t: t, stream: st, node: &core.Node{Id: id, Cluster: "reviews.default"},
		in: make(chan *discovery.DiscoveryResponse, 16), err: make(chan error, 1)}
	go pump(st.Recv, c.in, c.err)
	return c
}

// pump reads a stream into a channel, so that tests can wait with a timeout
// without leaving a reader behind that would swallow the next message.
func pump[T any](recv func() (T, error), out chan<- T, errc chan<- error) {
	for {
		v, err := recv()
		if err != nil {
			errc <- err
			close(out)
			return
		}
		out <- v
	}
}

// within returns the next message, or false if none comes within d.
func within[T any](in <-chan T, d time.Duration) (T, bool) {
	select {
	case v, ok := <-in:
		return v, ok
	case <-time.After(d):
		var zero T
		return zero, false
	}
}

func (c *sotwClient) request(typ string, names []string, version, nonce string, nack error) {
	c.t.Helper()
	req := &discovery.DiscoveryRequest{TypeUrl: typ, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce}
	if !c.sent {
		req.Node, c.sent = c.node, true // Envoy sends its node once
	}
	if nack != nil {
		req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

func (c *sotwClient) recv() *discovery.DiscoveryResponse {
	c.t.Helper()
	resp, ok := within(c.in, 5*time.Second)
	if !ok {
		select {
		case err := <-c.err:
			c.t.Fatalf("stream: %v", err)
		default:
			c.t.Fatal("no response within 5s")
		}
	}
	return resp
}

func unpack[T proto.Message](t testing.TB, anys []*anypb.Any, newT func() T) []T {
	t.Helper()
	out := make([]T, 0, len(anys))
	for _, a := range anys {
		m := newT()
		if err := a.UnmarshalTo(m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// TestEnvoySotW plays Envoy's part over state-of-the-world ADS: wildcard listeners
// and clusters, then the routes and endpoints they name, each ACKed. What arrives
// must be complete and consistent, and valid.
func TestEnvoySotW(t *testing.T) {
	s := bookinfo(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := newSotw(t, ctx, dial(t, s.xdsAddr()), sidecarID)

	c.request(resourcev3.ClusterType, nil, "", "", nil)
	c.request(resourcev3.ListenerType, nil, "", "", nil)
	got := map[string]*discovery.DiscoveryResponse{}
	for len(got) < 2 {
		r := c.recv()
		got[r.GetTypeUrl()] = r
	}
	clusters := unpack(t, got[resourcev3.ClusterType].GetResources(), func() *cluster.Cluster { return &cluster.Cluster{} })
	listeners := unpack(t, got[resourcev3.ListenerType].GetResources(), func() *listener.Listener { return &listener.Listener{} })
	c.request(resourcev3.ClusterType, nil, got[resourcev3.ClusterType].GetVersionInfo(), got[resourcev3.ClusterType].GetNonce(), nil)
	c.request(resourcev3.ListenerType, nil, got[resourcev3.ListenerType].GetVersionInfo(), got[resourcev3.ListenerType].GetNonce(), nil)

	clusterNames := map[string]bool{}
	var edsNames []string
	for _, cl := range clusters {
		if err := cl.ValidateAll(); err != nil {
			t.Errorf("cluster %s: %v", cl.GetName(), err)
		}
		clusterNames[cl.GetName()] = true
		if cl.GetType() == cluster.Cluster_EDS {
			edsNames = append(edsNames, cl.GetEdsClusterConfig().GetServiceName())
		}
	}
	var rdsNames []string
	for _, l := range listeners {
		if err := l.ValidateAll(); err != nil {
			t.Errorf("listener %s: %v", l.GetName(), err)
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				h := &hcm.HttpConnectionManager{}
				if f.GetTypedConfig().UnmarshalTo(h) == nil && h.GetRds() != nil {
					rdsNames = append(rdsNames, h.GetRds().GetRouteConfigName())
				}
			}
		}
	}
	if len(listeners) != 4 || len(rdsNames) != 2 {
		t.Fatalf("%d listeners naming routes %v, want virtualOutbound, virtualInbound and two ports", len(listeners), rdsNames)
	}

	c.request(resourcev3.RouteType, rdsNames, "", "", nil)
	c.request(resourcev3.EndpointType, edsNames, "", "", nil)
	got = map[string]*discovery.DiscoveryResponse{}
	for len(got) < 2 {
		r := c.recv()
		got[r.GetTypeUrl()] = r
	}
	routes := unpack(t, got[resourcev3.RouteType].GetResources(), func() *route.RouteConfiguration { return &route.RouteConfiguration{} })
	cla := unpack(t, got[resourcev3.EndpointType].GetResources(), func() *endpoint.ClusterLoadAssignment { return &endpoint.ClusterLoadAssignment{} })
	if len(routes) != len(rdsNames) || len(cla) != len(edsNames) {
		t.Fatalf("got %d of %d routes and %d of %d endpoint sets", len(routes), len(rdsNames), len(cla), len(edsNames))
	}
	for _, rc := range routes {
		if err := rc.ValidateAll(); err != nil {
			t.Errorf("routes %s: %v", rc.GetName(), err)
		}
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				names := []string{r.GetRoute().GetCluster()}
				for _, w := range r.GetRoute().GetWeightedClusters().GetClusters() {
					names = append(names, w.GetName())
				}
				for _, m := range r.GetRoute().GetRequestMirrorPolicies() {
					names = append(names, m.GetCluster())
				}
				for _, n := range names {
					if n != "" && !clusterNames[n] {
						t.Errorf("route %s/%s names cluster %s, which CDS did not send", rc.GetName(), vh.GetName(), n)
					}
				}
			}
		}
	}
	for _, a := range cla {
		if err := a.ValidateAll(); err != nil {
			t.Errorf("endpoints %s: %v", a.GetClusterName(), err)
		}
	}
	reviews := map[string]int{}
	for _, a := range cla {
		if strings.HasSuffix(a.GetClusterName(), "reviews.default.svc.cluster.local") {
			for _, l := range a.GetEndpoints() {
				reviews[a.GetClusterName()] += len(l.GetLbEndpoints())
			}
		}
	}
	if reviews["outbound|9080||reviews.default.svc.cluster.local"] != 3 || reviews["outbound|9080|v2|reviews.default.svc.cluster.local"] != 1 {
		t.Errorf("reviews endpoints by cluster: %v", reviews)
	}

	// A route change reaches the client as a new RDS version, nothing else.
	c.request(resourcev3.RouteType, rdsNames, got[resourcev3.RouteType].GetVersionInfo(), got[resourcev3.RouteType].GetNonce(), nil)
	c.request(resourcev3.EndpointType, edsNames, got[resourcev3.EndpointType].GetVersionInfo(), got[resourcev3.EndpointType].GetNonce(), nil)
	editRouting(t, s, "weight: 80", "weight: 70", "weight: 20", "weight: 30")
	r := c.recv()
	if r.GetTypeUrl() != resourcev3.RouteType || r.GetVersionInfo() == got[resourcev3.RouteType].GetVersionInfo() {
		t.Fatalf("after a weight change got %s version %s", r.GetTypeUrl(), r.GetVersionInfo())
	}
	if !strings.Contains(protoText(t, r), `"weight":70`) {
		t.Errorf("new routes do not carry the new weight")
	}
	if extra, ok := within(c.in, 300*time.Millisecond); ok {
		t.Errorf("unexpected %s push after a route-only change", extra.GetTypeUrl())
	}
}

func protoText(t testing.TB, r *discovery.DiscoveryResponse) string {
	t.Helper()
	var b strings.Builder
	for _, a := range r.GetResources() {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		js, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, js); err != nil {
			t.Fatal(err)
		}
		b.Write(buf.Bytes())
	}
	return b.String()
}

// editRouting rewrites routing.yaml with pairs of replacements.
func editRouting(t *testing.T, s *sluice, oldNew ...string) {
	t.Helper()
	path := filepath.Join(s.dir, "routing.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for i := 0; i+1 < len(oldNew); i += 2 {
		if !strings.Contains(text, oldNew[i]) {
			t.Fatalf("routing.yaml has no %q", oldNew[i])
		}
		text = strings.Replace(text, oldNew[i], oldNew[i+1], 1)
	}
	writeFile(t, path, text)
}

// TestEnvoyDelta plays Envoy's part over incremental (delta) ADS.
func TestEnvoyDelta(t *testing.T) {
	s := bookinfo(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(dial(t, s.xdsAddr())).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: sidecarID}
	in, errc := make(chan *discovery.DeltaDiscoveryResponse, 16), make(chan error, 1)
	go pump(st.Recv, in, errc)
	send := func(r *discovery.DeltaDiscoveryRequest) {
		t.Helper()
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType})
	held := map[string]map[string]string{} // type -> name -> version
	recvAck := func() *discovery.DeltaDiscoveryResponse {
		t.Helper()
		r, ok := within(in, 5*time.Second)
		if !ok {
			t.Fatal("no delta response")
		}
		if held[r.GetTypeUrl()] == nil {
			held[r.GetTypeUrl()] = map[string]string{}
		}
		for _, res := range r.GetResources() {
			held[r.GetTypeUrl()][res.GetName()] = res.GetVersion()
			if res.GetVersion() == "" {
				t.Errorf("%s has no version", res.GetName())
			}
		}
		for _, n := range r.GetRemovedResources() {
			delete(held[r.GetTypeUrl()], n)
		}
		send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
		return r
	}
	recvAck()
	recvAck()
	if len(held[resourcev3.ListenerType]) != 4 || len(held[resourcev3.ClusterType]) < 10 {
		t.Fatalf("held %d listeners and %d clusters", len(held[resourcev3.ListenerType]), len(held[resourcev3.ClusterType]))
	}
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNamesSubscribe: []string{"9080", "7070"}})
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{
		"outbound|9080|v1|reviews.default.svc.cluster.local", "outbound|9080|v3|reviews.default.svc.cluster.local",
	}})
	recvAck()
	recvAck()
	if len(held[resourcev3.RouteType]) != 2 || len(held[resourcev3.EndpointType]) != 2 {
		t.Fatalf("held %v", held)
	}
	before := held[resourcev3.ClusterType]["outbound|9080|v3|reviews.default.svc.cluster.local"]

	// Removing subset v3 changes the routes, removes two clusters (and nothing else),
	// and removes the endpoints the client subscribed to.
	editRouting(t, s,
		"  - name: v3\n    labels: {version: v3}\n    trafficPolicy:\n      loadBalancer: {simple: LEAST_REQUEST}\n", "",
		"    - destination: {host: reviews, subset: v3}\n      weight: 20", "    - destination: {host: reviews, subset: v2}\n      weight: 20")
	seen := map[string]*discovery.DeltaDiscoveryResponse{}
	deadline := time.Now().Add(5 * time.Second)
	for len(seen) < 3 && time.Now().Before(deadline) {
		r, ok := within(in, time.Until(deadline))
		if !ok {
			break
		}
		seen[r.GetTypeUrl()] = r
		for _, n := range r.GetRemovedResources() {
			delete(held[r.GetTypeUrl()], n)
		}
		send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
	}
	cds := seen[resourcev3.ClusterType]
	if cds == nil || len(cds.GetResources()) != 0 || strings.Join(cds.GetRemovedResources(), ",") != "outbound|9080|v3|reviews.default.svc.cluster.local" {
		t.Errorf("CDS delta: %v", cds)
	}
	if before == "" {
		t.Error("v3 cluster had no version")
	}
	if rds := seen[resourcev3.RouteType]; rds == nil || len(rds.GetResources()) != 1 || rds.GetResources()[0].GetName() != "9080" {
		t.Errorf("RDS delta: %v", rds)
	}
	if eds := seen[resourcev3.EndpointType]; eds == nil || strings.Join(eds.GetRemovedResources(), ",") != "outbound|9080|v3|reviews.default.svc.cluster.local" {
		t.Errorf("EDS delta: %v", eds)
	}
}

// TestNACK checks that a rejected response is recorded, counted and shown, and
// never sent again in a loop, including a rejection of the very first response.
func TestNACK(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(map[bool]string{false: "sotw", true: "delta"}[delta], func(t *testing.T) {
			s := bookinfo(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cc := dial(t, s.xdsAddr())
			id := "sidecar~10.0.0.12~reviews-v2.default~default.svc.cluster.local"
			const why = "cluster outbound|9080||reviews: unsupported option"
			var recv func(time.Duration) (string, bool)
			var nack func()
			if !delta {
				c := newSotw(t, ctx, cc, id)
				c.request(resourcev3.ClusterType, nil, "", "", nil)
				var last *discovery.DiscoveryResponse
				recv = func(d time.Duration) (string, bool) {
					r, ok := within(c.in, d)
					if ok {
						last = r
					}
					return r.GetVersionInfo(), ok
				}
				// Envoy's NACK repeats the last accepted version: none yet.
				nack = func() { c.request(resourcev3.ClusterType, nil, "", last.GetNonce(), fmt.Errorf("%s", why)) }
			} else {
				st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: id}, TypeUrl: resourcev3.ClusterType}); err != nil {
					t.Fatal(err)
				}
				in, errc := make(chan *discovery.DeltaDiscoveryResponse, 16), make(chan error, 1)
				go pump(st.Recv, in, errc)
				var last *discovery.DeltaDiscoveryResponse
				recv = func(d time.Duration) (string, bool) {
					r, ok := within(in, d)
					if ok {
						last = r
					}
					return r.GetSystemVersionInfo(), ok
				}
				nack = func() {
					_ = st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: last.GetNonce(),
						ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: why}})
				}
			}
			if _, ok := recv(5 * time.Second); !ok {
				t.Fatal("no first response")
			}
			nack()
			if v, ok := recv(500 * time.Millisecond); ok {
				t.Fatalf("the rejected config was sent again (version %s)", v)
			}
			view := clientsPage(t, s, "?node=reviews-v2")
			if len(view.Clients) != 1 {
				t.Fatalf("clients page: %+v", view)
			}
			cds := view.Clients[0].Types["CDS"]
			if cds.State != "NACK" || cds.NACKs != 1 || cds.LastNACK == nil || cds.LastNACK.Error != why || len(cds.Resources) == 0 {
				t.Errorf("CDS state on the clients page: %+v", cds)
			}
			if n := metricValue(t, s, "sluice_xds_nacks_total", `type="CDS"`); n != 1 {
				t.Errorf("sluice_xds_nacks_total{type=CDS} = %v", n)
			}
			// The next change is sent: the client is not stuck on the rejected version.
			editRouting(t, s, "http2MaxRequests: 1000", "http2MaxRequests: 999")
			if _, ok := recv(5 * time.Second); !ok {
				t.Error("a config change after the NACK did not reach the client")
			}
		})
	}
}

type clientsView struct {
	Connected      int              `json:"connected"`
	Clients        []xds.ClientView `json:"clients"`
	RecentlyClosed []xds.ClientView `json:"recentlyClosed"`
}

func clientsPage(t testing.TB, s *sluice, query string) clientsView {
	t.Helper()
	rec := httptest.NewRecorder()
	s.routing.AdminRoutes()["/api/xds/clients"].ServeHTTP(rec, httptest.NewRequest("GET", "/api/xds/clients"+query, nil))
	if rec.Code != 200 {
		t.Fatalf("clients page: %d %s", rec.Code, rec.Body)
	}
	var v clientsView
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestMisbehavingClients: garbage, unknown types, invalid requests and a storm of
// reconnects affect only the clients that send them.
func TestMisbehavingClients(t *testing.T) {
	s := bookinfo(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cc := dial(t, s.xdsAddr())

	// A well-behaved client, watched throughout.
	good := newSotw(t, ctx, cc, sidecarID)
	good.request(resourcev3.RouteType, []string{"9080"}, "", "", nil)
	first := good.recv()
	good.request(resourcev3.RouteType, []string{"9080"}, first.GetVersionInfo(), first.GetNonce(), nil)

	t.Run("unknown and unserved types", func(t *testing.T) {
		c := newSotw(t, ctx, cc, "sidecar~10.0.0.13~reviews-v3.default~default.svc.cluster.local")
		c.request("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", []string{"default"}, "", "", nil)
		c.request("type.googleapis.com/no.such.Type", nil, "", "", nil)
		c.request(resourcev3.ListenerType, nil, "", "", nil)
		if r := c.recv(); r.GetTypeUrl() != resourcev3.ListenerType {
			t.Errorf("got %s", r.GetTypeUrl())
		}
		view := clientsPage(t, s, "?node=reviews-v3")
		if len(view.Clients) != 1 || view.Clients[0].Unknown["type.googleapis.com/no.such.Type"] != 1 {
			t.Errorf("clients page: %+v", view.Clients)
		}
		if n := metricValue(t, s, "sluice_xds_rejected_requests_total", `reason="unknown_type"`); n != 2 {
			t.Errorf("unknown_type rejections = %v", n)
		}
	})

	t.Run("ADS request without a type", func(t *testing.T) {
		c := newSotw(t, ctx, cc, "garbage-1")
		c.request("", nil, "", "", nil)
		if err := <-c.err; status.Code(err) != codes.InvalidArgument {
			t.Errorf("got %v, want InvalidArgument", err)
		}
	})

	t.Run("bytes that are not a request", func(t *testing.T) {
		st, err := cc.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true},
			"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources", grpc.ForceCodecV2(rawCodec{}))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.SendMsg([]byte{0xff, 0xff, 0xff, 0x01, 0x02}); err != nil {
			t.Fatal(err)
		}
		var out []byte
		if err := st.RecvMsg(&out); status.Code(err) == codes.OK {
			t.Errorf("garbage got an answer")
		}
	})

	t.Run("reconnect storm", func(t *testing.T) {
		baseline := s.routing.Clients()
		goroutines := runtime.NumGoroutine()
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ads := discovery.NewAggregatedDiscoveryServiceClient(cc)
				for i := range 100 {
					sctx, scancel := context.WithCancel(ctx)
					st, err := ads.StreamAggregatedResources(sctx)
					if err == nil {
						_ = st.Send(&discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType,
							Node: &core.Node{Id: fmt.Sprintf("sidecar~10.9.%d.%d~storm-%d.default~default.svc.cluster.local", w, i, i)}})
						if i%2 == 0 {
							_, _ = st.Recv() // half of them hang up before reading
						}
					}
					scancel()
				}
			}()
		}
		// During the storm, a change still reaches the good client promptly.
		time.Sleep(50 * time.Millisecond)
		start := time.Now()
		editRouting(t, s, "weight: 80", "weight: 60", "weight: 20", "weight: 40")
		r, ok := within(good.in, 3*time.Second)
		if !ok || r.GetVersionInfo() == first.GetVersionInfo() {
			t.Fatal("the good client got no update during the storm")
		}
		t.Logf("update reached the good client %v after the edit, during the storm", time.Since(start).Round(time.Millisecond))
		wg.Wait()
		deadline := time.Now().Add(5 * time.Second)
		for s.routing.Clients() > baseline && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := s.routing.Clients(); n > baseline {
			t.Errorf("%d streams still tracked after the storm, want %d", n, baseline)
		}
		for runtime.NumGoroutine() > goroutines+20 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > goroutines+20 {
			t.Errorf("%d goroutines after the storm, %d before", n, goroutines)
		}
		if v := clientsPage(t, s, ""); len(v.RecentlyClosed) > 64 {
			t.Errorf("%d closed clients kept, want at most 64", len(v.RecentlyClosed))
		}
	})
}

// rawCodec sends bytes as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*(v.(*[]byte)) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// TestInboundFollowsRegistry: a sidecar whose address the registry does not know yet
// has an inbound listener without service ports; once a WorkloadEntry gives that
// address a workload selected by a service, its listener gains the port.
func TestInboundFollowsRegistry(t *testing.T) {
	s := bookinfo(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := newSotw(t, ctx, dial(t, s.xdsAddr()), "sidecar~10.0.0.99~ratings-v2-x.default~default.svc.cluster.local")
	inboundPorts := func(r *discovery.DiscoveryResponse) []uint32 {
		var out []uint32
		for _, l := range unpack(t, r.GetResources(), func() *listener.Listener { return &listener.Listener{} }) {
			if l.GetName() == "virtualInbound" {
				for _, fc := range l.GetFilterChains() {
					out = append(out, fc.GetFilterChainMatch().GetDestinationPort().GetValue())
				}
			}
		}
		return out
	}
	c.request(resourcev3.ListenerType, nil, "", "", nil)
	r := c.recv()
	if p := inboundPorts(r); len(p) != 0 {
		t.Fatalf("inbound ports of an unknown address: %v", p)
	}
	c.request(resourcev3.ListenerType, nil, r.GetVersionInfo(), r.GetNonce(), nil)
	path := filepath.Join(s.dir, "workloads.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, string(b)+`---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-v2, namespace: default}
spec: {address: 10.0.0.99, labels: {app: ratings, version: v2}}
`)
	r = c.recv()
	if p := inboundPorts(r); len(p) != 1 || p[0] != 8080 {
		t.Errorf("inbound ports after the WorkloadEntry: %v, want ratings' target port 8080", p)
	}
}
