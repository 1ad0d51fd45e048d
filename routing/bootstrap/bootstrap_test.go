package bootstrap_test

import (
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/sluicemesh/sluice/routing/bootstrap"
)

func TestBuild(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    bootstrap.Options
		wantErr string
		check   func(t *testing.T, b string)
	}{
		{
			name: "istio sidecar over DNS",
			opts: bootstrap.Options{NodeID: "sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local", XDSAddress: "sluice.sluice-system.svc.cluster.local:15010",
				Workload: "reviews-v1", Labels: map[string]string{"app": "reviews", "version": "v1"}},
			check: func(t *testing.T, b string) {
				for _, want := range []string{`type:STRICT_DNS`, `"NAME"`, `"reviews-v1-abc"`, `"NAMESPACE"`, `"WORKLOAD_NAME"`, `"LABELS"`, `cluster:"reviews-v1.default"`, `api_type:GRPC`} {
					if !strings.Contains(strings.ReplaceAll(b, " ", ""), strings.ReplaceAll(want, " ", "")) {
						t.Errorf("bootstrap lacks %s:\n%s", want, b)
					}
				}
			},
		},
		{
			name: "delta, by IP",
			opts: bootstrap.Options{NodeID: "my-envoy", XDSAddress: "127.0.0.1:15010", Delta: true, AdminPort: 19000},
			check: func(t *testing.T, b string) {
				if !strings.Contains(b, "DELTA_GRPC") || !strings.Contains(b, "STATIC") || !strings.Contains(b, "19000") {
					t.Errorf("bootstrap: %s", b)
				}
			},
		},
		{name: "no node", opts: bootstrap.Options{XDSAddress: "x:1"}, wantErr: "node ID"},
		{name: "no port", opts: bootstrap.Options{NodeID: "n", XDSAddress: "sluice"}, wantErr: "xDS address"},
		{name: "bad port", opts: bootstrap.Options{NodeID: "n", XDSAddress: "sluice:0"}, wantErr: "bad port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := bootstrap.Build(tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.GetDynamicResources().GetLdsConfig().GetAds() == nil || b.GetDynamicResources().GetAdsConfig().GetTransportApiVersion() != core.ApiVersion_V3 {
				t.Errorf("not an ADS bootstrap: %v", b)
			}
			tc.check(t, b.String())
		})
	}
}
