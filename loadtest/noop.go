package loadtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
)

// noopServer answers every check OK without looking at it: the floor a grpc-go check
// server cannot go below on a machine, the baseline of the check benchmark.
type noopServer struct {
	authv3.UnimplementedAuthorizationServer
	rlsv3.UnimplementedRateLimitServiceServer
}

func (noopServer) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{Status: &rpcstatus.Status{}}, nil
}

func (noopServer) ShouldRateLimit(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}
	for range req.GetDescriptors() {
		resp.Statuses = append(resp.Statuses, &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK})
	}
	return resp, nil
}

// ServeNoop runs the do-nothing check server on grpcAddr, with a /readyz on adminAddr,
// until ctx ends: grpc-go's, or with lean the hand-written HTTP/2 one (ServeNoopH2),
// which counts each call in the Redis at redisAddr first if that is not empty.
func ServeNoop(ctx context.Context, grpcAddr, adminAddr string, lean bool, redisAddr string) error {
	if redisAddr != "" && !lean {
		return errors.New("only the lean server (--h2) counts calls in Redis")
	}
	mux := http.NewServeMux()
	// The runtime's metrics only: the load tool reads allocations and collections.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	admin := &http.Server{Addr: adminAddr, Handler: mux}
	go func() { _ = admin.ListenAndServe() }()
	defer admin.Close()
	if lean {
		return ServeNoopH2(ctx, grpcAddr, redisAddr)
	}
	lis, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", grpcAddr, err)
	}
	g := grpc.NewServer()
	authv3.RegisterAuthorizationServer(g, noopServer{})
	rlsv3.RegisterRateLimitServiceServer(g, noopServer{})
	stop := context.AfterFunc(ctx, g.Stop)
	defer stop()
	return g.Serve(lis)
}
