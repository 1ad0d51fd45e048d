package check

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/mixer/envoy"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/mixer/h2unary"
	"github.com/sluicemesh/sluice/templates/authorization"
)

// Check implements envoy.service.auth.v3.Authorization.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	st := s.scratch.Get().(*requestState)
	defer s.scratch.Put(st)
	st.fields.SetRequest(req)
	resp, _, outcome, err := s.check(ctx, st)
	s.metrics.observe("ext_authz", outcome, time.Since(start))
	return resp, err
}

// checkEncoded answers a CheckRequest from its encoding, for the lean listener:
// it reads the fields a check uses without building the message. msg must not
// change until the call returns.
func (s *Server) checkEncoded(ctx context.Context, msg, dst []byte) ([]byte, error) {
	return s.answerEncoded(ctx, "ext_authz", "CheckRequest", msg, dst,
		func(st *requestState, b []byte) error { return st.fields.Unmarshal(b) },
		func(ctx context.Context, st *requestState, dst []byte) ([]byte, string, error) {
			resp, wire, outcome, err := s.check(ctx, st)
			switch {
			case err != nil:
				return nil, outcome, err
			case wire != nil:
				return append(dst, wire...), outcome, nil
			}
			out, err := h2unary.AppendMessage(dst, resp)
			return out, outcome, err
		})
}

// check answers the request in st.fields. An answer shared by many requests comes
// with its encoding (wire, nil for the others); neither may be changed.
func (s *Server) check(ctx context.Context, st *requestState) (resp *authv3.CheckResponse, wire []byte, outcome string, err error) {
	if !st.fields.HasAttributes() {
		return nil, nil, "invalid", status.Error(codes.InvalidArgument, "CheckRequest has no attributes")
	}
	// Headers in header_map count too (every entry, a repeated header as often as
	// it came), though Decode reads them only below.
	if st.fields.NumHeaders() > envoy.MaxHeaders {
		return nil, nil, "invalid", status.Errorf(codes.InvalidArgument, "CheckRequest has more than %d headers", envoy.MaxHeaders)
	}
	lease := s.opts.Dispatcher.Lease()
	if lease == nil {
		return nil, nil, "unavailable", status.Error(codes.Unavailable, "no config applied yet")
	}
	defer lease.Release()
	p := s.planFor(lease)

	st.bag.Reset()
	now := s.opts.Now()
	s.dec.Decode(&st.fields, now, &st.bag)
	st.act.Reset(&st.bag)

	// Policy: from the cache where the same attribute values were decided before.
	allowed := authorization.Result{Code: codes.OK}
	rule := ""
	if p.hasAuthz {
		var hit bool
		if !p.uncached {
			st.key = p.cacheKey(st.key[:0], &st.bag)
			allowed, rule, hit = p.cache.get(st.key, now)
		}
		if !hit {
			var err error
			allowed, rule, err = s.authorize(ctx, p, st)
			if err != nil {
				return nil, nil, "error", err
			}
			if allowed.ValidDuration > 0 && !p.uncached {
				p.cache.put(st.key, allowed, rule, now.Add(allowed.ValidDuration))
			}
		}
	}
	if !allowed.Allowed() {
		return denied(allowed, rule), nil, "denied", nil
	}
	// Quota is charged on every request and never cached.
	q, qrule, err := s.chargeQuotas(ctx, p, st, now)
	if err != nil {
		return nil, nil, "error", err
	}
	if q != nil && !q.Allowed() {
		if q.Code != codes.ResourceExhausted {
			return denied(*q, qrule), nil, "denied", nil
		}
		return denied(*q, qrule), nil, "quota_exceeded", nil
	}
	// The answer sets the headers of the handlers that allowed it and removes the
	// client's copies of those other handlers may set: a cached answer too.
	answers := p.allowed
	if len(allowed.Headers) == 0 {
		return answers.plain, answers.plainWire, "allowed", nil
	}
	return okAnswer(allowed, answers.guarded), nil, "allowed", nil
}

// authorize runs every matching rule's policy handlers. The first denial wins; the
// headers of the allowing results add up; the result holds for the shortest validity.
func (s *Server) authorize(ctx context.Context, p *plan, st *requestState) (authorization.Result, string, error) {
	out := authorization.Result{Code: codes.OK, ValidDuration: time.Duration(1<<63 - 1)}
	for i := range p.rules {
		r := &p.rules[i]
		if len(r.authz) == 0 {
			continue
		}
		if ok, err := s.matches(r, st); err != nil {
			return s.ruleFailed(r, "match", err), r.name, nil
		} else if !ok {
			continue
		}
		for _, t := range r.authz {
			if t.err != nil {
				return out, "", t.err
			}
			inst, err := s.authzInstance(t, st)
			if err != nil {
				return s.ruleFailed(r, "instance "+t.inst, err), r.name, nil
			}
			res, err := t.h.Authorize(ctx, inst, st.act)
			if err != nil {
				s.metrics.handlerErrors.WithLabelValues(t.handler).Inc()
				s.log.Warn("policy handler failed", "handler", t.handler, "rule", r.name, "err", err)
				return out, "", status.Errorf(codes.Unavailable, "policy handler %s failed: %v", t.handler, err)
			}
			if res.ValidDuration < out.ValidDuration {
				out.ValidDuration = res.ValidDuration
			}
			if !res.Allowed() {
				res.ValidDuration = out.ValidDuration
				return res, r.name, nil
			}
			out.Headers = append(out.Headers, res.Headers...)
		}
	}
	return out, "", nil
}

// ruleFailed denies a check whose rule could not be evaluated on this request: its
// match or one of its instances failed with an error other than a missing
// attribute (which reads as no match, or no value). Skipping the rule instead
// would let the request past the very check the rule exists for, as a deny-list
// given no value allows. The denial names the rule and the error, is counted, and
// is never cached (no validity): the next request is evaluated afresh.
func (s *Server) ruleFailed(r *rulePlan, what string, err error) authorization.Result {
	s.metrics.ruleErrors.WithLabelValues(r.name).Inc()
	return authorization.Result{Code: codes.PermissionDenied, Message: fmt.Sprintf("%s failed: %v", what, err)}
}

// leaseView is what the checks need of a lease.
type leaseView interface {
	Handler(name string) (adapters.Handler, bool)
}

// handlerAs returns a leased handler as the interface of the template it serves; a
// config the loader accepted always has both, so a miss is an internal error.
func handlerAs[T any](lease leaseView, name, role string) (T, error) {
	var zero T
	h, ok := lease.Handler(name)
	if !ok {
		return zero, status.Errorf(codes.Internal, "handler %s is not running", name)
	}
	t, ok := h.(T)
	if !ok {
		return zero, status.Errorf(codes.Internal, "handler %s does not %s", name, role)
	}
	return t, nil
}

// matches reports whether a rule applies to the request. A match that reads an
// attribute the request lacks does not apply; any other failure is returned, for
// the caller to deny (see ruleFailed).
func (s *Server) matches(r *rulePlan, st *requestState) (bool, error) {
	if r.match == nil {
		return true, nil
	}
	ok, err := r.match.EvalBool(st.act)
	if err != nil && !errors.Is(err, expr.ErrMissing) {
		return false, err
	}
	return ok, nil
}

// authzInstance builds a rule's authorization instance. A value or property whose
// attributes are missing is left out, for the handler to judge; one that fails
// otherwise fails the instance.
func (s *Server) authzInstance(t authzTarget, st *requestState) (*authorization.Instance, error) {
	inst := &authorization.Instance{Name: t.inst}
	if t.value != nil {
		v, err := t.value.Eval(st.act)
		switch {
		case err == nil:
			inst.Value = v
		case !errors.Is(err, expr.ErrMissing):
			return nil, fmt.Errorf("value %s: %w", t.value.Source, err)
		}
	}
	if len(t.props) > 0 {
		inst.Properties = make(map[string]any, len(t.props))
		for _, pe := range t.props {
			v, err := pe.Expr.Eval(st.act)
			switch {
			case err == nil:
				inst.Properties[pe.Name] = v
			case !errors.Is(err, expr.ErrMissing):
				return nil, fmt.Errorf("property %s: %w", pe.Name, err)
			}
		}
	}
	return inst, nil
}

// chargeQuotas charges one unit of every matching quota; it returns the denial of the
// first exhausted one (RESOURCE_EXHAUSTED), or of a rule that failed (see
// ruleFailed), or nil.
func (s *Server) chargeQuotas(ctx context.Context, p *plan, st *requestState, now time.Time) (*authorization.Result, string, error) {
	for i := range p.rules {
		r := &p.rules[i]
		if len(r.quotas) == 0 {
			continue
		}
		if ok, err := s.matches(r, st); err != nil {
			res := s.ruleFailed(r, "match", err)
			return &res, r.name, nil
		} else if !ok {
			continue
		}
		for _, t := range r.quotas {
			if t.err != nil {
				return nil, "", t.err
			}
			var err error
			inst := &st.quotaInst
			inst.Name = t.inst
			if inst.Dimensions == nil {
				inst.Dimensions = make(map[string]string, len(t.dims))
			}
			clear(inst.Dimensions)
			for _, d := range t.dims {
				// A missing attribute's dimension is "unknown", as in Istio.
				st.dimValue, err = d.Expr.AppendString(st.dimValue[:0], st.act)
				if err != nil && !errors.Is(err, expr.ErrMissing) {
					res := s.ruleFailed(r, "instance "+t.inst, fmt.Errorf("dimension %s: %w", d.Name, err))
					return &res, r.name, nil
				}
				inst.Dimensions[d.Name] = string(st.dimValue)
			}
			dec, err := t.h.Quota(ctx, now, inst, 1)
			if err != nil {
				s.metrics.handlerErrors.WithLabelValues(t.handler).Inc()
				return nil, "", status.Errorf(codes.Unavailable, "quota handler %s failed: %v", t.handler, err)
			}
			if !dec.Allowed {
				msg := fmt.Sprintf("quota %s exhausted", t.inst)
				if dec.ByPolicy {
					// Still a 429 marked as rate-limited: a 503 would be retried
					// by the caller's sidecar, multiplying the load on a failing
					// backend.
					msg = fmt.Sprintf("quota %s: its backend failed, and its fail policy is closed", t.inst)
				}
				res := &authorization.Result{
					Code:    codes.ResourceExhausted,
					Message: msg,
					Headers: []authorization.Header{
						{Name: "RateLimit-Remaining", Value: "0"},
						{Name: "Retry-After", Value: strconv.FormatInt(ceilSeconds(dec.ResetAfter), 10)},
						// A 429 reaches a gRPC caller as UNAVAILABLE, which the
						// caller's sidecar retries by default, charging the quota
						// again each time; Envoy never retries a response marked so.
						{Name: "x-envoy-ratelimited", Value: "true"},
					},
				}
				return res, r.name, nil
			}
		}
	}
	return nil, "", nil
}

// ceilSeconds rounds a wait up to whole seconds, without overflowing for the
// longest ones.
func ceilSeconds(d time.Duration) int64 {
	s := int64(d / time.Second)
	if d%time.Second > 0 {
		s++
	}
	return s
}

func headerOptions(hs []authorization.Header) []*corev3.HeaderValueOption {
	if len(hs) == 0 {
		return nil
	}
	out := make([]*corev3.HeaderValueOption, len(hs))
	for i, h := range hs {
		out[i] = headerOption(h, h.Append)
	}
	return out
}

func headerOption(h authorization.Header, appendValue bool) *corev3.HeaderValueOption {
	action := corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	if appendValue {
		action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
	}
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: h.Name, Value: h.Value}, AppendAction: action}
}

// allowedAnswers are what the allowed answers of one plan share.
type allowedAnswers struct {
	// guarded are the names, lower-cased and sorted, of the headers that some
	// handler of the config may add to a request it allows
	// (authorization.UpstreamHeaders): every allowed answer removes those it does
	// not set, so that a client's copy never reaches the service as if a policy
	// had set it.
	guarded []string
	// plain is the answer of an allowed check that adds no headers, most answers,
	// and plainWire its encoding: shared, so never changed once built.
	plain     *authv3.CheckResponse
	plainWire []byte
}

// newAllowedAnswers collects the header names that the handlers of p's config may
// add to an allowed request, from every handler of the config, so that a name
// stays guarded while a rule that sends to its handler is switched off.
func (s *Server) newAllowedAnswers(lease leaseView, p *plan) *allowedAnswers {
	var names []string
	for _, hc := range p.snap.Handlers {
		h, ok := lease.Handler(hc.Name)
		if !ok {
			continue
		}
		if uh, ok := h.(authorization.UpstreamHeaders); ok {
			names = append(names, uh.UpstreamHeaderNames()...)
		}
	}
	for i := range names {
		names[i] = strings.ToLower(names[i])
	}
	slices.Sort(names)
	a := &allowedAnswers{guarded: slices.Compact(names)}
	a.plain = okAnswer(authorization.Result{Code: codes.OK}, a.guarded)
	wire, err := proto.Marshal(a.plain)
	if err != nil {
		// Not with valid header names; an answer without its encoding is
		// encoded per check.
		s.log.Error("encode the OK answer; encoding it per check instead", "err", err)
		return a
	}
	a.plainWire = wire
	return a
}

// okAnswer answers an allowed check. The headers r adds go upstream, the first of
// each name replacing the client's copies whatever its Append (a later one of the
// same name may append to it); the guarded names r does not set are removed, so
// that no client's copy of them reaches the service. Nothing of the answer is
// shared with another: r may be a cached result, and guarded a plan's.
func okAnswer(r authorization.Result, guarded []string) *authv3.CheckResponse {
	var set []*corev3.HeaderValueOption
	if len(r.Headers) > 0 {
		set = make([]*corev3.HeaderValueOption, len(r.Headers))
		for i, h := range r.Headers {
			set[i] = headerOption(h, h.Append && setsHeader(r.Headers[:i], h.Name))
		}
	}
	var remove []string
	for _, name := range guarded {
		if setsHeader(r.Headers, name) {
			continue
		}
		if remove == nil {
			remove = make([]string, 0, len(guarded))
		}
		remove = append(remove, name)
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers:         set,
			HeadersToRemove: remove,
		}},
	}
}

// setsHeader reports whether hs has a header named name, in any case.
func setsHeader(hs []authorization.Header, name string) bool {
	for _, h := range hs {
		if strings.EqualFold(h.Name, name) {
			return true
		}
	}
	return false
}

// denied answers a denial: the gRPC status Envoy acts on and the HTTP response it sends
// back, whose body names the rule.
func denied(r authorization.Result, rule string) *authv3.CheckResponse {
	msg := r.Message
	if msg == "" {
		msg = "denied"
	}
	body := fmt.Sprintf("%s: rule %s: %s\n", r.Code, rule, msg)
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(r.Code), Message: msg},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(r.HTTPStatusOf())},
			Headers: headerOptions(append([]authorization.Header{{Name: "Content-Type", Value: "text/plain"}}, r.Headers...)),
			Body:    body,
		}},
	}
}
