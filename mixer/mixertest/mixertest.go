// Package mixertest runs a whole Sluice on loopback for one test: the servers, the
// config watcher and every built-in adapter, stopped when the test ends.
package mixertest

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluicemesh/sluice/adapters/all"
	"github.com/sluicemesh/sluice/mixer"
)

// Server is a running Sluice.
type Server struct {
	*mixer.Mixer
	// AdminURL is the admin server's base URL, http://HOST:PORT.
	AdminURL string
	cancel   context.CancelFunc
	done     chan error
}

// Start runs a Sluice with opts, filling in what a test does not care about: free
// loopback ports, the built-in adapters, a quiet logger (unless -v) and a short drain.
func Start(t testing.TB, opts mixer.Options) *Server {
	t.Helper()
	if opts.GRPCAddr == "" {
		opts.GRPCAddr = "127.0.0.1:0"
	}
	if opts.AdminAddr == "" {
		opts.AdminAddr = "127.0.0.1:0"
	}
	if opts.Adapters == nil {
		opts.Adapters = all.Registry()
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		if testing.Verbose() {
			opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	m, err := mixer.New(ctx, opts)
	if err != nil {
		cancel()
		t.Fatalf("mixer.New: %v", err)
	}
	s := &Server{Mixer: m, AdminURL: "http://" + m.AdminAddr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- m.Run(ctx) }()
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Logf("stop: %v", err)
		}
	})
	return s
}

// Stop shuts the server down, as SIGTERM does, and returns what Run returned. It may
// be called more than once.
func (s *Server) Stop() error {
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(30 * time.Second):
		return context.DeadlineExceeded
	}
}

// Dial returns a client connection to the gRPC port, closed when the test ends.
func (s *Server) Dial(t testing.TB) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient(s.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
