package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/sluicemesh/sluice/adapters/adaptertest"
)

func TestEnvoyBootstrapCommand(t *testing.T) {
	for _, format := range []string{"yaml", "json"} {
		var out bytes.Buffer
		root := newRoot()
		root.SetOut(&out)
		root.SetArgs([]string{"envoy-bootstrap", "--node", "sidecar~10.1.2.3~web-0.shop~shop.svc.cluster.local",
			"--xds-address", "sluice.sluice-system:15010", "--label", "app=web", "--delta", "--format", format})
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		js := out.Bytes()
		if format == "yaml" {
			var v any
			if err := yaml.Unmarshal(out.Bytes(), &v); err != nil {
				t.Fatal(err)
			}
			var err error
			if js, err = json.Marshal(v); err != nil {
				t.Fatal(err)
			}
		}
		b := &bootstrapv3.Bootstrap{}
		if err := protojson.Unmarshal(js, b); err != nil {
			t.Fatalf("%s output is not a bootstrap: %v\n%s", format, err, out.String())
		}
		if err := b.ValidateAll(); err != nil {
			t.Error(err)
		}
		if b.GetDynamicResources().GetAdsConfig().GetApiType() != core.ApiConfigSource_DELTA_GRPC ||
			b.GetNode().GetMetadata().GetFields()["NAMESPACE"].GetStringValue() != "shop" {
			t.Errorf("%s bootstrap: %v", format, b)
		}
	}
	root := newRoot()
	root.SetOut(io.Discard)
	root.SetArgs([]string{"envoy-bootstrap"})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "--node") {
		t.Errorf("without --node: %v", err)
	}
}

// TestServeRouting runs sluice serve and checks the routing wiring: an Envoy gets its
// listeners and clusters pointing at the bound gRPC port and, with --check-addr, at
// the bound check listener; the admin page lists it, and the server stops cleanly.
func TestServeRouting(t *testing.T) {
	dir := t.TempDir()
	mesh, err := os.ReadFile(filepath.Join("..", "..", "routing", "testdata", "mesh", "services.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), mesh, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		// check is the banner line whose address sluice-check must name; "" when
		// the cluster must be absent.
		check string
	}{
		{"grpc port only", nil, ""},
		{"check listener", []string{"--check-addr", "127.0.0.1:0"}, "checks (lean h2)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := &adaptertest.LogBuffer{}
			root := newRoot()
			root.SetOut(out)
			root.SetArgs(append([]string{"serve", "--config", dir, "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
				"--xds-addr", "127.0.0.1:0", "--log-level", "warn"}, tc.args...))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- root.ExecuteContext(ctx) }()
			defer func() {
				cancel()
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("serve: %v", err)
					}
				case <-time.After(15 * time.Second):
					t.Error("serve did not stop")
				}
			}()
			banner := regexp.MustCompile(`access logs \(gRPC\): (\S+)\n(?s:.*)xDS \(ADS\):\s+(\S+) \(clients: (\S+)\)`)
			var m []string
			for deadline := time.Now().Add(10 * time.Second); m == nil && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				m = banner.FindStringSubmatch(out.String())
			}
			if m == nil {
				t.Fatalf("no banner: %s", out.String())
			}
			want := map[string]string{"sluice-grpc": m[1]}
			if tc.check != "" {
				cm := regexp.MustCompile(regexp.QuoteMeta(tc.check) + `:\s+(\S+)`).FindStringSubmatch(out.String())
				if cm == nil {
					t.Fatalf("no %q line in the banner: %s", tc.check, out.String())
				}
				want["sluice-check"] = cm[1]
			}
			xdsAddr, clientsURL := m[2], m[3]

			cc, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &core.Node{Id: "sidecar~10.0.0.9~web-0.default~default.svc.cluster.local"}}); err != nil {
				t.Fatal(err)
			}
			resp, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, a := range resp.GetResources() {
				c := &cluster.Cluster{}
				if err := a.UnmarshalTo(c); err != nil {
					t.Fatal(err)
				}
				if strings.HasPrefix(c.GetName(), "sluice-") {
					sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
					got[c.GetName()] = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
				}
			}
			if len(got) != len(want) {
				t.Errorf("Sluice clusters %v, want %v", got, want)
			}
			for name, addr := range want {
				if got[name] != addr {
					t.Errorf("%s points at %q, want %s", name, got[name], addr)
				}
			}
			body := get(t, clientsURL)
			if !strings.Contains(body, "web-0.default") || !strings.Contains(body, `"CDS"`) {
				t.Errorf("clients page: %s", body)
			}
		})
	}
}

// TestCheckAdvertiseAddr covers the address proxies are given for the check
// listener when --check-advertise-addr is not set.
func TestCheckAdvertiseAddr(t *testing.T) {
	check := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9095}
	for _, tc := range []struct{ grpcAdvertise, want string }{
		{"sluice.sluice-system.svc:9091", "sluice.sluice-system.svc:9095"},
		{"10.1.2.3:9091", "10.1.2.3:9095"},
		{"", "127.0.0.1:9095"}, // no --advertise-addr: the check listener's own address
	} {
		if got := checkAdvertiseAddr(tc.grpcAdvertise, check); got != tc.want {
			t.Errorf("checkAdvertiseAddr(%q) = %s, want %s", tc.grpcAdvertise, got, tc.want)
		}
	}
	root := newRoot()
	root.SetOut(io.Discard)
	root.SetArgs([]string{"serve", "--check-advertise-addr", "sluice:9095", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0"})
	// Were it accepted, serve would run until the context ends and return nil.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := root.ExecuteContext(ctx); err == nil {
		t.Error("--check-advertise-addr without --check-addr was accepted")
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
