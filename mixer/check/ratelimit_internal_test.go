package check

import (
	"testing"

	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/envoy"
)

// TestStatName: a matched descriptor is named in statistics as envoyproxy/ratelimit
// names it: by the config's path, or, when the matched descriptor has
// detailed_metric (its own flag, not its parents'), by the request's values, a
// share_threshold wildcard keeping its pattern.
func TestStatName(t *testing.T) {
	limit := &config.RateLimitPolicy{Unit: "second", RequestsPerUnit: 1}
	root := newNode()
	addDescriptors(root, []config.RateLimitDescriptor{
		{Key: "plain", RateLimit: limit},
		{Key: "plain", Value: "v1", RateLimit: limit},
		{Key: "path", Value: "/api/*", RateLimit: limit},
		{Key: "shared", Value: "/files/*", ShareThreshold: true, RateLimit: limit},
		{Key: "detail", DetailedMetric: true, RateLimit: limit},
		// detailed_metric on a parent only: the leaf decides, and it has none.
		{Key: "parent", DetailedMetric: true, Descriptors: []config.RateLimitDescriptor{
			{Key: "child", RateLimit: limit},
		}},
		// detailed_metric on the leaf only: every level shows the request's value.
		{Key: "outer", Descriptors: []config.RateLimitDescriptor{
			{Key: "inner", DetailedMetric: true, RateLimit: limit},
		}},
		// A detailed leaf under a shared wildcard keeps the wildcard's pattern.
		{Key: "tenant", Value: "team-*", ShareThreshold: true, Descriptors: []config.RateLimitDescriptor{
			{Key: "user", DetailedMetric: true, RateLimit: limit},
		}},
		{Key: "wild", Value: "a*", Descriptors: []config.RateLimitDescriptor{
			{Key: "leaf", DetailedMetric: true, RateLimit: limit},
		}},
	})
	e := func(kv ...string) []envoy.RateLimitEntry {
		var out []envoy.RateLimitEntry
		for i := 0; i < len(kv); i += 2 {
			out = append(out, envoy.RateLimitEntry{Key: kv[i], Value: kv[i+1]})
		}
		return out
	}
	for _, tc := range []struct {
		entries []envoy.RateLimitEntry
		want    string
	}{
		{e("plain", "other"), "plain"},
		{e("plain", "v1"), "plain_v1"},
		{e("path", "/api/users"), "path_/api/*"},
		{e("shared", "/files/a"), "shared_/files/*"},
		{e("detail", "x"), "detail_x"},
		{e("detail", ""), "detail_"},
		{e("parent", "p", "child", "c"), "parent.child"},
		{e("outer", "o", "inner", "i"), "outer_o.inner_i"},
		{e("tenant", "team-red", "user", "u7"), "tenant_team-*.user_u7"},
		{e("tenant", "team-red", "user", ""), "tenant_team-*.user"},
		{e("wild", "abc", "leaf", "l"), "wild_abc.leaf_l"},
	} {
		n, _, stat := root.match(tc.entries)
		if n == nil {
			t.Errorf("%v: no match", tc.entries)
			continue
		}
		if stat != tc.want {
			t.Errorf("%v: stat %q, want %q", tc.entries, stat, tc.want)
		}
	}
}

// TestCountingKeys: requests that differ get different counting keys, however
// their values spell separators, and every value a shared wildcard matches gets
// that wildcard's one key.
func TestCountingKeys(t *testing.T) {
	limit := &config.RateLimitPolicy{Unit: "second", RequestsPerUnit: 1}
	build := func(domain string) *rlNode {
		root := newRoot(domain)
		addDescriptors(root, []config.RateLimitDescriptor{
			{Key: "user", RateLimit: limit, Descriptors: []config.RateLimitDescriptor{{Key: "path", RateLimit: limit}}},
			{Key: "user=a", RateLimit: limit},
			{Key: "files", Value: "/pub/*", ShareThreshold: true, RateLimit: limit},
			{Key: "files", RateLimit: limit},
		})
		return root
	}
	a, ab := build("a"), build("a|user=b")
	e := func(kv ...string) []envoy.RateLimitEntry {
		var out []envoy.RateLimitEntry
		for i := 0; i < len(kv); i += 2 {
			out = append(out, envoy.RateLimitEntry{Key: kv[i], Value: kv[i+1]})
		}
		return out
	}
	type req struct {
		root    *rlNode
		entries []envoy.RateLimitEntry
	}
	for _, tc := range []struct {
		name string
		x, y req
		same bool
	}{
		{"a value spelling a nested entry", req{a, e("user", "bob|path=/x")}, req{a, e("user", "bob", "path", "/x")}, false},
		{"a key spelling a value", req{a, e("user=a", "b")}, req{a, e("user", "a=b")}, false},
		{"a domain spelling an entry", req{ab, e("user", "c")}, req{a, e("user", "b|user=c")}, false},
		{"a value spelling a shared pattern", req{a, e("files", "/pub/%*")}, req{a, e("files", "/pub/x")}, true},
		{"a value spelling a shared key", req{a, e("files", "/pu%*")}, req{a, e("files", "/pub/x")}, false},
		{"two values of one shared wildcard", req{a, e("files", "/pub/a")}, req{a, e("files", "/pub/b")}, true},
		{"one request twice", req{a, e("user", "bob", "path", "/x")}, req{a, e("user", "bob", "path", "/x")}, true},
	} {
		nx, kx, _ := tc.x.root.match(tc.x.entries)
		ny, ky, _ := tc.y.root.match(tc.y.entries)
		if nx == nil || ny == nil {
			t.Errorf("%s: no match", tc.name)
			continue
		}
		if (kx == ky) != tc.same {
			t.Errorf("%s: keys %q and %q, want them the same: %v", tc.name, kx, ky, tc.same)
		}
	}
}
