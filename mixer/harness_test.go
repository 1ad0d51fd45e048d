package mixer_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluicemesh/sluice/adapters/all"
	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
)

// harness runs a Mixer on loopback for one test.
type harness struct {
	t      *testing.T
	m      *mixer.Mixer
	cancel context.CancelFunc
	done   chan error
	url    string
}

func start(t *testing.T, dir string, mod func(*mixer.Options)) *harness {
	t.Helper()
	opts := mixer.Options{
		ConfigDir: dir, GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		Adapters: all.Registry(), Shards: 2, DrainTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if testing.Verbose() {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if mod != nil {
		mod(&opts)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m, err := mixer.New(ctx, opts)
	if err != nil {
		cancel()
		t.Fatalf("mixer.New: %v", err)
	}
	h := &harness{t: t, m: m, cancel: cancel, done: make(chan error, 1), url: "http://" + m.AdminAddr().String()}
	go func() { h.done <- m.Run(ctx) }()
	t.Cleanup(func() { h.stop() })
	return h
}

// stop shuts the mixer down (as SIGTERM does) and waits for it.
func (h *harness) stop() error {
	h.cancel()
	select {
	case err := <-h.done:
		h.done <- err // later calls see the same result
		return err
	case <-time.After(30 * time.Second):
		h.t.Fatal("mixer did not stop")
		return nil
	}
}

func (h *harness) conn() *grpc.ClientConn {
	h.t.Helper()
	c, err := grpc.NewClient(h.m.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

func (h *harness) scrape() loadtest.Families {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := loadtest.Scrape(ctx, h.url+"/metrics")
	if err != nil {
		h.t.Fatal(err)
	}
	return f
}

// waitMetric polls until cond holds on a scrape, or fails after a timeout.
func (h *harness) waitMetric(what string, cond func(loadtest.Families) bool) loadtest.Families {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		f := h.scrape()
		if cond(f) {
			return f
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitProcessed waits until n entries have been processed or dropped in total.
func (h *harness) waitProcessed(n float64) loadtest.Families {
	h.t.Helper()
	return h.waitMetric("entries to be processed", func(f loadtest.Families) bool {
		return f.Sum("sluice_entries_processed_total", nil)+f.Sum("sluice_entries_dropped_total", nil) >= n
	})
}

func writeFile(t *testing.T, dir, name, body string) {
	t.Helper()
	// Write then rename, as editors and ConfigMap updates do, so that a reload never
	// sees half a file.
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}
