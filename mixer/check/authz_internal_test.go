package check

import (
	"math"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"

	"github.com/sluicemesh/sluice/templates/authorization"
)

func TestCeilSeconds(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want int64
	}{
		{0, 0},
		{time.Nanosecond, 1},
		{time.Second, 1},
		{time.Second + 1, 2},
		{59*time.Second + 500*time.Millisecond, 60},
		// The longest wait a window allows must not wrap to a negative header.
		{math.MaxInt64, math.MaxInt64/int64(time.Second) + 1},
	} {
		if got := ceilSeconds(tt.d); got != tt.want {
			t.Errorf("ceilSeconds(%v) = %d, want %d", tt.d, got, tt.want)
		}
	}
}

// TestOkAnswer: an allowed answer sets its headers over the client's (the first
// of a name replaces, whatever its Append; a later one may append to it) and
// removes the guarded names it does not set, compared case-insensitively. Answers
// built from one result (a cached one) share nothing a caller could change.
func TestOkAnswer(t *testing.T) {
	h := func(name, value string, appendValue bool) authorization.Header {
		return authorization.Header{Name: name, Value: value, Append: appendValue}
	}
	guarded := []string{"x-a", "x-b", "x-c"}
	tests := []struct {
		name    string
		headers []authorization.Header
		guarded []string
		set     []string // name=value, or name+=value appended
		removed []string
	}{
		{"nothing", nil, nil, nil, nil},
		{"nothing set", nil, guarded, nil, guarded},
		{"all set", []authorization.Header{h("x-c", "3", false), h("X-A", "1", false), h("x-b", "2", false)}, guarded,
			[]string{"x-c=3", "X-A=1", "x-b=2"}, nil},
		{"some set", []authorization.Header{h("X-B", "2", false)}, guarded, []string{"X-B=2"}, []string{"x-a", "x-c"}},
		{"an unguarded header", []authorization.Header{h("x-d", "4", true)}, guarded, []string{"x-d=4"}, guarded},
		{"appends", []authorization.Header{h("x-a", "1", true), h("x-b", "2", false), h("X-A", "3", true), h("x-a", "4", false), h("x-b", "5", true)}, guarded,
			[]string{"x-a=1", "x-b=2", "X-A+=3", "x-a=4", "x-b+=5"}, []string{"x-c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := authorization.Result{Code: codes.OK, Headers: tt.headers}
			resp := okAnswer(r, tt.guarded)
			if codes.Code(resp.GetStatus().GetCode()) != codes.OK || resp.GetOkResponse() == nil {
				t.Fatalf("answer %v, want OK", resp)
			}
			var set []string
			for _, o := range resp.GetOkResponse().GetHeaders() {
				op := "="
				if o.GetAppendAction() == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
					op = "+="
				} else if o.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
					t.Errorf("header %s: action %v", o.GetHeader().GetKey(), o.GetAppendAction())
				}
				set = append(set, o.GetHeader().GetKey()+op+o.GetHeader().GetValue())
			}
			removed := resp.GetOkResponse().GetHeadersToRemove()
			if !slices.Equal(set, tt.set) || !slices.Equal(removed, tt.removed) {
				t.Fatalf("sets %q and removes %q, want %q and %q", set, removed, tt.set, tt.removed)
			}

			// A second answer from the same (cached) result is unaffected by
			// changes to the first, and neither changes the result or the guard.
			wantHeaders, wantGuarded := slices.Clone(tt.headers), slices.Clone(tt.guarded)
			for _, o := range resp.GetOkResponse().GetHeaders() {
				o.Header.Value = "changed"
				o.AppendAction = corev3.HeaderValueOption_ADD_IF_ABSENT
			}
			for i := range removed {
				removed[i] = "changed"
			}
			resp.GetOkResponse().HeadersToRemove = append(removed, "x-more")
			again := okAnswer(r, tt.guarded)
			if !slices.Equal(r.Headers, wantHeaders) || !slices.Equal(tt.guarded, wantGuarded) {
				t.Fatalf("changing an answer changed its result's headers %v or the guarded names %q", r.Headers, tt.guarded)
			}
			if got := again.GetOkResponse().GetHeadersToRemove(); !slices.Equal(got, tt.removed) {
				t.Errorf("after the first answer changed, the next removes %q", got)
			}
			for i, o := range again.GetOkResponse().GetHeaders() {
				if o.GetHeader().GetValue() != tt.headers[i].Value {
					t.Errorf("after the first answer changed, the next sets %s to %q", o.GetHeader().GetKey(), o.GetHeader().GetValue())
				}
			}
		})
	}
}
