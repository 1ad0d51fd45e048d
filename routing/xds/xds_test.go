package xds

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/sluicemesh/sluice/mixer/connlimit"
	"github.com/sluicemesh/sluice/mixer/connlimit/connlimittest"
)

func TestResourceName(t *testing.T) {
	marshal := func(m proto.Message) []byte {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"cluster", marshal(&cluster.Cluster{Name: "outbound|80||a", ConnectTimeout: nil, AltStatName: "x"}), "outbound|80||a"},
		{"listener", marshal(&listener.Listener{Name: "0.0.0.0_80", StatPrefix: "p"}), "0.0.0.0_80"},
		{"name after other fields", append(marshal(&cluster.Cluster{AltStatName: "x"}), marshal(&cluster.Cluster{Name: "late"})...), "late"},
		{"empty", nil, ""},
		{"garbage", []byte{0xff, 0xff, 0xff}, ""},
		{"truncated", marshal(&cluster.Cluster{Name: "outbound"})[:4], ""},
	} {
		if got := resourceName(tc.in); got != tc.want {
			t.Errorf("%s: resourceName = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestClientsHandler(t *testing.T) {
	s, err := New(Options{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.lis.Close()
	for _, tc := range []struct {
		method, query string
		want          int
	}{
		{"GET", "", http.StatusOK},
		{"GET", "?stream=7&node=x&detail=1", http.StatusOK},
		{"GET", "?stream=seven", http.StatusBadRequest},
		{"POST", "", http.StatusMethodNotAllowed},
	} {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest(tc.method, "/api/xds/clients"+tc.query, nil))
		if rec.Code != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.query, rec.Code, tc.want)
		}
	}
}

// TestConnectionBound: the xDS port holds MaxConnections open at most; one more
// is closed as soon as it is accepted, and counted.
func TestConnectionBound(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := New(Options{Addr: "127.0.0.1:0", MaxConnections: 1, Metrics: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	held, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	waitFor("the first connection to be accepted", func() bool { return s.lis.(*connlimit.Listener).Active() == 1 })

	connlimittest.ExpectClosed(t, s.Addr().String())
	want := "# HELP sluice_connections_refused_total Connections closed as soon as accepted because --max-connections connections were open already.\n" +
		"# TYPE sluice_connections_refused_total counter\n" +
		"sluice_connections_refused_total{listener=\"xds\"} 1\n"
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "sluice_connections_refused_total"); err != nil {
		t.Error(err)
	}
}
