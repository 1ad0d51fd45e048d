package mixer_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
	"github.com/sluicemesh/sluice/mixer/mixertest"
)

// harness runs a Sluice on loopback for one test.
type harness struct {
	*mixertest.Server
	t   *testing.T
	url string
}

func start(t *testing.T, dir string, mod func(*mixer.Options)) *harness {
	t.Helper()
	opts := mixer.Options{ConfigDir: dir, Shards: 2}
	if mod != nil {
		mod(&opts)
	}
	s := mixertest.Start(t, opts)
	return &harness{Server: s, t: t, url: s.AdminURL}
}

// stop shuts the mixer down (as SIGTERM does) and waits for it.
func (h *harness) stop() error { return h.Stop() }

func (h *harness) conn() *grpc.ClientConn { return h.Dial(h.t) }

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
