// Package stdio is the stdio adapter: it writes logentry instances as JSON lines to
// standard output, standard error or a file, from its own goroutine.
package stdio

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/templates"
	"github.com/sluicemesh/sluice/templates/logentry"
)

// Name is the adapter's name in a Handler's spec.adapter.
const Name = "stdio"

// Params configure a stdio handler.
type Params struct {
	// OutputPath is "stdout" (the default), "stderr", or a file appended to.
	OutputPath string `yaml:"outputPath"`
	// QueueSize bounds the entries waiting to be written; beyond it entries are dropped
	// and counted. Default 65536.
	QueueSize int `yaml:"queueSize"`
}

// Validate implements adapters.Params.
func (p *Params) Validate() error {
	if p.QueueSize < 1 {
		return adapters.Errorf("queueSize", "must be at least 1")
	}
	return nil
}

// Factory returns the stdio adapter's factory.
func Factory() *adapters.Factory {
	return &adapters.Factory{
		Name:      Name,
		Doc:       "writes log entries as JSON lines",
		Templates: []string{templates.LogEntry},
		NewParams: func() adapters.Params { return &Params{OutputPath: "stdout", QueueSize: 65536} },
		New: func(_ context.Context, env adapters.Env, p adapters.Params, _ adapters.Instances) (adapters.Handler, error) {
			return New(env, p.(*Params))
		},
	}
}

// Handler writes log entries. HandleLogs queues; one goroutine writes.
type Handler struct {
	env    adapters.Env
	out    io.Writer
	closer io.Closer
	queue  chan []logentry.Entry

	limit  int
	mu     sync.Mutex // guards queued and closed against Close
	queued int
	closed bool
	done   chan struct{}
}

// New opens the output and starts the writer.
func New(env adapters.Env, p *Params) (*Handler, error) {
	h := &Handler{env: env, limit: p.QueueSize, done: make(chan struct{})}
	switch p.OutputPath {
	case "", "stdout":
		h.out = os.Stdout
	case "stderr":
		h.out = os.Stderr
	default:
		f, err := os.OpenFile(p.OutputPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", p.OutputPath, err)
		}
		h.out, h.closer = f, f
	}
	// The channel carries batches; the entry bound is enforced by queued.
	h.queue = make(chan []logentry.Entry, 1024)
	go h.write()
	return h, nil
}

// HandleLogs implements adapters.LogHandler.
func (h *Handler) HandleLogs(entries []logentry.Entry) {
	if len(entries) == 0 {
		return
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		h.env.Stats.Dropped(len(entries), "closed")
		return
	}
	if h.queued+len(entries) > h.limit {
		h.mu.Unlock()
		h.env.Stats.Dropped(len(entries), "queue_full")
		return
	}
	batch := append([]logentry.Entry(nil), entries...)
	select {
	case h.queue <- batch:
		h.queued += len(batch)
		h.mu.Unlock()
	default:
		h.mu.Unlock()
		h.env.Stats.Dropped(len(entries), "queue_full")
	}
}

func (h *Handler) write() {
	defer close(h.done)
	w := bufio.NewWriterSize(h.out, 64<<10)
	var line []byte
	for batch := range h.queue {
		for i := range batch {
			line = appendJSON(line[:0], &batch[i])
			if _, err := w.Write(line); err != nil {
				h.env.Stats.Error("write")
			}
		}
		h.mu.Lock()
		h.queued -= len(batch)
		h.mu.Unlock()
		if len(h.queue) == 0 {
			if err := w.Flush(); err != nil {
				h.env.Stats.Error("write")
			}
		}
	}
	if err := w.Flush(); err != nil {
		h.env.Stats.Error("write")
	}
}

// appendJSON formats one entry: level, time, instance, then the variables in order.
func appendJSON(dst []byte, e *logentry.Entry) []byte {
	dst = append(dst, `{"level":`...)
	dst = strconv.AppendQuote(dst, e.Severity)
	dst = append(dst, `,"time":"`...)
	dst = e.Timestamp.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","instance":`...)
	dst = appendString(dst, e.Instance.Name)
	for i, name := range e.Instance.Variables {
		if i >= len(e.Values) || e.Values[i] == nil {
			continue
		}
		dst = append(dst, ',')
		dst = appendString(dst, name)
		dst = append(dst, ':')
		dst = appendValue(dst, e.Values[i])
	}
	return append(dst, '}', '\n')
}

func appendString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s) // a string always marshals; invalid UTF-8 becomes U+FFFD
	return append(dst, b...)
}

func appendValue(dst []byte, v any) []byte {
	switch t := v.(type) {
	case string:
		return appendString(dst, t)
	case time.Duration:
		return appendString(dst, t.String())
	case time.Time:
		return appendString(dst, t.UTC().Format(time.RFC3339Nano))
	}
	b, err := json.Marshal(v)
	if err != nil {
		return appendString(dst, fmt.Sprint(v))
	}
	return append(dst, b...)
}

// Close writes what is queued and closes the output.
func (h *Handler) Close(ctx context.Context) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	close(h.queue)
	h.mu.Unlock()
	select {
	case <-h.done:
	case <-ctx.Done():
		return fmt.Errorf("stdio: flush: %w", ctx.Err())
	}
	if h.closer != nil {
		return h.closer.Close()
	}
	return nil
}
