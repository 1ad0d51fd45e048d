package check_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// fuzzServer is one server shared by a fuzz target's inputs.
func fuzzServer(f *testing.F) *server {
	files, err := filepath.Glob("testdata/ratelimit-readme/*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	files = append(files, "testdata/policy.yaml", "testdata/quota.yaml")
	return startServer(f, nil, files...)
}

// FuzzCheckRequest decodes arbitrary bytes as an ext_authz CheckRequest and checks it:
// every input gets an answer or a gRPC status, never a panic or a hang.
func FuzzCheckRequest(f *testing.F) {
	for _, c := range []call{
		{frontend, "GET", "/items", map[string]string{"x-user": "a"}},
		{stranger, "POST", "/admin/x", map[string]string{"x-client": "legacy", "x-role": "admin"}},
		{"", "", "", nil},
	} {
		b, _ := proto.Marshal(c.request())
		f.Add(b)
	}
	s := fuzzServer(f)
	client := authv3.NewAuthorizationClient(s.conn)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req authv3.CheckRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := client.Check(ctx, &req)
		if ctx.Err() != nil {
			t.Fatalf("no answer within 5s: %v", err)
		}
		if err == nil && resp.GetStatus() == nil {
			t.Fatal("an answer without a status")
		}
	})
}

// FuzzRateLimitRequest does the same for the rate-limit service.
func FuzzRateLimitRequest(f *testing.F) {
	for _, r := range []*rlsv3.RateLimitRequest{
		{Domain: "messaging", Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("message_type", "marketing", "to_number", "1"), descriptor("to_number", "1")}},
		{Domain: "example7", HitsAddend: 3, Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("key_1", "value_1", "user", "u"), descriptor("key_2", "value_2", "user", "u")}},
		{Domain: "algorithms", Descriptors: []*rlcommon.RateLimitDescriptor{descriptor("wild", "tenant-x"), {Entries: descriptor("bucket", "b").Entries, HitsAddend: wrapperspb.UInt64(2)}}},
		{Domain: "x"},
	} {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	s := fuzzServer(f)
	client := rlsv3.NewRateLimitServiceClient(s.conn)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req rlsv3.RateLimitRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := client.ShouldRateLimit(ctx, &req)
		if ctx.Err() != nil {
			t.Fatalf("no answer within 5s: %v", err)
		}
		if err == nil && len(resp.GetStatuses()) != len(req.GetDescriptors()) {
			t.Fatalf("%d statuses for %d descriptors", len(resp.GetStatuses()), len(req.GetDescriptors()))
		}
	})
}
