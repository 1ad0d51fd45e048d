package authorization

import (
	"slices"
	"testing"
)

func TestHeaderNames(t *testing.T) {
	a := []Header{{Name: "X-Sluice-Policy", Value: "admins"}, {Name: "x-trace", Value: "1", Append: true}}
	b := []Header{{Name: "x-sluice-policy", Value: "readers"}, {Name: "X-Authz", Value: "rbac"}}
	for _, tt := range []struct {
		lists [][]Header
		want  []string
	}{
		{nil, nil},
		{[][]Header{nil, {}}, nil},
		{[][]Header{a}, []string{"x-sluice-policy", "x-trace"}},
		{[][]Header{a, b}, []string{"x-authz", "x-sluice-policy", "x-trace"}},
	} {
		if got := HeaderNames(tt.lists...); !slices.Equal(got, tt.want) {
			t.Errorf("HeaderNames(%v) = %q, want %q", tt.lists, got, tt.want)
		}
	}
}
