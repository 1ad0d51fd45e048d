// Package rbac is the rbac adapter: a check handler whose policies are CEL conditions
// over the request's attributes, with the ALLOW and DENY actions of Istio's AuthorizationPolicy.
//
// With action ALLOW a request is allowed when at least one policy matches, and denied
// otherwise. With action DENY a request is denied when at least one policy matches,
// and allowed otherwise.
//
// A condition that reads a missing attribute (an absent header, a request without a
// principal) is simply false: a DENY policy on a missing value does not match, so a
// DENY condition that must catch a missing value tests for it (the README shows
// how; Istio's notValues would match there). A condition whose evaluation fails for another reason (ip() of a malformed
// address, a runtime type error) is counted as an error and fails closed whatever
// the action: under ALLOW the failed policy grants nothing (another policy may still
// allow), under DENY the failed policy denies, as if it had matched. An answer that
// a failure decided is never cached; one that another policy's match decided is,
// since the same attribute values fail the same way.
package rbac

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/templates"
	"github.com/sluicemesh/sluice/templates/authorization"
	"github.com/sluicemesh/sluice/templates/metric"
)

// Name is the adapter's name in a Handler's spec.adapter.
const Name = "rbac"

// Actions, as written in params.action.
const (
	Allow = "ALLOW"
	Deny  = "DENY"
)

// Defaults of an rbac handler's params.
const (
	DefaultValidDuration = 5 * time.Second
)

// errorLogInterval bounds how often a failing policy is logged: it fails on the request
// path, possibly on every request.
const errorLogInterval = 10 * time.Second

// Params configure an rbac handler.
type Params struct {
	// Action is ALLOW (the default: allow only what some policy matches) or DENY
	// (deny what some policy matches).
	Action string `yaml:"action"`
	// Policies are tried in order.
	Policies []Policy `yaml:"policies"`
	// ValidDuration is how long the core's check cache may reuse an answer for
	// requests with the same values of the attributes the policies read; "0s"
	// disables caching. Default 5s.
	ValidDuration time.Duration `yaml:"validDuration"`
	// AllowHeaders are added to the upstream request of every request the handler
	// allows, after those of the policy that allowed it, if any.
	AllowHeaders []authorization.Header `yaml:"allowHeaders"`
}

// Policy is one named condition.
type Policy struct {
	// Name identifies the policy in denials and logs.
	Name string `yaml:"name"`
	// Condition is a CEL expression over attributes that yields a bool, such as
	// `source.principal == "spiffe://cluster.local/ns/shop/sa/frontend" && request.method in ["GET", "HEAD"]`.
	Condition string `yaml:"condition"`
	// Headers are added to the answer this policy decides: with action ALLOW, to the
	// upstream request it allows (so that the service can tell which policy let the
	// request in); with action DENY, to the response of the request it denies.
	Headers []authorization.Header `yaml:"headers"`
}

var policyName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._:/-]{0,126}[A-Za-z0-9])?$`)

var _ adapters.ExprParams = (*Params)(nil)

// Validate implements adapters.Params. The conditions are compiled by
// ValidateExprs, Bind and New, which have a compiler.
func (p *Params) Validate() error {
	var errs []error // every problem at once, for sluice validate
	if _, err := parseAction(p.Action); err != nil {
		errs = append(errs, adapters.Errorf("action", "%v", err))
	}
	if len(p.Policies) == 0 {
		errs = append(errs, adapters.Errorf("policies", "at least one policy is required"))
	}
	seen := map[string]int{}
	for i, pol := range p.Policies {
		path := fmt.Sprintf("policies[%d]", i)
		if !policyName.MatchString(pol.Name) {
			errs = append(errs, adapters.Errorf(path+".name", "%q is not a policy name (1 to 128 letters, digits and . _ : / -, starting and ending with a letter or digit)", pol.Name))
		} else if j, dup := seen[pol.Name]; dup {
			errs = append(errs, adapters.Errorf(path+".name", "policy %q is also policies[%d]", pol.Name, j))
		} else {
			seen[pol.Name] = i
		}
		if strings.TrimSpace(pol.Condition) == "" {
			errs = append(errs, adapters.Errorf(path+".condition", "a condition is required (write true to match every request)"))
		}
		if field, err := authorization.CheckHeaders(pol.Headers); err != nil {
			errs = append(errs, adapters.Errorf(path+".headers"+field, "%v", err))
		}
	}
	if p.ValidDuration < 0 {
		errs = append(errs, adapters.Errorf("validDuration", "must not be negative"))
	}
	if field, err := authorization.CheckHeaders(p.AllowHeaders); err != nil {
		errs = append(errs, adapters.Errorf("allowHeaders"+field, "%v", err))
	}
	return errors.Join(errs...)
}

// parseAction reads an action, case-insensitively; "" is ALLOW.
func parseAction(s string) (deny bool, err error) {
	switch strings.ToUpper(s) {
	case "", Allow:
		return false, nil
	case Deny:
		return true, nil
	}
	return false, fmt.Errorf("action %q is not ALLOW or DENY", s)
}

// compile compiles every condition, reporting a bad one at its field path.
func compile(p *Params, c adapters.Compiler) ([]adapters.Predicate, error) {
	if c == nil {
		return nil, errors.New("rbac needs an expression compiler, and none was given")
	}
	return compileConditions(p, c, false)
}

// ValidateExprs implements adapters.ExprParams: every condition must compile.
// An empty one is Validate's to report.
func (p *Params) ValidateExprs(c adapters.Compiler) error {
	_, err := compileConditions(p, c, true)
	return err
}

// compileConditions compiles the policies' conditions, every one's error at once
// (for sluice validate), each at its field path; skipEmpty leaves out empty ones.
func compileConditions(p *Params, c adapters.Compiler, skipEmpty bool) ([]adapters.Predicate, error) {
	out := make([]adapters.Predicate, len(p.Policies))
	var errs []error
	for i, pol := range p.Policies {
		if skipEmpty && strings.TrimSpace(pol.Condition) == "" {
			continue
		}
		pred, err := c.CompileBool(pol.Condition)
		if err != nil {
			errs = append(errs, adapters.Errorf(fmt.Sprintf("policies[%d].condition", i), "%v", err))
			continue
		}
		out[i] = pred
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// Factory returns the rbac adapter's factory.
func Factory() *adapters.Factory {
	return &adapters.Factory{
		Name:      Name,
		Doc:       "allows or denies requests by policies written as CEL conditions over attributes",
		Templates: []string{templates.Authorization},
		InProcess: true,
		NewParams: func() adapters.Params { return &Params{Action: Allow, ValidDuration: DefaultValidDuration} },
		Bind: func(b adapters.Binding) (map[string]metric.Aggregation, error) {
			if b.Compiler == nil {
				return nil, nil // nothing to compile with; New compiles again
			}
			_, err := compile(b.Params.(*Params), b.Compiler)
			return nil, err
		},
		New: func(_ context.Context, env adapters.Env, p adapters.Params, _ adapters.Instances) (adapters.Handler, error) {
			return New(env, p.(*Params))
		},
	}
}

// Handler evaluates the policies of one rbac handler.
type Handler struct {
	env           adapters.Env
	deny          bool
	validDuration time.Duration
	policies      []policy
	reads         []string
	// allowHeaders go with an answer that no policy decided and that allows (action
	// DENY, nothing matched).
	allowHeaders []authorization.Header
	// upstream are the names of the headers an allowed request may get.
	upstream []string
}

type policy struct {
	name string
	pred adapters.Predicate
	// headers go with the answer this policy decides: its own, then, when that
	// answer allows, the handler's allowHeaders.
	headers []authorization.Header
	// lastLog is when the policy's failure was last logged (Unix nanoseconds).
	lastLog atomic.Int64
}

// New compiles the policies with env.Compiler.
func New(env adapters.Env, p *Params) (*Handler, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("rbac params: %w", err)
	}
	preds, err := compile(p, env.Compiler)
	if err != nil {
		return nil, fmt.Errorf("compile rbac policies: %w", err)
	}
	if env.Logger == nil {
		env.Logger = slog.New(slog.DiscardHandler)
	}
	if env.Stats == nil {
		env.Stats = adapters.DiscardStats{}
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	deny, _ := parseAction(p.Action) // Validate has checked it
	h := &Handler{env: env, deny: deny, validDuration: p.ValidDuration, policies: make([]policy, len(preds)), allowHeaders: slices.Clone(p.AllowHeaders)}
	for i, pred := range preds {
		h.policies[i].name = p.Policies[i].Name
		h.policies[i].pred = pred
		h.policies[i].headers = slices.Clone(p.Policies[i].Headers)
		if !deny {
			h.policies[i].headers = append(h.policies[i].headers, p.AllowHeaders...)
		}
		h.reads = append(h.reads, pred.Attributes()...)
	}
	// Under ALLOW a policy's headers go upstream with the requests it allows; under
	// DENY only allowHeaders do.
	upstream := [][]authorization.Header{p.AllowHeaders}
	if !deny {
		for _, pol := range p.Policies {
			upstream = append(upstream, pol.Headers)
		}
	}
	h.upstream = authorization.HeaderNames(upstream...)
	slices.Sort(h.reads)
	h.reads = slices.Compact(h.reads)
	return h, nil
}

// ReadsAttributes implements adapters.AttributeReader: the union of the attributes the
// policies read, so that the check cache never reuses an answer for a request that
// differs in one of them.
func (h *Handler) ReadsAttributes() []string { return slices.Clone(h.reads) }

// UpstreamHeaderNames implements authorization.UpstreamHeaders: the headers of the
// policies (under ALLOW) and allowHeaders, the headers an allowed request may get.
func (h *Handler) UpstreamHeaderNames() []string { return slices.Clone(h.upstream) }

// Authorize implements adapters.AuthorizationHandler.
func (h *Handler) Authorize(_ context.Context, _ *authorization.Instance, attrs adapters.Attributes) (authorization.Result, error) {
	failed := -1 // the first policy whose evaluation failed
	for i := range h.policies {
		pol := &h.policies[i]
		// The SDK's predicates answer false, without an error, for a missing
		// attribute: an error here is a condition that cannot be evaluated.
		match, err := pol.pred.Eval(attrs)
		if err != nil {
			h.failure(pol, err)
			if failed < 0 {
				failed = i
			}
			continue
		}
		if !match {
			continue
		}
		if h.deny {
			r := h.denial(fmt.Sprintf("denied by rbac %s: policy %q matches", h.name(), pol.name), h.validDuration)
			r.Headers = slices.Clone(pol.headers)
			return r, nil
		}
		return h.allow(pol.headers), nil
	}
	switch {
	case failed >= 0 && h.deny:
		return h.denial(fmt.Sprintf("denied by rbac %s: policy %q could not be evaluated", h.name(), h.policies[failed].name), 0), nil
	case failed >= 0:
		return h.denial(fmt.Sprintf("denied by rbac %s: no policy allows the request (policy %q could not be evaluated)", h.name(), h.policies[failed].name), 0), nil
	case h.deny:
		return h.allow(h.allowHeaders), nil
	}
	return h.denial(fmt.Sprintf("denied by rbac %s: no policy allows the request", h.name()), h.validDuration), nil
}

// allow allows a request, adding headers; the caller gets a copy of its own.
func (h *Handler) allow(headers []authorization.Header) authorization.Result {
	return authorization.Result{Code: codes.OK, ValidDuration: h.validDuration, Headers: slices.Clone(headers)}
}

func (h *Handler) denial(msg string, valid time.Duration) authorization.Result {
	return authorization.Result{Code: codes.PermissionDenied, Message: msg, HTTPStatus: 403, ValidDuration: valid}
}

func (h *Handler) name() string {
	if h.env.Name == "" {
		return Name
	}
	return h.env.Name
}

// failure counts a failed evaluation and logs it, at most once per errorLogInterval
// per policy.
func (h *Handler) failure(pol *policy, err error) {
	h.env.Stats.Error("policy_eval")
	now := h.env.Now().UnixNano()
	last := pol.lastLog.Load()
	if now-last < int64(errorLogInterval) || !pol.lastLog.CompareAndSwap(last, now) {
		return
	}
	h.env.Logger.Warn("rbac policy evaluation failed; failing closed", "policy", pol.name, "err", err)
}

// Close implements adapters.Handler; an rbac handler holds nothing.
func (h *Handler) Close(context.Context) error { return nil }

var (
	_ adapters.AuthorizationHandler = (*Handler)(nil)
	_ adapters.AttributeReader      = (*Handler)(nil)
	_ authorization.UpstreamHeaders = (*Handler)(nil)
)
