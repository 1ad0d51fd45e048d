// Package authorization is the authorization template: what a check rule hands a
// policy handler (denier, list, rbac) for one request, and what the handler answers.
package authorization

import (
	"errors"
	"fmt"
	"slices"
	"strings"
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
// response when it denies. Handlers take it in their params as written here.
type Header struct {
	Name  string `yaml:"name"`
	Value string `yaml:"value"`
	// Append adds the value to an existing header instead of replacing it. On an
	// allowed request it appends only to a value another header of the same answer
	// set: the first header of a name always replaces the client's, so that a
	// client cannot slip a value of its own in beside it.
	Append bool `yaml:"append"`
}

// UpstreamHeaders is implemented by policy handlers that add headers to the
// requests they allow (list and rbac allowHeaders, rbac policy headers). Every
// allowed answer removes the client's own copies of the headers that any handler
// of the running config lists and the answer does not set, so that the service
// behind can trust them: a client that sends x-sluice-policy: admins does not
// reach it with that header unless the admins policy let it in.
type UpstreamHeaders interface {
	// UpstreamHeaderNames returns the name of every header the handler may add to
	// a request it allows, lower-cased, each once (see HeaderNames), in a slice of
	// the caller's own. The core reads it once per config, not per request.
	UpstreamHeaderNames() []string
}

// HeaderNames returns the names of the headers of lists, lower-cased (HTTP header
// names are case-insensitive), sorted, each once; nil for none.
func HeaderNames(lists ...[]Header) []string {
	var out []string
	for _, hs := range lists {
		for _, h := range hs {
			out = append(out, strings.ToLower(h.Name))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// CheckHeaders checks headers that a handler's params ask it to add: names that are
// HTTP field names (RFC 9110 tokens) but not pseudo-headers, which a check cannot
// set, and values without control characters, which would split or corrupt the
// message (HTAB is allowed). It returns the first bad header's field relative to
// the list, such as "[1].name", and what is wrong with it.
func CheckHeaders(hs []Header) (field string, err error) {
	for i, h := range hs {
		if err := checkHeaderName(h.Name); err != nil {
			return fmt.Sprintf("[%d].name", i), err
		}
		if err := checkHeaderValue(h.Value); err != nil {
			return fmt.Sprintf("[%d].value", i), err
		}
	}
	return "", nil
}

func checkHeaderName(s string) error {
	if s == "" {
		return errors.New("is required")
	}
	if s[0] == ':' {
		return fmt.Errorf("%q is a pseudo-header, which a check cannot set", s)
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return fmt.Errorf("%q is not a valid HTTP header name", s)
		}
	}
	return nil
}

func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func checkHeaderValue(s string) error {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return fmt.Errorf("contains the control character %#02x", c)
		}
	}
	return nil
}

// Result is a handler's answer.
type Result struct {
	// Code is codes.OK to allow; PERMISSION_DENIED, UNAUTHENTICATED or
	// RESOURCE_EXHAUSTED to deny.
	Code    codes.Code
	Message string
	// HTTPStatus of a denial; 0 means derived from Code (403, 401, 429).
	HTTPStatus int
	// Headers go to the upstream request of an allowed check and to the response
	// of a denied one. A handler returns a slice of its own with every answer, which
	// the caller may change.
	Headers []Header
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
