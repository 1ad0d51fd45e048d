// Package adapters is the adapter SDK: the factory every adapter provides, the handler
// interfaces per template, the environment the core gives handlers, and the registry.
package adapters

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/sluicemesh/sluice/templates/logentry"
	"github.com/sluicemesh/sluice/templates/metric"
)

// Params are an adapter's own settings, decoded strictly from a Handler's spec.params.
type Params interface {
	// Validate checks the params. Return a *FieldError to point at the offending field.
	Validate() error
}

// FieldError is a params error located at a field path such as "metrics[2].buckets",
// so that the config loader can report the file and line of that field.
type FieldError struct {
	Path string
	Err  error
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Err.Error() }

func (e *FieldError) Unwrap() error { return e.Err }

// Errorf returns a FieldError for path.
func Errorf(path, format string, args ...any) *FieldError {
	return &FieldError{Path: path, Err: fmt.Errorf(format, args...)}
}

// Instances are the instances routed to one handler by the rules of a config version.
type Instances struct {
	Metrics []metric.Instance
	Logs    []logentry.Instance
}

// Stats counts what goes wrong in a handler; the core exports the counts as
// sluice_adapter_errors_total and sluice_instances_dropped_total with the handler's labels.
type Stats interface {
	// Error counts a failed operation, such as a failed export, by reason.
	Error(reason string)
	// Dropped counts instances the handler accepted but could not deliver.
	Dropped(n int, reason string)
}

// Env is what the core gives a handler when it builds one.
type Env struct {
	// Name is the handler's qualified name, NAMESPACE/NAME.
	Name   string
	Logger *slog.Logger
	Stats  Stats
	// Metrics reads the aggregates of the handler's metric instances.
	Metrics metric.Source
}

// Handler is a configured adapter. Besides Close, a handler implements the interfaces
// of the templates it accepts (MetricHandler, LogHandler). A handler that also
// implements prometheus.Collector is registered on the admin /metrics endpoint.
type Handler interface {
	// Close flushes what the handler holds and releases it. The core calls Close once,
	// after the last delivery to the handler.
	Close(ctx context.Context) error
}

// MetricHandler receives metric instances as aggregates kept by the core.
type MetricHandler interface {
	Handler
	// Aggregation tells the core how to aggregate inst for this handler. It is called
	// for every bound metric instance while the config is validated; an error rejects
	// the config.
	Aggregation(inst metric.Instance) (metric.Aggregation, error)
}

// LogHandler receives log entries.
type LogHandler interface {
	Handler
	// HandleLogs is called on a shard goroutine with the entries of one batch. It must
	// not block: queue the entries (counting what a full queue drops) and return.
	// The slice is reused after the call; the entries themselves may be kept.
	HandleLogs(entries []logentry.Entry)
}

// Factory builds handlers of one adapter. Every adapter package exports one.
type Factory struct {
	// Name is the adapter's name, as written in a Handler's spec.adapter.
	Name string
	Doc  string
	// Templates lists the templates the adapter's handlers accept.
	Templates []string
	// NewParams returns a pointer to params holding the defaults.
	NewParams func() Params
	// Bind checks, without side effects, that params can serve the instances: for a
	// metric handler it returns the aggregation of every metric instance.
	Bind func(params Params, inst Instances) (map[string]metric.Aggregation, error)
	// New builds a running handler.
	New func(ctx context.Context, env Env, params Params, inst Instances) (Handler, error)
}

// Accepts reports whether the adapter accepts template t.
func (f *Factory) Accepts(t string) bool {
	for _, x := range f.Templates {
		if x == t {
			return true
		}
	}
	return false
}

// Registry is the set of adapters available to a config.
type Registry struct {
	byName map[string]*Factory
}

// NewRegistry returns a registry of the given factories.
func NewRegistry(factories ...*Factory) (*Registry, error) {
	r := &Registry{byName: map[string]*Factory{}}
	for _, f := range factories {
		if f.Name == "" || f.NewParams == nil || f.New == nil {
			return nil, fmt.Errorf("adapter factory %q is incomplete", f.Name)
		}
		if _, dup := r.byName[f.Name]; dup {
			return nil, fmt.Errorf("adapter %q registered twice", f.Name)
		}
		r.byName[f.Name] = f
	}
	return r, nil
}

// Get returns the named adapter.
func (r *Registry) Get(name string) (*Factory, bool) {
	f, ok := r.byName[name]
	return f, ok
}

// Names returns the adapter names, sorted.
func (r *Registry) Names() []string {
	out := make([]string, 0, len(r.byName))
	for n := range r.byName {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// String lists the adapters.
func (r *Registry) String() string { return strings.Join(r.Names(), ", ") }
