package config

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// RateLimitConfig is an envoyproxy/ratelimit configuration file, accepted as-is.
type RateLimitConfig struct {
	Domain      string                `yaml:"domain" json:"domain"`
	Descriptors []RateLimitDescriptor `yaml:"descriptors" json:"descriptors"`
}

// RateLimitDescriptor is one level of the descriptor tree.
type RateLimitDescriptor struct {
	Key            string                `yaml:"key" json:"key"`
	Value          string                `yaml:"value" json:"value,omitempty"`
	RateLimit      *RateLimitPolicy      `yaml:"rate_limit" json:"rate_limit,omitempty"`
	Descriptors    []RateLimitDescriptor `yaml:"descriptors" json:"descriptors,omitempty"`
	ShadowMode     bool                  `yaml:"shadow_mode" json:"shadow_mode,omitempty"`
	DetailedMetric bool                  `yaml:"detailed_metric" json:"detailed_metric,omitempty"`
	ShareThreshold bool                  `yaml:"share_threshold" json:"share_threshold,omitempty"`
	// Pos is where the descriptor was written.
	Pos Position `yaml:"-" json:"-"`
}

// RateLimitPolicy is a descriptor's limit.
type RateLimitPolicy struct {
	Name            string                 `yaml:"name" json:"name,omitempty"`
	Unit            string                 `yaml:"unit" json:"unit,omitempty"`
	RequestsPerUnit uint32                 `yaml:"requests_per_unit" json:"requests_per_unit"`
	Unlimited       bool                   `yaml:"unlimited" json:"unlimited,omitempty"`
	Replaces        []RateLimitReplacement `yaml:"replaces" json:"replaces,omitempty"`
	// Algorithm is Sluice's one extension: fixed_window (default), sliding_window or token_bucket.
	Algorithm string `yaml:"algorithm" json:"algorithm,omitempty"`
}

// RateLimitReplacement names a limit that a more specific one replaces.
type RateLimitReplacement struct {
	Name string `yaml:"name" json:"name"`
}

// Rate-limit units and algorithms.
var (
	RateLimitUnits      = []string{"second", "minute", "hour", "day"}
	RateLimitAlgorithms = []string{"fixed_window", "sliding_window", "token_bucket"}
)

func isRateLimitDoc(root *yaml.Node) bool {
	for _, kv := range mappingEntries(root) {
		if kv[0].Value == "domain" {
			return true
		}
	}
	return false
}

func parseRateLimit(file string, root *yaml.Node) (*Object, error) {
	var cfg RateLimitConfig
	if err := decodeStrict(file, root, &cfg); err != nil {
		return nil, err
	}
	pos := Position{File: file, Line: root.Line}
	var c collector
	if cfg.Domain == "" {
		c.add(pos, "rate-limit config has an empty domain")
	}
	names := map[string]Position{}
	descs := nodeField(root, "descriptors")
	validateDescriptors(&c, file, descs, cfg.Descriptors, names, "descriptors")
	if err := c.err(); err != nil {
		return nil, err
	}
	return &Object{
		Key:    Key{Kind: KindRateLimit, Namespace: SystemNamespace, Name: cfg.Domain},
		Family: FamilyRateLimit,
		Pos:    pos,
		Spec:   &cfg,
		node:   root,
	}, nil
}

func nodeField(n *yaml.Node, key string) *yaml.Node {
	for _, kv := range mappingEntries(n) {
		if kv[0].Value == key {
			return kv[1]
		}
	}
	return nil
}

func validateDescriptors(c *collector, file string, seq *yaml.Node, ds []RateLimitDescriptor, names map[string]Position, path string) {
	seen := map[string]bool{}
	for i := range ds {
		d := &ds[i]
		var n *yaml.Node
		if seq != nil && seq.Kind == yaml.SequenceNode && i < len(seq.Content) {
			n = seq.Content[i]
		}
		pos := Position{File: file}
		if n != nil {
			pos.Line = n.Line
		}
		d.Pos = pos
		p := fmt.Sprintf("%s[%d]", path, i)
		if d.Key == "" {
			c.add(pos, "%s: descriptor has no key", p)
		}
		id := d.Key + "\x00" + d.Value
		if seen[id] {
			c.add(pos, "%s: duplicate descriptor key %q value %q", p, d.Key, d.Value)
		}
		seen[id] = true
		if r := d.RateLimit; r != nil {
			if r.Unlimited {
				if r.Unit != "" || r.RequestsPerUnit != 0 {
					c.add(pos, "%s: an unlimited rate_limit has no unit or requests_per_unit", p)
				}
			} else {
				if !contains(RateLimitUnits, strings.ToLower(r.Unit)) {
					c.add(pos, "%s: rate_limit unit %q is not one of %s", p, r.Unit, strings.Join(RateLimitUnits, ", "))
				}
			}
			if r.Algorithm != "" && !contains(RateLimitAlgorithms, r.Algorithm) {
				c.add(pos, "%s: rate_limit algorithm %q is not one of %s", p, r.Algorithm, strings.Join(RateLimitAlgorithms, ", "))
			}
			if r.Name != "" {
				if prev, dup := names[r.Name]; dup {
					c.add(pos, "%s: rate_limit name %q is already used at %s", p, r.Name, prev)
				}
				names[r.Name] = pos
			}
			for j, rep := range r.Replaces {
				if rep.Name == "" {
					c.add(pos, "%s: rate_limit replaces[%d] has no name", p, j)
				}
			}
		}
		validateDescriptors(c, file, nodeField(n, "descriptors"), d.Descriptors, names, p+".descriptors")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
