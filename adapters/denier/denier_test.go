package denier

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/adaptertest"
	"github.com/sluicemesh/sluice/templates"
	"github.com/sluicemesh/sluice/templates/authorization"
)

func defaults() *Params { return Factory().NewParams().(*Params) }

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(p *Params)
		path string // the FieldError path, "" when valid
	}{
		{"defaults", func(*Params) {}, ""},
		{"code by name", func(p *Params) { p.Status.Code = "UNAUTHENTICATED" }, ""},
		{"code in lower case", func(p *Params) { p.Status.Code = "resource_exhausted" }, ""},
		{"code by number", func(p *Params) { p.Status.Code = "16" }, ""},
		{"empty code is the default", func(p *Params) { p.Status.Code = "" }, ""},
		{"redirect", func(p *Params) {
			p.HTTPStatus = 302
			p.Headers = []Header{{Name: "location", Value: "https://login.example/?next=%2F"}}
		}, ""},
		{"unknown code", func(p *Params) { p.Status.Code = "NOPE" }, "status.code"},
		{"code out of range", func(p *Params) { p.Status.Code = "17" }, "status.code"},
		{"negative code", func(p *Params) { p.Status.Code = "-1" }, "status.code"},
		{"OK allows", func(p *Params) { p.Status.Code = "OK" }, "status.code"},
		{"OK by number", func(p *Params) { p.Status.Code = "0" }, "status.code"},
		{"long message", func(p *Params) { p.Status.Message = strings.Repeat("x", maxMessage+1) }, "status.message"},
		{"http status too low", func(p *Params) { p.HTTPStatus = 200 }, "httpStatus"},
		{"http status too high", func(p *Params) { p.HTTPStatus = 600 }, "httpStatus"},
		{"negative validity", func(p *Params) { p.ValidDuration = -time.Second }, "validDuration"},
		{"header without name", func(p *Params) { p.Headers = []Header{{Value: "v"}} }, "headers[0].name"},
		{"header name with space", func(p *Params) { p.Headers = []Header{{Name: "x-a", Value: "1"}, {Name: "x b", Value: "v"}} }, "headers[1].name"},
		{"pseudo-header", func(p *Params) { p.Headers = []Header{{Name: ":status", Value: "200"}} }, "headers[0].name"},
		{"header value with newline", func(p *Params) { p.Headers = []Header{{Name: "x-a", Value: "a\r\nset-cookie: x"}} }, "headers[0].value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := defaults()
			tt.edit(p)
			adaptertest.WantFieldError(t, p.Validate(), tt.path)
		})
	}
}

// TestParamsFromYAML decodes params the way the config loader does: into the defaults.
func TestParamsFromYAML(t *testing.T) {
	src := `
status: {code: 16, message: "log in first"}
httpStatus: 401
validDuration: 30s
headers:
- {name: www-authenticate, value: Bearer}
- {name: x-denied-by, value: sluice, append: true}
`
	p := defaults()
	if err := yaml.Unmarshal([]byte(src), p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	h, err := Factory().New(context.Background(), adapters.Env{}, p, adapters.Instances{Authorizations: []string{"default/any"}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := h.(adapters.AuthorizationHandler).Authorize(context.Background(), &authorization.Instance{Name: "default/any"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := authorization.Result{
		Code: codes.Unauthenticated, Message: "log in first", HTTPStatus: 401, ValidDuration: 30 * time.Second,
		Headers: []authorization.Header{{Name: "www-authenticate", Value: "Bearer"}, {Name: "x-denied-by", Value: "sluice", Append: true}},
	}
	if !equalResult(r, want) {
		t.Errorf("result %+v, want %+v", r, want)
	}
}

func TestAlwaysDenies(t *testing.T) {
	f := Factory()
	if !f.Accepts(templates.Authorization) || f.Accepts(templates.Metric) {
		t.Errorf("templates %v", f.Templates)
	}
	if _, err := f.Bind(adapters.Binding{Params: defaults()}); err != nil {
		t.Fatal(err)
	}
	h, err := f.New(context.Background(), adapters.Env{}, defaults(), adapters.Instances{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(context.Background())
	ah := h.(adapters.AuthorizationHandler)
	for _, inst := range []*authorization.Instance{
		{Name: "ns/a"},
		{Name: "ns/b", Value: "anything"},
		nil,
	} {
		r, err := ah.Authorize(context.Background(), inst, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.Allowed() || r.Code != codes.PermissionDenied || r.Message != DefaultMessage ||
			r.HTTPStatusOf() != 403 || r.ValidDuration != DefaultValidDuration {
			t.Errorf("result %+v", r)
		}
	}
}

// TestHeadersAreNotShared: a caller that edits the headers of one answer does not
// change the next.
func TestHeadersAreNotShared(t *testing.T) {
	p := defaults()
	p.Headers = []Header{{Name: "x-a", Value: "1"}}
	h, err := New(p)
	if err != nil {
		t.Fatal(err)
	}
	r1, _ := h.Authorize(context.Background(), nil, nil)
	r1.Headers[0].Value = "changed"
	r2, _ := h.Authorize(context.Background(), nil, nil)
	if r2.Headers[0].Value != "1" {
		t.Errorf("second answer's header %q", r2.Headers[0].Value)
	}
}

// TestAddsNothingUpstream: a denier's headers go to the client with the denial, never
// upstream, so it lists none for the core to guard (authorization.UpstreamHeaders):
// a client may send x-a upstream where another handler allows its request.
func TestAddsNothingUpstream(t *testing.T) {
	p := defaults()
	p.Headers = []Header{{Name: "x-a", Value: "1"}}
	h, err := New(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := any(h).(authorization.UpstreamHeaders); ok {
		t.Error("a denier lists headers it adds upstream; it adds none")
	}
}

func TestNewRejectsInvalidParams(t *testing.T) {
	p := defaults()
	p.Status.Code = "OK"
	if _, err := New(p); err == nil {
		t.Error("New accepted a denier that allows")
	}
}

func TestParseCode(t *testing.T) {
	for name, want := range map[string]codes.Code{
		"PERMISSION_DENIED": codes.PermissionDenied, "Unauthenticated": codes.Unauthenticated,
		"CANCELLED": codes.Canceled, " 14 ": codes.Unavailable, "": codes.PermissionDenied,
	} {
		got, err := ParseCode(name)
		if err != nil || got != want {
			t.Errorf("ParseCode(%q) = %v, %v; want %v", name, got, err, want)
		}
	}
}

func equalResult(a, b authorization.Result) bool {
	if a.Code != b.Code || a.Message != b.Message || a.HTTPStatus != b.HTTPStatus ||
		a.ValidDuration != b.ValidDuration || len(a.Headers) != len(b.Headers) {
		return false
	}
	for i := range a.Headers {
		if a.Headers[i] != b.Headers[i] {
			return false
		}
	}
	return true
}
