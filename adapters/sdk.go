// Package adapters is the adapter SDK: the factory every adapter provides, the handler
// interfaces per template, the environment the core gives handlers, and the registry.
package adapters

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/sluicemesh/sluice/templates/authorization"
	"github.com/sluicemesh/sluice/templates/logentry"
	"github.com/sluicemesh/sluice/templates/metric"
	"github.com/sluicemesh/sluice/templates/quota"
)

// Params are an adapter's own settings, decoded strictly from a Handler's spec.params.
//
// /api/config shows them to anyone who reaches the admin port. Fields named like
// secrets (password, token, apiKey, ...) are hidden there; tag any other field
// that holds one `sluice:"secret"` (a signing key, a seed) and it is hidden too,
// at any depth.
type Params interface {
	// Validate checks the params. Return a *FieldError to point at the offending field.
	Validate() error
}

// FileParams is implemented by params that name files. The config loader calls
// ResolveFiles with the directory of the config file that holds the params, so
// that a relative path names a file beside the config, as it does in Prometheus's
// config, not one wherever the server happened to be started.
type FileParams interface {
	Params
	// ResolveFiles makes the relative paths of the params relative to dir.
	ResolveFiles(dir string)
}

// ExprParams is implemented by params that hold expressions (CEL conditions),
// which Validate cannot compile without a compiler. The config loader calls
// ValidateExprs with its compiler beside Validate, so that a config's expression
// errors are reported in the same run as its params' other errors (sluice
// validate). Expressions Validate reports as missing are left to it. Bind or New
// still compiles them for use.
type ExprParams interface {
	Params
	ValidateExprs(c Compiler) error
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
	// Authorizations and Quotas are the qualified names of the check instances.
	Authorizations []string
	Quotas         []string
	// QuotaDimensions are the dimension names of each quota instance of Quotas, by
	// qualified name, for params that name dimensions (quota overrides).
	QuotaDimensions map[string][]string
}

// Attributes gives a check handler the request's attributes by name (string, int64,
// bool, time.Duration, time.Time or map[string]string values).
type Attributes interface {
	Get(name string) (any, bool)
}

// Predicate is a compiled boolean expression over attributes.
type Predicate interface {
	// Eval evaluates the predicate; a missing attribute makes it false.
	Eval(attrs Attributes) (bool, error)
	// Attributes lists the attribute names it reads; the check cache keys on them.
	Attributes() []string
}

// Compiler compiles CEL expressions over Sluice's attribute vocabulary, for handlers
// whose params hold expressions (rbac policies).
type Compiler interface {
	CompileBool(src string) (Predicate, error)
}

// Binding is what Factory.Bind checks: params against the instances a config routes
// to the handler.
type Binding struct {
	Params    Params
	Instances Instances
	Compiler  Compiler
}

// Stats counts what goes wrong in a handler; the core exports the counts as
// sluice_adapter_errors_total and sluice_instances_dropped_total with the handler's labels.
type Stats interface {
	// Error counts a failed operation, such as a failed export, by reason.
	Error(reason string)
	// Dropped counts instances the handler accepted but could not deliver.
	Dropped(n int, reason string)
}

// DiscardStats counts nothing: the Stats of a handler built without one (in
// tests and tools).
type DiscardStats struct{}

// Error implements Stats.
func (DiscardStats) Error(string) {}

// Dropped implements Stats.
func (DiscardStats) Dropped(int, string) {}

// Env is what the core gives a handler when it builds one.
type Env struct {
	// Name is the handler's qualified name, NAMESPACE/NAME.
	Name   string
	Logger *slog.Logger
	Stats  Stats
	// Metrics reads the aggregates of the handler's metric instances.
	Metrics metric.Source
	// Compiler compiles expressions found in params.
	Compiler Compiler
	// Now is the handler's clock; tests inject one.
	Now func() time.Time
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

// AuthorizationHandler answers policy checks (the authorization template).
type AuthorizationHandler interface {
	Handler
	// Authorize decides one request. An error is a failure of the handler, not a
	// denial; the core counts it and answers per the rule's fail policy. inst and
	// attrs are valid only until Authorize returns: their strings may view the
	// request's bytes, which the check listener reuses for the next request, so a
	// handler that keeps a value keeps a copy (strings.Clone).
	Authorize(ctx context.Context, inst *authorization.Instance, attrs Attributes) (authorization.Result, error)
}

// AttributeReader is implemented by check handlers that read attributes beyond their
// instances (an rbac handler's policies). The check cache keys results on the values
// of these attributes too, so that a cached answer is never reused for a request it
// would not fit.
type AttributeReader interface {
	ReadsAttributes() []string
}

// QuotaHandler enforces quotas (the quota template) and serves the rate-limit service
// as a quota.RateLimiter.
type QuotaHandler interface {
	Handler
	quota.RateLimiter
	// Quota charges amount against the quota its params give inst, at now. inst
	// and its Dimensions map belong to the caller, which reuses them once Quota
	// returns: a handler that keeps a dimension keeps the string, not the map.
	Quota(ctx context.Context, now time.Time, inst *quota.Instance, amount uint64) (quota.Decision, error)
}

// Factory builds handlers of one adapter. Every adapter package exports one.
type Factory struct {
	// Name is the adapter's name, as written in a Handler's spec.adapter.
	Name string
	Doc  string
	// Templates lists the templates the adapter's handlers accept.
	Templates []string
	// InProcess says that the handlers decide checks in memory, in microseconds,
	// never waiting on the network or a disk: the lean check listener then runs
	// their checks on the connection's reader instead of a goroutine of their own.
	// Leave it false for anything that may block (a remote backend). Inline
	// checks reuse their connection's request buffer: a handler keeps nothing of
	// a request it has not copied (see AuthorizationHandler.Authorize).
	InProcess bool
	// NewParams returns a pointer to params holding the defaults.
	NewParams func() Params
	// Bind checks, without side effects, that params can serve the instances: for a
	// metric handler it returns the aggregation of every metric instance. Optional.
	Bind func(b Binding) (map[string]metric.Aggregation, error)
	// New builds a running handler.
	New func(ctx context.Context, env Env, params Params, inst Instances) (Handler, error)
	// Preflight checks, for sluice validate, what a handler needs at start beyond
	// its config (a list's file), without side effects. Optional. The server does
	// not call it when it loads a config: a file being rewritten must not refuse a
	// reload that does not rebuild its handler.
	Preflight func(params Params) error
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
