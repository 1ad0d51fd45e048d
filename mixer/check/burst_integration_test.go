//go:build integration

package check_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	"github.com/sluicemesh/sluice/adapters/quotakit/quotatest"
	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
)

// TestIntegrationBurstOnePipeline: rate-limit requests that reach the lean
// listener together run on its reader as one burst, and their Redis calls leave
// in one pipeline, in the order of the requests: of five requests for one user
// with a limit of three, exactly the first three are allowed.
func TestIntegrationBurstOnePipeline(t *testing.T) {
	addr := quotatest.StartRedis(t)
	dir := t.TempDir()
	cfg := "domain: burst\ndescriptors:\n- key: user\n  rate_limit: {unit: minute, requests_per_unit: 3}\n"
	if err := os.WriteFile(filepath.Join(dir, "burst.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, func(o *mixer.Options) {
		o.RedisAddr = addr
		o.RedisTimeout = time.Second
	}, filepath.Join(dir, "burst.yaml"))
	request := func(user string) *rlsv3.RateLimitRequest {
		return &rlsv3.RateLimitRequest{Domain: "burst", Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("user", user)}}
	}
	// A first call loads the plan and Redis's script, so that the burst's
	// pipeline is the only one it sends. It goes to the gRPC port: on the lean
	// listener's reader, a first call slowed past 10 ms (a busy machine) would
	// pause calls on readers, and the burst would run on goroutines.
	if _, err := rlsv3.NewRateLimitServiceClient(s.via("grpc")).ShouldRateLimit(context.Background(), request("warm")); err != nil {
		t.Fatal(err)
	}
	counts := func() (burst, pipelines, calls float64) {
		t.Helper()
		f, err := loadtest.Scrape(context.Background(), s.url)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range f.Series("sluice_redisquota_pipeline_calls", nil) {
			pipelines += float64(m.GetHistogram().GetSampleCount())
			calls += m.GetHistogram().GetSampleSum()
		}
		return f.Sum("sluice_h2unary_calls_total", map[string]string{"mode": "burst"}), pipelines, calls
	}
	burst0, pipelines0, calls0 := counts()

	nc, err := net.Dial("tcp", s.checkConn.Target())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var out, hb bytes.Buffer
	out.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&out, nil)
	_ = fr.WriteSettings()
	enc := hpack.NewEncoder(&hb)
	const n = 5
	for i := range n {
		id := uint32(2*i + 1)
		hb.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "sluice"},
			{":path", "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"}, {"content-type", "application/grpc"}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
		msg, _ := proto.Marshal(request("u"))
		_ = fr.WriteData(id, true, append([]byte{0, 0, 0, 0, byte(len(msg))}, msg...))
	}
	if _, err := nc.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}

	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	rd := http2.NewFramer(io.Discard, nc)
	rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	codes := map[uint32]rlsv3.RateLimitResponse_Code{}
	for ended := 0; ended < n; {
		f, err := rd.ReadFrame()
		if err != nil {
			t.Fatalf("%d of %d answered: %v", ended, n, err)
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			var resp rlsv3.RateLimitResponse
			if err := proto.Unmarshal(f.Data()[5:], &resp); err != nil {
				t.Fatal(err)
			}
			codes[f.StreamID] = resp.GetOverallCode()
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				ended++
				for _, hf := range f.RegularFields() {
					if hf.Name == "grpc-status" && hf.Value != "0" {
						t.Fatalf("stream %d: grpc-status %s", f.StreamID, hf.Value)
					}
				}
			}
		}
	}
	for i := range n {
		want := rlsv3.RateLimitResponse_OK
		if i >= 3 {
			want = rlsv3.RateLimitResponse_OVER_LIMIT
		}
		if got := codes[uint32(2*i+1)]; got != want {
			t.Errorf("request %d of the burst: %v, want %v", i+1, got, want)
		}
	}
	burst1, pipelines1, calls1 := counts()
	if burst1-burst0 < n-1 {
		t.Errorf("%v of %d requests read together ran in a burst, want at least %d", burst1-burst0, n, n-1)
	}
	if pipelines1-pipelines0 != 1 || calls1-calls0 != n {
		t.Errorf("%v pipelines carried %v calls, want 1 carrying %d", pipelines1-pipelines0, calls1-calls0, n)
	}
}
