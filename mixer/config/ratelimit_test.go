package config_test

import (
	"fmt"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/sluicemesh/sluice/mixer/config"
)

// TestRateLimitUpstreamParity checks that a rate-limit file is accepted or rejected as
// envoyproxy/ratelimit would, and that every error names the line of the problem, also
// when the file reaches it through a YAML alias or merge key.
func TestRateLimitUpstreamParity(t *testing.T) {
	tests := []struct {
		name string
		body string
		want string // "" to load; else "LINE: message prefix"
		// check, if set, inspects the loaded config.
		check func(*config.RateLimitConfig) error
	}{
		{name: "units week, month and year", body: `domain: d
descriptors:
- {key: a, rate_limit: {unit: week, requests_per_unit: 1}}
- {key: b, rate_limit: {unit: Month, requests_per_unit: 1}}
- {key: c, rate_limit: {unit: YEAR, requests_per_unit: 1}}
`},
		{name: "unit that upper-cases to one", body: `domain: d
descriptors:
- {key: a, rate_limit: {unit: ſecond, requests_per_unit: 1}}
`, check: func(c *config.RateLimitConfig) error {
			// Stored by its name, for those that look units up in lower case.
			if u := c.Descriptors[0].RateLimit.Unit; u != "second" {
				return fmt.Errorf("unit = %q, want second", u)
			}
			return nil
		}},
		{name: "unlimited with requests_per_unit", body: `domain: d
descriptors:
- key: a
  rate_limit: {unlimited: true, requests_per_unit: 5}
`},
		{name: "unlimited with a unit that is not one", body: `domain: d
descriptors:
- key: a
  rate_limit: {unlimited: true, unit: fortnight}
`},
		{name: "unlimited with a unit", body: `domain: d
descriptors:
- key: a
  rate_limit: {unlimited: true, unit: Minute}
`, want: "4: descriptors[0]: an unlimited rate_limit should not have a unit"},
		{name: "an unknown algorithm, named at its own line", body: `domain: d
descriptors:
- key: a
  rate_limit:
    unit: second
    requests_per_unit: 1
    algorithm: leaky_bucket
`, want: `7: descriptors[0]: rate_limit algorithm "leaky_bucket"`},
		{name: "a token bucket the backends cannot count exactly, named at requests_per_unit", body: `domain: d
descriptors:
- key: a
  rate_limit:
    unit: year
    algorithm: token_bucket
    requests_per_unit: 200000003
`, want: `7: descriptors[0]: rate_limit of 200000003 per year cannot be counted: token bucket`},
		{name: "a replaces entry with no name, named at its own line", body: `domain: d
descriptors:
- key: a
  rate_limit:
    unit: second
    requests_per_unit: 1
    replaces:
    - name: other
    - {}
`, want: `9: descriptors[0]: rate_limit replaces[1] has no name`},
		{name: "a limit name used twice", body: `domain: d
descriptors:
- key: a
  rate_limit: {name: shared, unit: second, requests_per_unit: 1}
- key: b
  rate_limit: {name: shared, unit: second, requests_per_unit: 2}
`},
		{name: "replaces its own name", body: `domain: d
descriptors:
- key: a
- key: b
  rate_limit:
    name: self
    unit: second
    requests_per_unit: 1
    replaces: [{name: other}, {name: self}]
`, want: `9: descriptors[1]: rate_limit replaces[1] is the limit's own name "self"`},
		{name: "share_threshold on an exact value", body: `domain: d
descriptors:
- key: a
  value: files/a.pdf
  share_threshold: true
  rate_limit: {unit: second, requests_per_unit: 1}
`, want: `5: descriptors[0]: share_threshold needs a wildcard value`},
		{name: "share_threshold without a value", body: `domain: d
descriptors:
- key: a
  descriptors:
  - key: b
    share_threshold: true
    rate_limit: {unit: second, requests_per_unit: 1}
`, want: `6: descriptors[0].descriptors[0]: share_threshold needs a wildcard value`},
		{name: "share_threshold on a wildcard", body: `domain: d
descriptors:
- key: a
  value: files/*
  share_threshold: true
  rate_limit: {unit: second, requests_per_unit: 1}
`},
		{name: "error under an aliased descriptors list", body: `domain: d
descriptors:
- key: a
  descriptors: &common
  - key: x
    rate_limit: {unit: fortnight, requests_per_unit: 1}
- key: b
  descriptors: *common
`, want: `6: descriptors[1].descriptors[0]: rate_limit unit "fortnight"`},
		{name: "error below an aliased descriptor", body: `domain: d
descriptors:
- key: a
  descriptors:
  - &desc
    key: x
    descriptors:
    - key: y
      rate_limit: {unit: fortnight, requests_per_unit: 1}
- key: b
  descriptors:
  - *desc
`, want: `9: descriptors[1].descriptors[0].descriptors[0]: rate_limit unit "fortnight"`},
		{name: "an aliased descriptor repeated", body: `domain: d
descriptors:
- &desc
  key: x
- key: b
- *desc
`, want: `6: descriptors[2]: duplicate descriptor key "x"`},
		{name: "merge key in a descriptor", body: `domain: d
descriptors:
- &base
  key: a
  shadow_mode: true
  rate_limit: {unit: second, requests_per_unit: 1}
- <<: *base
  key: b
`, check: func(c *config.RateLimitConfig) error {
			if d := c.Descriptors[1]; d.Key != "b" || !d.ShadowMode || d.RateLimit == nil || d.RateLimit.Unit != "second" {
				return fmt.Errorf("merged descriptor = %+v", d)
			}
			return nil
		}},
		{name: "merge keys in a rate_limit", body: `domain: d
descriptors:
- key: a
  rate_limit: &rl {unit: second, requests_per_unit: 1}
- key: b
  rate_limit: &alg {unit: hour, algorithm: token_bucket, requests_per_unit: 9}
- key: c
  rate_limit:
    <<: [*rl, *alg]
    requests_per_unit: 2
`, check: func(c *config.RateLimitConfig) error {
			// The mapping's own keys win over merged ones, and an earlier merged mapping over a later.
			if r := c.Descriptors[2].RateLimit; r.Unit != "second" || r.Algorithm != "token_bucket" || r.RequestsPerUnit != 2 {
				return fmt.Errorf("merged rate_limit = %+v", r)
			}
			return nil
		}},
		{name: "error in descriptors brought by a merge key", body: `domain: d
descriptors:
- &base
  key: a
  descriptors:
  - key: x
    rate_limit: {unit: fortnight, requests_per_unit: 1}
- <<: *base
  value: v
`, want: `7: descriptors[1].descriptors[0]: rate_limit unit "fortnight"`},
		{name: "merge key of a scalar", body: `domain: d
descriptors:
- key: a
  <<: 5
`, want: `4: merge key "<<" needs a mapping or a list of mappings`},
		{name: "alias cycle", body: "domain: d\ndescriptors: &x [{key: a, descriptors: *x}]\n",
			want: `2: alias *x is inside the node it stands for`},
		{name: "merge cycle", body: "domain: d\ndescriptors:\n- &m {key: a, <<: *m}\n",
			want: `3: alias *m is inside the node it stands for`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := loader(t, "")
			// Without the defaults: these cases need none of their expressions.
			l.Layers = []config.Layer{{Name: "t", FS: fstest.MapFS{"rl.yaml": {Data: []byte(tt.body)}}}}
			s, err := l.Load()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("rejected:\n%v", err)
				}
				if tt.check != nil {
					if err := tt.check(s.RateLimits()["d"]); err != nil {
						t.Error(err)
					}
				}
				return
			}
			if err == nil {
				t.Fatalf("loaded without error, want %q", tt.want)
			}
			line, msg, _ := strings.Cut(tt.want, ": ")
			for _, e := range config.Errors(err) {
				if e.Pos.File != "" && fmt.Sprint(e.Pos.Line) == line && strings.HasPrefix(e.Msg, msg) {
					return
				}
			}
			t.Errorf("errors:\n%v\nwant one at line %s starting %q", err, line, msg)
		})
	}
}
