// Package denier is the denier adapter: a check handler that denies every request it
// is asked about, with a configured gRPC status, HTTP status, message and headers.
package denier

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/templates"
	"github.com/sluicemesh/sluice/templates/authorization"
	"github.com/sluicemesh/sluice/templates/metric"
)

// Name is the adapter's name in a Handler's spec.adapter.
const Name = "denier"

// Defaults of a denier's params.
const (
	DefaultCode          = "PERMISSION_DENIED"
	DefaultMessage       = "denied"
	DefaultValidDuration = 5 * time.Second
)

// maxMessage bounds the message: it travels in a gRPC status and an HTTP body on
// every denied request.
const maxMessage = 1024

// Params configure a denier handler.
type Params struct {
	// Status is the gRPC status of the denial.
	Status Status `yaml:"status"`
	// HTTPStatus is the status of the HTTP response Envoy sends on the denial (300 to
	// 599, so that a redirect to a login page is possible); 0, the default, derives it
	// from the code (403 for PERMISSION_DENIED, 401 for UNAUTHENTICATED, 429 for
	// RESOURCE_EXHAUSTED).
	HTTPStatus int `yaml:"httpStatus"`
	// ValidDuration is how long the core's check cache may reuse the denial for
	// requests with the same attribute values; "0s" disables caching. Default 5s: the
	// answer never changes, and a short validity bounds how long a removed denier
	// keeps answering from the cache.
	ValidDuration time.Duration `yaml:"validDuration"`
	// Headers are added to the denial's HTTP response.
	Headers []Header `yaml:"headers"`
}

// Status is a gRPC status.
type Status struct {
	// Code is a gRPC code name (PERMISSION_DENIED, UNAUTHENTICATED, …) or its number.
	// OK is refused: a denier that allowed would be a misconfiguration.
	Code string `yaml:"code"`
	// Message explains the denial to the client; at most 1024 bytes.
	Message string `yaml:"message"`
}

// Header is a header added to the denial's response.
type Header = authorization.Header

// Validate implements adapters.Params.
func (p *Params) Validate() error {
	var errs []error // every problem at once, for sluice validate
	if code, err := ParseCode(p.Status.Code); err != nil {
		errs = append(errs, adapters.Errorf("status.code", "%v", err))
	} else if code == codes.OK {
		errs = append(errs, adapters.Errorf("status.code", "OK would allow every request; a denier needs a code that denies"))
	}
	if len(p.Status.Message) > maxMessage {
		errs = append(errs, adapters.Errorf("status.message", "is %d bytes, more than %d", len(p.Status.Message), maxMessage))
	}
	if p.HTTPStatus != 0 && (p.HTTPStatus < 300 || p.HTTPStatus > 599) {
		errs = append(errs, adapters.Errorf("httpStatus", "%d is not an HTTP status from 300 to 599 (or 0 to derive it from the code)", p.HTTPStatus))
	}
	if p.ValidDuration < 0 {
		errs = append(errs, adapters.Errorf("validDuration", "must not be negative"))
	}
	if field, err := authorization.CheckHeaders(p.Headers); err != nil {
		errs = append(errs, adapters.Errorf("headers"+field, "%v", err))
	}
	return errors.Join(errs...)
}

// codeNames are the canonical gRPC code names, as google.rpc.Code spells them.
var codeNames = [...]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// ParseCode reads a gRPC code written as its name (case-insensitive, as in
// google.rpc.Code) or its number; "" is PERMISSION_DENIED.
func ParseCode(s string) (codes.Code, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return codes.PermissionDenied, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 || n >= len(codeNames) {
			return 0, fmt.Errorf("%d is not a gRPC code (0 to %d)", n, len(codeNames)-1)
		}
		return codes.Code(n), nil
	}
	for c, name := range codeNames {
		if strings.EqualFold(s, name) {
			return codes.Code(c), nil
		}
	}
	return 0, fmt.Errorf("%q is not a gRPC code name such as PERMISSION_DENIED or UNAUTHENTICATED", s)
}

// Factory returns the denier adapter's factory.
func Factory() *adapters.Factory {
	return &adapters.Factory{
		Name:      Name,
		Doc:       "denies every request with a fixed status, message and headers",
		Templates: []string{templates.Authorization},
		InProcess: true,
		NewParams: func() adapters.Params {
			return &Params{Status: Status{Code: DefaultCode, Message: DefaultMessage}, ValidDuration: DefaultValidDuration}
		},
		Bind: func(adapters.Binding) (map[string]metric.Aggregation, error) { return nil, nil },
		New: func(_ context.Context, _ adapters.Env, p adapters.Params, _ adapters.Instances) (adapters.Handler, error) {
			return New(p.(*Params))
		},
	}
}

// Handler denies every request with one precomputed result.
type Handler struct {
	result authorization.Result
}

// New builds a denier from validated params.
func New(p *Params) (*Handler, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("denier params: %w", err)
	}
	code, _ := ParseCode(p.Status.Code) // Validate has checked it
	r := authorization.Result{
		Code:          code,
		Message:       p.Status.Message,
		HTTPStatus:    p.HTTPStatus,
		ValidDuration: p.ValidDuration,
	}
	r.Headers = slices.Clone(p.Headers)
	return &Handler{result: r}, nil
}

// Authorize implements adapters.AuthorizationHandler: it always denies.
func (h *Handler) Authorize(context.Context, *authorization.Instance, adapters.Attributes) (authorization.Result, error) {
	r := h.result
	// The caller may change the headers it is given; it must not change the next answer.
	r.Headers = slices.Clone(h.result.Headers)
	return r, nil
}

// Close implements adapters.Handler; a denier holds nothing.
func (h *Handler) Close(context.Context) error { return nil }
