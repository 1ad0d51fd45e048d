package xds

import (
	"net/http"
	"net/http/httptest"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"
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
