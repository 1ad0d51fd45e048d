package stdio

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/templates/logentry"
)

type countStats struct {
	mu      sync.Mutex
	dropped map[string]int
	errors  int
}

func (c *countStats) Error(string) { c.mu.Lock(); c.errors++; c.mu.Unlock() }
func (c *countStats) Dropped(n int, reason string) {
	c.mu.Lock()
	c.dropped[reason] += n
	c.mu.Unlock()
}

func TestWritesJSONLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	st := &countStats{dropped: map[string]int{}}
	h, err := New(adapters.Env{Stats: st}, &Params{OutputPath: path, QueueSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	inst := &logentry.Instance{Name: "ns/access", Variables: []string{"path", "code", "latency", "missing", "headers"}}
	ts := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	batch := []logentry.Entry{
		{Instance: inst, Timestamp: ts, Severity: "info", Values: []any{"/a\"b", int64(200), 1500 * time.Microsecond, nil, map[string]string{"k": "v"}}},
		{Instance: inst, Timestamp: ts, Severity: "error", Values: []any{"bad\xffutf8", int64(503), time.Second, nil, nil}},
	}
	h.HandleLogs(batch)
	batch[0].Severity = "reused" // the caller reuses its slice after the call
	if err := h.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("invalid JSON %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2", len(lines))
	}
	first := lines[0]
	if first["level"] != "info" || first["path"] != `/a"b` || first["code"] != 200.0 || first["latency"] != "1.5ms" ||
		first["time"] != "2026-01-02T03:04:05.000000006Z" || first["instance"] != "ns/access" {
		t.Errorf("first line %v", first)
	}
	if _, ok := first["missing"]; ok {
		t.Error("a variable without a value was written")
	}
	if lines[1]["path"] != "bad\uFFFDutf8" {
		t.Errorf("invalid UTF-8 written as %q", lines[1]["path"])
	}
	// After Close, entries are counted, not lost silently.
	h.HandleLogs(batch)
	if st.dropped["closed"] != 2 {
		t.Errorf("dropped after close: %v", st.dropped)
	}
}

func TestQueueFullIsCounted(t *testing.T) {
	r, w, err := os.Pipe() // a writer nobody reads: the queue fills
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	st := &countStats{dropped: map[string]int{}}
	h := &Handler{env: adapters.Env{Stats: st}, out: w, closer: w, limit: 10, done: make(chan struct{}), queue: make(chan []logentry.Entry, 1024)}
	go h.write()
	inst := &logentry.Instance{Name: "x", Variables: []string{"v"}}
	big := make([]any, 1)
	big[0] = string(make([]byte, 1<<20)) // larger than the pipe buffer: the writer blocks
	entries := []logentry.Entry{{Instance: inst, Values: big}}
	for i := 0; i < 30; i++ {
		h.HandleLogs(entries)
	}
	st.mu.Lock()
	dropped := st.dropped["queue_full"]
	st.mu.Unlock()
	if dropped < 19 {
		t.Errorf("dropped %d of 30 with a queue of 10 and a blocked writer", dropped)
	}
	r.Close() // unblock the writer with an error, which is counted
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = h.Close(ctx)
}
