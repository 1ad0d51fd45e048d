// Package list is the list adapter: a check handler that allows or denies a request by
// looking its instance's value up in a list of strings, IP prefixes or regexes.
//
// The entries come from the params (overrides) and from a file, one entry per line,
// that is re-read when it changes. An allow-list denies what it does not hold; a
// deny-list (blacklist: true) denies what it holds. A request whose instance has no
// value (nil) is denied by an allow-list and allowed by a deny-list: there is
// nothing to find in the list. A value that cannot be compared with the entries (not
// an IP address for an IP_ADDRESSES list, or a map) is denied by both, so that bad
// input never slips past a deny-list.
package list

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/fsnotify/fsnotify"
	"google.golang.org/grpc/codes"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/templates"
	"github.com/sluicemesh/sluice/templates/authorization"
	"github.com/sluicemesh/sluice/templates/metric"
)

// Name is the adapter's name in a Handler's spec.adapter.
const Name = "list"

// Defaults of a list's params.
const (
	DefaultValidDuration   = 5 * time.Second
	DefaultRefreshInterval = time.Minute
)

// maxShownValue bounds how much of the offending value a denial's message quotes.
const maxShownValue = 128

// Params configure a list handler.
type Params struct {
	// EntryType is STRINGS (the default), CASE_INSENSITIVE_STRINGS, IP_ADDRESSES
	// (addresses and CIDR prefixes, IPv4 and IPv6) or REGEX (RE2 expressions that must
	// match the whole value).
	EntryType string `yaml:"entryType"`
	// Blacklist makes the list a deny-list; by default it is an allow-list.
	Blacklist bool `yaml:"blacklist"`
	// Overrides are entries given inline, added to those of the file.
	Overrides []string `yaml:"overrides"`
	// File holds further entries, one per line; blank lines and lines starting with
	// '#' are skipped. It is re-read when it changes (written in place, renamed into
	// place, or swapped as a mounted ConfigMap), and a new version is taken once two
	// reads 100ms apart find it unchanged, so that a file caught half-written is not;
	// a version with a bad entry, or a file that keeps changing, is logged and
	// counted, and the last good list keeps serving. A relative path is relative to
	// the directory of the config file that names it (see ResolveFiles).
	File string `yaml:"file"`
	// RefreshInterval re-reads the file periodically too, in case a change was not
	// reported by the file system. Default 1m; "0s" turns polling off.
	RefreshInterval time.Duration `yaml:"refreshInterval"`
	// ValidDuration is how long the core's check cache may reuse an answer for the
	// same value; "0s" disables caching. Default 5s, which also bounds how long a
	// cached answer can outlive a change of the file.
	ValidDuration time.Duration `yaml:"validDuration"`
	// AllowHeaders are added to the upstream request of every request the list
	// allows.
	AllowHeaders []authorization.Header `yaml:"allowHeaders"`
}

// Validate implements adapters.Params.
var _ adapters.FileParams = (*Params)(nil)

// ResolveFiles makes a relative File relative to dir, the directory of the config
// file that names it.
func (p *Params) ResolveFiles(dir string) {
	if p.File != "" && !filepath.IsAbs(p.File) {
		p.File = filepath.Join(dir, p.File)
	}
}

func (p *Params) Validate() error {
	var errs []error // every problem at once, for sluice validate
	t, err := ParseEntryType(p.EntryType)
	if err != nil {
		errs = append(errs, adapters.Errorf("entryType", "%v", err))
	}
	if len(p.Overrides) == 0 && p.File == "" {
		errs = append(errs, adapters.Errorf("overrides", "a list needs entries: give overrides, a file, or both"))
	}
	for i, e := range p.Overrides {
		if err != nil {
			break // entries are checked by their type
		}
		if err := checkEntry(t, e); err != nil {
			errs = append(errs, adapters.Errorf(fmt.Sprintf("overrides[%d]", i), "%v", err))
		}
	}
	if p.RefreshInterval < 0 || (p.RefreshInterval > 0 && p.RefreshInterval < 100*time.Millisecond) {
		errs = append(errs, adapters.Errorf("refreshInterval", "must be 0s (no polling) or at least 100ms"))
	}
	if p.ValidDuration < 0 {
		errs = append(errs, adapters.Errorf("validDuration", "must not be negative"))
	}
	if field, err := authorization.CheckHeaders(p.AllowHeaders); err != nil {
		errs = append(errs, adapters.Errorf("allowHeaders"+field, "%v", err))
	}
	return errors.Join(errs...)
}

// Factory returns the list adapter's factory.
func Factory() *adapters.Factory {
	return &adapters.Factory{
		Name:      Name,
		Doc:       "allows or denies by looking a value up in a list of strings, IP prefixes or regexes, inline or from a watched file",
		Templates: []string{templates.Authorization},
		InProcess: true,
		NewParams: func() adapters.Params {
			return &Params{EntryType: "STRINGS", RefreshInterval: DefaultRefreshInterval, ValidDuration: DefaultValidDuration}
		},
		Bind: func(adapters.Binding) (map[string]metric.Aggregation, error) { return nil, nil },
		New: func(ctx context.Context, env adapters.Env, p adapters.Params, _ adapters.Instances) (adapters.Handler, error) {
			return New(ctx, env, p.(*Params))
		},
		Preflight: func(p adapters.Params) error { return preflight(p.(*Params)) },
	}
}

// preflight reads and parses the list's file as New would, without watching it,
// so that sluice validate reports a missing file or a bad entry at its line.
func preflight(p *Params) error {
	if p.File == "" {
		return nil
	}
	t, err := ParseEntryType(p.EntryType)
	if err != nil {
		return adapters.Errorf("entryType", "%v", err)
	}
	data, _, err := readFile(p.File)
	if err != nil {
		return adapters.Errorf("file", "%v", err)
	}
	entries, errs := parseFile(p.File, data, t)
	if len(errs) > 0 {
		for i, err := range errs {
			errs[i] = &adapters.FieldError{Path: "file", Err: err} // each at its own line of the file
		}
		return errors.Join(errs...)
	}
	if _, err := newMatcher(t, append(entries, p.Overrides...)); err != nil {
		return adapters.Errorf("file", "build list from %s: %v", p.File, err)
	}
	return nil
}

// Handler answers checks from the current version of its list.
type Handler struct {
	env           adapters.Env
	typ           EntryType
	blacklist     bool
	validDuration time.Duration
	allowHeaders  []authorization.Header
	// upstream are the names of allowHeaders.
	upstream  []string
	overrides []string
	// file is the absolute path of the list file, "" without one.
	file string

	cur atomic.Pointer[matcher]

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// New builds a list: it reads the file, if any, and starts watching it. A file that
// cannot be read or holds a bad entry fails the handler, so that a config naming it
// is rejected with the file:line of the entry.
func New(_ context.Context, env adapters.Env, p *Params) (*Handler, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("list params: %w", err)
	}
	if env.Logger == nil {
		env.Logger = slog.New(slog.DiscardHandler)
	}
	if env.Stats == nil {
		env.Stats = adapters.DiscardStats{}
	}
	t, _ := ParseEntryType(p.EntryType) // Validate has checked it
	h := &Handler{
		env:           env,
		typ:           t,
		blacklist:     p.Blacklist,
		validDuration: p.ValidDuration,
		allowHeaders:  slices.Clone(p.AllowHeaders),
		upstream:      authorization.HeaderNames(p.AllowHeaders),
		overrides:     append([]string(nil), p.Overrides...),
	}
	if p.File == "" {
		m, err := newMatcher(t, h.overrides)
		if err != nil {
			return nil, fmt.Errorf("build list: %w", err)
		}
		h.cur.Store(m)
		return h, nil
	}
	abs, err := filepath.Abs(p.File)
	if err != nil {
		return nil, fmt.Errorf("list file %s: %w", p.File, err)
	}
	h.file = abs
	// Watch before the first read, so that a change between the two is not lost.
	w, err := fsnotify.NewWatcher()
	if err == nil {
		if err = w.Add(filepath.Dir(abs)); err != nil {
			w.Close()
			w = nil
		}
	}
	if err != nil {
		if p.RefreshInterval == 0 {
			return nil, fmt.Errorf("watch directory of list file %s (and polling is off): %w", abs, err)
		}
		env.Stats.Error("list_watch")
		env.Logger.Warn("cannot watch list file; polling it instead", "file", abs, "every", p.RefreshInterval, "err", err)
	}
	m, digest, err := h.loadFile()
	if err != nil {
		if w != nil {
			w.Close()
		}
		return nil, fmt.Errorf("load list file: %w", err)
	}
	h.cur.Store(m)
	h.stop, h.done = make(chan struct{}), make(chan struct{})
	go h.watch(w, p.RefreshInterval, digest)
	return h, nil
}

// Authorize implements adapters.AuthorizationHandler: it looks inst.Value up.
func (h *Handler) Authorize(_ context.Context, inst *authorization.Instance, _ adapters.Attributes) (authorization.Result, error) {
	var v any
	if inst != nil {
		v = inst.Value
	}
	if v == nil {
		if h.blacklist {
			return h.allow(), nil
		}
		return h.deny("the request has no value to look up in the allow-list"), nil
	}
	s, ok := valueString(v)
	if !ok {
		return h.deny(fmt.Sprintf("a %T value cannot be looked up in a %v list", v, h.typ)), nil
	}
	switch h.cur.Load().lookup(s) {
	case listed:
		if h.blacklist {
			return h.deny(quote(s) + " is on the deny-list"), nil
		}
		return h.allow(), nil
	case unlisted:
		if h.blacklist {
			return h.allow(), nil
		}
		return h.deny(quote(s) + " is not on the allow-list"), nil
	}
	return h.deny(quote(s) + " is not an IP address"), nil
}

// UpstreamHeaderNames implements authorization.UpstreamHeaders: the names of
// allowHeaders, which the requests the list allows get.
func (h *Handler) UpstreamHeaderNames() []string { return slices.Clone(h.upstream) }

// allow allows a request, adding the handler's allowHeaders; the caller gets a copy
// of its own.
func (h *Handler) allow() authorization.Result {
	return authorization.Result{Code: codes.OK, ValidDuration: h.validDuration, Headers: slices.Clone(h.allowHeaders)}
}

// deny answers with the handler's name, so that an operator can tell which list
// refused the request.
func (h *Handler) deny(why string) authorization.Result {
	return authorization.Result{
		Code:          codes.PermissionDenied,
		Message:       "denied by list " + h.name() + ": " + why,
		HTTPStatus:    403,
		ValidDuration: h.validDuration,
	}
}

func (h *Handler) name() string {
	if h.env.Name == "" {
		return Name
	}
	return h.env.Name
}

// valueString turns the instance's value into the string the list compares: strings
// as they are, integers in decimal, booleans as true and false.
func valueString(v any) (string, bool) {
	switch t := v.(type) {
	case string:
		return t, true
	case int64:
		return strconv.FormatInt(t, 10), true
	case int:
		return strconv.Itoa(t), true
	case bool:
		return strconv.FormatBool(t), true
	}
	return "", false
}

// quote quotes a value for a message, cut at maxShownValue bytes on a rune boundary:
// the value comes from the request and the message goes back into a response.
func quote(s string) string {
	if len(s) <= maxShownValue {
		return strconv.Quote(s)
	}
	cut := maxShownValue
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "…"
}

// Close stops watching the file.
func (h *Handler) Close(ctx context.Context) error {
	if h.stop == nil {
		return nil
	}
	h.closeOnce.Do(func() { close(h.stop) })
	select {
	case <-h.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("list: stop watching %s: %w", h.file, ctx.Err())
	}
}

// Entries returns the number of entries of the list in use, for tests and logs.
func (h *Handler) Entries() int { return h.cur.Load().entries }

var (
	_ adapters.AuthorizationHandler = (*Handler)(nil)
	_ authorization.UpstreamHeaders = (*Handler)(nil)
)
