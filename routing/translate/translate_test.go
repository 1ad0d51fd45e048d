package translate_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	als "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	ratelimit "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/registry"
	"github.com/sluicemesh/sluice/routing/mesh"
	"github.com/sluicemesh/sluice/routing/translate"
)

var update = flag.Bool("update", false, "rewrite the golden files from the current output")

// load reads a config directory of mesh objects, as the server would, and fills a
// registry from its WorkloadEntries.
func load(t testing.TB, dir string) (*mesh.Mesh, *registry.Snapshot) {
	t.Helper()
	l := &config.Loader{Dir: dir, Layers: []config.Layer{}, Validators: []config.Validator{mesh.Validator{}}}
	s, err := l.Load()
	if err != nil {
		t.Fatalf("load %s:\n%v", dir, err)
	}
	m, err := mesh.Build(s, mesh.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := registry.New("")
	reg.SetSource(registry.ConfigSource, registry.FromSnapshot(s))
	return m, reg.Snapshot()
}

func build(t testing.TB) *translate.Resources {
	m, reg := load(t, "../testdata/mesh")
	return translate.Build(m, reg, translate.Options{Advertise: "sluice.sluice-system.svc.cluster.local:9091"})
}

type validator interface{ ValidateAll() error }

// TestResourcesValidate runs every generated resource through the validation rules
// of its proto definition, the checks Envoy applies before anything else.
func TestResourcesValidate(t *testing.T) {
	r := build(t)
	sidecar := translate.ParseNode(&core.Node{Id: "sidecar~10.0.0.11~reviews-v1.default~default.svc.cluster.local"})
	lis, _ := r.SidecarListeners(sidecar)
	sets := map[string]map[string]types.Resource{
		"sidecar listeners": lis, "envoy routes": r.Envoy.Routes, "envoy clusters": r.Envoy.Clusters,
		"grpc listeners": r.GRPC.Listeners, "grpc routes": r.GRPC.Routes, "grpc clusters": r.GRPC.Clusters,
		"endpoints": r.Endpoints,
	}
	for kind, set := range sets {
		if len(set) == 0 {
			t.Errorf("no %s", kind)
		}
		for name, res := range set {
			if err := res.(validator).ValidateAll(); err != nil {
				t.Errorf("%s %s: %v", kind, name, err)
			}
			// The typed configs inside must validate too.
			validateNested(t, kind+" "+name, res)
		}
	}
}

// validateNested unpacks the Any-typed configs that ValidateAll does not enter.
func validateNested(t *testing.T, where string, res types.Resource) {
	t.Helper()
	check := func(m proto.Message) {
		if v, ok := m.(validator); ok {
			if err := v.ValidateAll(); err != nil {
				t.Errorf("%s: %T: %v", where, m, err)
			}
		}
	}
	switch r := res.(type) {
	case *listener.Listener:
		var chains []*listener.FilterChain
		chains = append(chains, r.GetFilterChains()...)
		if r.GetDefaultFilterChain() != nil {
			chains = append(chains, r.GetDefaultFilterChain())
		}
		var anys = []proto.Message{}
		if a := r.GetApiListener().GetApiListener(); a != nil {
			m, err := a.UnmarshalNew()
			if err != nil {
				t.Errorf("%s: %v", where, err)
				return
			}
			anys = append(anys, m)
		}
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				m, err := f.GetTypedConfig().UnmarshalNew()
				if err != nil {
					t.Errorf("%s: filter %s: %v", where, f.GetName(), err)
					continue
				}
				anys = append(anys, m)
			}
		}
		for _, m := range anys {
			check(m)
			if h, ok := m.(*hcm.HttpConnectionManager); ok {
				for _, f := range h.GetHttpFilters() {
					fm, err := f.GetTypedConfig().UnmarshalNew()
					if err != nil {
						t.Errorf("%s: http filter %s: %v", where, f.GetName(), err)
						continue
					}
					check(fm)
				}
				for _, al := range h.GetAccessLog() {
					am, err := al.GetTypedConfig().UnmarshalNew()
					if err != nil {
						t.Errorf("%s: access log: %v", where, err)
						continue
					}
					check(am)
				}
			}
		}
	case *route.RouteConfiguration:
		for _, vh := range r.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				for name, a := range rt.GetTypedPerFilterConfig() {
					m, err := a.UnmarshalNew()
					if err != nil {
						t.Errorf("%s: per-filter %s: %v", where, name, err)
						continue
					}
					check(m)
				}
			}
		}
	case *cluster.Cluster:
		for name, a := range r.GetTypedExtensionProtocolOptions() {
			m, err := a.UnmarshalNew()
			if err != nil {
				t.Errorf("%s: protocol options %s: %v", where, name, err)
				continue
			}
			check(m)
		}
	}
}

// TestSidecarModel checks the properties an Istio operator relies on.
func TestSidecarModel(t *testing.T) {
	r := build(t)
	node := translate.ParseNode(&core.Node{Id: "sidecar~10.0.0.11~reviews-v1.default~default.svc.cluster.local"})
	if node.IP != netip.MustParseAddr("10.0.0.11") || node.Namespace != "default" || node.Pod != "reviews-v1" || node.Generator != translate.GeneratorEnvoy {
		t.Fatalf("ParseNode = %+v", node)
	}
	lis, _ := r.SidecarListeners(node)
	for _, name := range []string{"virtualOutbound", "virtualInbound", "0.0.0.0_9080", "0.0.0.0_7070"} {
		if _, ok := lis[name]; !ok {
			t.Errorf("listener %s missing", name)
		}
	}
	in := lis["virtualInbound"].(*listener.Listener)
	if got := len(in.GetFilterChains()); got != 1 || in.GetFilterChains()[0].GetFilterChainMatch().GetDestinationPort().GetValue() != 9080 {
		t.Errorf("inbound filter chains of reviews-v1 = %v, want one for port 9080", in.GetFilterChains())
	}
	ratings := translate.ParseNode(&core.Node{Id: "sidecar~10.0.0.21~ratings-v1.default~default.svc.cluster.local"})
	rl, _ := r.SidecarListeners(ratings)
	if p := rl["virtualInbound"].(*listener.Listener).GetFilterChains()[0].GetFilterChainMatch().GetDestinationPort().GetValue(); p != 8080 {
		t.Errorf("ratings inbound port = %d, want its targetPort 8080", p)
	}
	for _, name := range []string{
		"outbound|9080||reviews.default.svc.cluster.local", "outbound|9080|v1|reviews.default.svc.cluster.local",
		"outbound|9080|v3|reviews.default.svc.cluster.local", "inbound|9080||", "inbound|8080||",
		"PassthroughCluster", "InboundPassthroughCluster", "sluice-grpc",
	} {
		if _, ok := r.Envoy.Clusters[name]; !ok {
			t.Errorf("cluster %s missing", name)
		}
	}
	if got := r.Envoy.Clusters["sluice-grpc"].(*cluster.Cluster).GetType(); got != cluster.Cluster_STRICT_DNS {
		t.Errorf("sluice-grpc type = %v", got)
	}
	// Every HTTP connection manager reports to and checks with Sluice.
	for name, l := range lis {
		for _, fc := range l.(*listener.Listener).GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if f.GetName() != "envoy.filters.network.http_connection_manager" {
					continue
				}
				h := &hcm.HttpConnectionManager{}
				if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
					t.Fatal(err)
				}
				var names []string
				for _, hf := range h.GetHttpFilters() {
					names = append(names, hf.GetName())
				}
				want := "envoy.filters.http.fault,envoy.filters.http.ext_authz,envoy.filters.http.ratelimit,envoy.filters.http.router"
				if strings.Join(names, ",") != want {
					t.Errorf("%s: http filters %v", name, names)
				}
				if len(h.GetAccessLog()) != 1 || h.GetAccessLog()[0].GetName() != "envoy.access_loggers.http_grpc" {
					t.Errorf("%s: access log %v", name, h.GetAccessLog())
				}
			}
		}
	}
	// A proxyless client gets an API listener named like its dial target, with only
	// the filters grpc-go implements.
	for _, target := range []string{"echo.apps.svc.cluster.local:7070", "echo.apps:7070", "echo.apps.svc:7070", "reviews.default:9080"} {
		l, ok := r.GRPC.Listeners[target]
		if !ok {
			t.Errorf("grpc listener %s missing", target)
			continue
		}
		h := &hcm.HttpConnectionManager{}
		if err := l.(*listener.Listener).GetApiListener().GetApiListener().UnmarshalTo(h); err != nil {
			t.Fatal(err)
		}
		if n := len(h.GetHttpFilters()); n != 2 || h.GetHttpFilters()[1].GetName() != "envoy.filters.http.router" {
			t.Errorf("%s: filters %v", target, h.GetHttpFilters())
		}
	}
	echo := r.GRPC.Routes["echo.apps.svc.cluster.local:7070"].(*route.RouteConfiguration)
	last := echo.GetVirtualHosts()[0].GetRoutes()[1].GetRoute()
	if last.GetTimeout() != nil || last.GetMaxStreamDuration().GetMaxStreamDuration().AsDuration().Seconds() != 1 {
		t.Errorf("grpc timeout must be in max_stream_duration only: %v", last)
	}
	if last.GetRetryPolicy().GetRetryOn() != "unavailable" {
		t.Errorf("grpc retry_on = %q, want only the gRPC condition", last.GetRetryPolicy().GetRetryOn())
	}
	if len(last.GetHashPolicy()) != 1 || last.GetHashPolicy()[0].GetHeader().GetHeaderName() != "x-user" {
		t.Errorf("hash policy = %v", last.GetHashPolicy())
	}
}

// TestNodes covers the node IDs Sluice meets.
func TestNodes(t *testing.T) {
	grpcMeta, _ := structpb.NewStruct(map[string]any{"GENERATOR": "grpc"})
	for _, tc := range []struct {
		id   string
		meta *structpb.Struct
		want translate.Node
	}{
		{"sidecar~10.1.2.3~web-1.shop~shop.svc.cluster.local", nil, translate.Node{Type: "sidecar", IP: netip.MustParseAddr("10.1.2.3"), Pod: "web-1", Namespace: "shop", Generator: translate.GeneratorEnvoy}},
		{"sidecar~::ffff:10.1.2.3~web-1.shop~shop.svc.cluster.local", grpcMeta, translate.Node{Type: "sidecar", IP: netip.MustParseAddr("10.1.2.3"), Pod: "web-1", Namespace: "shop", Generator: translate.GeneratorGRPC}},
		{"my-envoy", nil, translate.Node{Generator: translate.GeneratorEnvoy}},
		{"router~bad-ip~gw.ns~ns.svc.cluster.local", nil, translate.Node{Type: "router", Pod: "gw", Namespace: "ns", Generator: translate.GeneratorEnvoy}},
		{"", nil, translate.Node{Generator: translate.GeneratorEnvoy}},
	} {
		got := translate.ParseNode(&core.Node{Id: tc.id, Metadata: tc.meta})
		tc.want.ID = tc.id
		if got != tc.want {
			t.Errorf("ParseNode(%q) = %+v, want %+v", tc.id, got, tc.want)
		}
	}
}

// TestGolden compares the generated resources with files reviewed by hand. Run
// `go test ./routing/translate -run Golden -update` after an intended change and
// review the diff.
func TestGolden(t *testing.T) {
	r := build(t)
	node := translate.ParseNode(&core.Node{Id: "sidecar~10.0.0.11~reviews-v1.default~default.svc.cluster.local"})
	lis, _ := r.SidecarListeners(node)
	for _, tc := range []struct {
		file string
		sets map[string]map[string]types.Resource
	}{
		{"envoy-sidecar.golden.json", map[string]map[string]types.Resource{
			"listeners": lis, "routes": r.Envoy.Routes, "clusters": r.Envoy.Clusters, "endpoints": r.Endpoints,
		}},
		{"grpc-proxyless.golden.json", map[string]map[string]types.Resource{
			"listeners": r.GRPC.Listeners, "routes": r.GRPC.Routes, "clusters": r.GRPC.Clusters,
		}},
	} {
		got := render(t, tc.sets)
		path := filepath.Join("testdata", tc.file)
		if *update {
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run with -update to create it)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: the generated resources changed. Review with\n  go test ./routing/translate -run Golden -update && git diff %s", path, path)
		}
	}
}

// render prints resources as indented JSON in name order. protojson's spacing is
// deliberately unstable, so its output is re-indented with encoding/json.
func render(t *testing.T, sets map[string]map[string]types.Resource) []byte {
	t.Helper()
	out := map[string][]json.RawMessage{}
	for kind, set := range sets {
		names := make([]string, 0, len(set))
		for n := range set {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			js, err := protojson.Marshal(set[n])
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := json.Compact(&buf, js); err != nil {
				t.Fatal(err)
			}
			out[kind] = append(out[kind], buf.Bytes())
		}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// TestCheckCluster checks where sidecars send their checks: to the gRPC port, or to
// the lean check listener when it is advertised; access logs always go to the gRPC
// port.
func TestCheckCluster(t *testing.T) {
	m, reg := load(t, "../testdata/mesh")
	for _, tc := range []struct {
		name         string
		opts         translate.Options
		checkCluster string
		checkAddr    string // of the sluice-check cluster; "" when there is none
	}{
		{"grpc port", translate.Options{Advertise: "10.9.0.1:9091"}, "sluice-grpc", ""},
		{"check listener by IP", translate.Options{Advertise: "10.9.0.1:9091", CheckAdvertise: "10.9.0.1:9095"}, "sluice-check", "10.9.0.1:9095"},
		{"check listener by name", translate.Options{Advertise: "sluice.ns:9091", CheckAdvertise: "sluice.ns:9095"}, "sluice-check", "sluice.ns:9095"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := translate.Build(m, reg, tc.opts)
			c, ok := r.Envoy.Clusters[translate.SluiceCheckCluster].(*cluster.Cluster)
			if ok != (tc.checkAddr != "") {
				t.Fatalf("sluice-check cluster present = %v, want %v", ok, tc.checkAddr != "")
			}
			if ok {
				sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
				if got := sa.GetAddress() + ":" + strconv.Itoa(int(sa.GetPortValue())); got != tc.checkAddr {
					t.Errorf("sluice-check points at %s, want %s", got, tc.checkAddr)
				}
				if err := c.ValidateAll(); err != nil {
					t.Error(err)
				}
			}
			node := translate.ParseNode(&core.Node{Id: "sidecar~10.0.0.11~reviews-v1.default~default.svc.cluster.local"})
			lis, _ := r.SidecarListeners(node)
			in := lis["virtualInbound"].(*listener.Listener)
			h := &hcm.HttpConnectionManager{}
			if err := in.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(h); err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, hf := range h.GetHttpFilters() {
				switch hf.GetName() {
				case "envoy.filters.http.ext_authz":
					a := &extauthz.ExtAuthz{}
					if err := hf.GetTypedConfig().UnmarshalTo(a); err != nil {
						t.Fatal(err)
					}
					got["ext_authz"] = a.GetGrpcService().GetEnvoyGrpc().GetClusterName()
				case "envoy.filters.http.ratelimit":
					rl := &ratelimit.RateLimit{}
					if err := hf.GetTypedConfig().UnmarshalTo(rl); err != nil {
						t.Fatal(err)
					}
					got["ratelimit"] = rl.GetRateLimitService().GetGrpcService().GetEnvoyGrpc().GetClusterName()
				}
			}
			if got["ext_authz"] != tc.checkCluster || got["ratelimit"] != tc.checkCluster {
				t.Errorf("checks go to %v, want %s", got, tc.checkCluster)
			}
			logCfg := &als.HttpGrpcAccessLogConfig{}
			if err := h.GetAccessLog()[0].GetTypedConfig().UnmarshalTo(logCfg); err != nil {
				t.Fatal(err)
			}
			if c := logCfg.GetCommonConfig().GetGrpcService().GetEnvoyGrpc().GetClusterName(); c != "sluice-grpc" {
				t.Errorf("access logs go to %s, want sluice-grpc", c)
			}
		})
	}
}

// TestCheckFailureMode: the generated ext_authz filter refuses a request Sluice
// cannot answer, with a 503 rather than Envoy's 403, unless told to fail open;
// then Envoy marks what it let through.
func TestCheckFailureMode(t *testing.T) {
	m, reg := load(t, "../testdata/mesh")
	node := translate.ParseNode(&core.Node{Id: "sidecar~10.0.0.11~reviews-v1.default~default.svc.cluster.local"})
	for _, open := range []bool{false, true} {
		r := translate.Build(m, reg, translate.Options{Advertise: "10.9.0.1:9091", CheckFailOpen: open})
		lis, _ := r.SidecarListeners(node)
		h := &hcm.HttpConnectionManager{}
		if err := lis["virtualInbound"].(*listener.Listener).GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(h); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, hf := range h.GetHttpFilters() {
			if hf.GetName() != "envoy.filters.http.ext_authz" {
				continue
			}
			found = true
			a := &extauthz.ExtAuthz{}
			if err := hf.GetTypedConfig().UnmarshalTo(a); err != nil {
				t.Fatal(err)
			}
			if a.GetFailureModeAllow() != open || a.GetFailureModeAllowHeaderAdd() != open {
				t.Errorf("CheckFailOpen %v: failure_mode_allow %v, header %v", open, a.GetFailureModeAllow(), a.GetFailureModeAllowHeaderAdd())
			}
			if got := a.GetStatusOnError().GetCode(); got != 503 {
				t.Errorf("CheckFailOpen %v: status on error %v, want 503", open, got)
			}
		}
		if !found {
			t.Fatalf("no ext_authz filter on the inbound listener")
		}
	}
}

// TestSluiceClusterLimits checks that the clusters reaching Sluice do not keep
// Envoy's default circuit breakers (1,024 requests, pending requests and
// connections per cluster): past them Envoy fails the ext_authz and rate-limit
// calls locally, and the filters let the requests through unchecked (rate
// limits, and ext_authz with --check-fail-open) or refuse them all. The service clusters lift these limits as Istio does; so must
// Sluice's.
func TestSluiceClusterLimits(t *testing.T) {
	m, reg := load(t, "../testdata/mesh")
	for _, tc := range []struct {
		name     string
		opts     translate.Options
		clusters []string
	}{
		{"grpc port", translate.Options{Advertise: "10.9.0.1:9091"}, []string{"sluice-grpc"}},
		{"check listener", translate.Options{Advertise: "sluice.ns:9091", CheckAdvertise: "sluice.ns:9095"}, []string{"sluice-grpc", "sluice-check"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := translate.Build(m, reg, tc.opts)
			for _, name := range tc.clusters {
				c, ok := r.Envoy.Clusters[name].(*cluster.Cluster)
				if !ok {
					t.Fatalf("cluster %s missing", name)
				}
				th := c.GetCircuitBreakers().GetThresholds()
				if len(th) == 0 {
					t.Errorf("%s: no circuit breaker thresholds: Envoy's default of 1,024 applies", name)
					continue
				}
				for field, v := range map[string]interface{ GetValue() uint32 }{
					"max_connections": th[0].GetMaxConnections(), "max_pending_requests": th[0].GetMaxPendingRequests(),
					"max_requests": th[0].GetMaxRequests(),
				} {
					if v.GetValue() != math.MaxUint32 {
						t.Errorf("%s: %s = %v, want %d", name, field, v, uint32(math.MaxUint32))
					}
				}
			}
		})
	}
}
