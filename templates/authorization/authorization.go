// Package authorization is the authorization template: what a check rule hands a
// policy handler (denier, list, rbac) for one request, and what the handler answers.
package authorization

import (
	"time"

	"google.golang.org/grpc/codes"
)

// Instance is one authorization instance, evaluated for one request.
type Instance struct {
	// Name is the instance's qualified name, NAMESPACE/NAME.
	Name string
	// Value is what a list handler checks (a principal, an IP, a header); nil when the
	// instance has no value or it was missing from the request.
	Value any
	// Properties are further named values, for handlers that use them.
	Properties map[string]any
}

// Header is a header to add: to the upstream request when a check allows it, to the
// response when it denies.
type Header struct {
	Name, Value string
	// Append adds the value to an existing header instead of replacing it.
	Append bool
}

// Result is a handler's answer.
type Result struct {
	// Code is codes.OK to allow; PERMISSION_DENIED, UNAUTHENTICATED or
	// RESOURCE_EXHAUSTED to deny.
	Code    codes.Code
	Message string
	// HTTPStatus of a denial; 0 means derived from Code (403, 401, 429).
	HTTPStatus int
	Headers    []Header
	// ValidDuration is how long the result holds for requests with the same
	// attribute values; 0 means it must not be cached.
	ValidDuration time.Duration
}

// Allowed reports whether the result lets the request through.
func (r Result) Allowed() bool { return r.Code == codes.OK }

// HTTPStatusOf returns the HTTP status a denial is answered with.
func (r Result) HTTPStatusOf() int {
	if r.HTTPStatus != 0 {
		return r.HTTPStatus
	}
	switch r.Code {
	case codes.OK:
		return 200
	case codes.Unauthenticated:
		return 401
	case codes.ResourceExhausted:
		return 429
	case codes.Unavailable:
		return 503
	}
	return 403
}
