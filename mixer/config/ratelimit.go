package config

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/templates/quota"
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

// RateLimitHandler is the handler the rate-limit service counts with: the default
// quota handler (memquota), or one that replaces it (redisquota).
const RateLimitHandler = SystemNamespace + "/quota"

// Rate-limit units and algorithms.
var (
	RateLimitUnits      = []string{"second", "minute", "hour", "day", "week", "month", "year"}
	RateLimitAlgorithms = []string{"fixed_window", "sliding_window", "token_bucket"}
)

// RateLimitWindow is the length of a unit of RateLimitUnits, as envoyproxy/ratelimit
// counts them (a month is 30 days, a year 365), or 0 for another string.
func RateLimitWindow(unit string) time.Duration {
	switch unit {
	case "second":
		return time.Second
	case "minute":
		return time.Minute
	case "hour":
		return time.Hour
	case "day":
		return 24 * time.Hour
	case "week":
		return 7 * 24 * time.Hour
	case "month":
		return 30 * 24 * time.Hour
	case "year":
		return 365 * 24 * time.Hour
	}
	return 0
}

func isRateLimitDoc(root *yaml.Node) bool {
	for _, kv := range mappingEntries(root) {
		if kv[0].Value == "domain" {
			return true
		}
	}
	return false
}

var (
	rateLimitConfigType      = reflect.TypeOf(RateLimitConfig{})
	rateLimitDescriptorType  = reflect.TypeOf(RateLimitDescriptor{})
	rateLimitPolicyType      = reflect.TypeOf(RateLimitPolicy{})
	rateLimitReplacementType = reflect.TypeOf(RateLimitReplacement{})
)

// parseRateLimit reads a rate-limit document. Every problem is reported, each once:
// the fields that did not decode, and the checks of what did; a check whose field
// did not decode is left out rather than report the zero value left in its place.
func parseRateLimit(file string, root *yaml.Node) (*Object, *failure, error) {
	var cfg RateLimitConfig
	var c collector
	decoded := decodeInto(&c, file, root, &cfg)
	pos := Position{File: file, Line: root.Line}
	domainOK := decoded && trustFields(root, rateLimitConfigType).ok("domain")
	if decoded {
		if cfg.Domain == "" && domainOK {
			c.add(pos, "rate-limit config has an empty domain")
		}
		validateDescriptors(&c, file, nodeField(root, "descriptors"), cfg.Descriptors, "descriptors")
	}
	if err := c.err(); err != nil {
		f := &failure{family: FamilyRateLimit, key: Key{Kind: KindRateLimit}, pos: pos}
		if domainOK && cfg.Domain != "" {
			f.key.Namespace, f.key.Name, f.known = SystemNamespace, cfg.Domain, true
		} else {
			f.words = nodeWords(root)
		}
		return nil, f, err
	}
	return &Object{
		Key:    Key{Kind: KindRateLimit, Namespace: SystemNamespace, Name: cfg.Domain},
		Family: FamilyRateLimit,
		Pos:    pos,
		Spec:   &cfg,
		node:   root,
	}, nil, nil
}

// nodeField returns the value of key in mapping n as yaml.v3 decodes it: the mapping's
// own key, else the first found in the mappings that its merge key brings in, in order.
// Only for a node that has decoded: it would loop on an alias cycle, which decoding rejects.
func nodeField(n *yaml.Node, key string) *yaml.Node {
	_, v := nodeEntry(n, key)
	return v
}

// nodeEntry is nodeField with the key's own node too.
func nodeEntry(n *yaml.Node, key string) (k, v *yaml.Node) {
	n = resolveAlias(n)
	var merge *yaml.Node
	for _, kv := range mappingEntries(n) {
		switch {
		case isMergeKey(kv[0]):
			merge = kv[1] // yaml.v3 uses the last
		case kv[0].Value == key:
			return kv[0], kv[1]
		}
	}
	if merge == nil {
		return nil, nil
	}
	maps := []*yaml.Node{merge}
	if merge.Kind == yaml.SequenceNode {
		maps = merge.Content
	}
	for _, m := range maps {
		if k, v := nodeEntry(m, key); v != nil {
			return k, v
		}
	}
	return nil, nil
}

// rateLimitUnit returns the unit that u names, matched case-insensitively as
// envoyproxy/ratelimit does (it compares upper cases; folding takes the same
// spellings, ſ and K included).
func rateLimitUnit(u string) (string, bool) {
	for _, x := range RateLimitUnits {
		if strings.EqualFold(u, x) {
			return x, true
		}
	}
	return "", false
}

// validateDescriptors checks the descriptors ds decoded from the list seq. A check
// that reads a field that did not decode (fieldTrust) is left out: its error is
// already reported, and the zero value in its place is no mistake of the file's.
func validateDescriptors(c *collector, file string, seq *yaml.Node, ds []RateLimitDescriptor, path string) {
	els, aligned := decodedElements(seq, len(ds))
	if !aligned {
		// Which written descriptor each is cannot be told: their errors would be
		// put at the wrong lines. Those of decoding are reported.
		return
	}
	seq = resolveAlias(seq)
	seen := map[string]bool{}
	for k := range ds {
		d := &ds[k]
		// n is the descriptor's mapping, where its own mistakes are written; el is its
		// place in the list, the same node unless the list names it by an alias (- *desc).
		// i is its index as written, past elements that did not decode.
		i := k
		var el, n *yaml.Node
		if els != nil {
			i = els[k]
			el = seq.Content[i]
			n = resolveAlias(el)
		}
		pos, listed := Position{File: file}, Position{File: file}
		if n != nil {
			pos.Line, listed.Line = n.Line, el.Line
		}
		d.Pos = pos
		// at is where the field at fpath is written within the descriptor, so that
		// an error names the line of the mistake rather than the descriptor's first.
		at := func(fpath string) Position {
			if f := lookupPath(n, fpath); f != nil {
				return Position{File: file, Line: f.Line}
			}
			return pos
		}
		trust := trustFields(n, rateLimitDescriptorType)
		p := fmt.Sprintf("%s[%d]", path, i)
		keyOK, valueOK := trust.ok("key"), trust.ok("value")
		if d.Key == "" && keyOK {
			c.add(pos, "%s: descriptor has no key", p)
		}
		if keyOK && valueOK {
			id := d.Key + "\x00" + d.Value
			if seen[id] {
				c.add(listed, "%s: duplicate descriptor key %q value %q", p, d.Key, d.Value)
			}
			seen[id] = true
		}
		// Upstream rejects it rather than let a count shared by every value of an exact
		// match (or of a key alone) pass for a wildcard's.
		if d.ShareThreshold && !strings.HasSuffix(d.Value, "*") && valueOK {
			c.add(at("share_threshold"), "%s: share_threshold needs a wildcard value (one ending in *), not %q", p, d.Value)
		}
		if r := d.RateLimit; r != nil {
			validateRateLimit(c, file, nodeField(n, "rate_limit"), r, p, at)
		}
		validateDescriptors(c, file, nodeField(n, "descriptors"), d.Descriptors, p+".descriptors")
	}
}

// validateRateLimit checks a descriptor's limit r, decoded from the mapping rl, as
// validateDescriptors checks the descriptor: leaving out what reads a field that
// did not decode.
func validateRateLimit(c *collector, file string, rl *yaml.Node, r *RateLimitPolicy, p string, at func(string) Position) {
	trust := trustFields(rl, rateLimitPolicyType)
	unitOK, unlimitedOK, algOK, requestsOK := trust.ok("unit"), trust.ok("unlimited"), trust.ok("algorithm"), trust.ok("requests_per_unit")
	unit, validUnit := rateLimitUnit(r.Unit)
	switch {
	case !unitOK || !unlimitedOK:
		// Which case applies is not known.
	// Upstream ignores requests_per_unit, and a unit it does not know, on an
	// unlimited limit; only a real unit is taken for a mistake.
	case r.Unlimited && validUnit:
		c.add(at("rate_limit.unit"), "%s: an unlimited rate_limit should not have a unit (it has %q)", p, r.Unit)
	case !r.Unlimited && !validUnit:
		c.add(at("rate_limit.unit"), "%s: rate_limit unit %q is not one of %s", p, r.Unit, strings.Join(RateLimitUnits, ", "))
	}
	if !r.Unlimited && validUnit {
		// The unit's own spelling: mixer/check looks units up by it, which
		// "ſecond" lower-cased would not reach.
		r.Unit = unit
	}
	alg, algErr := quota.ParseAlgorithm(r.Algorithm)
	validAlg := algErr == nil
	if !validAlg && algOK {
		c.add(at("rate_limit.algorithm"), "%s: rate_limit algorithm %q is not one of %s", p, r.Algorithm, strings.Join(RateLimitAlgorithms, ", "))
	}
	if !r.Unlimited && validUnit && validAlg && unitOK && unlimitedOK && algOK && requestsOK {
		// What the backends cannot count exactly (a token bucket whose rate
		// needs more precision than they keep) is refused here, rather than
		// failing every request that reaches it.
		l := quota.Limit{Requests: uint64(r.RequestsPerUnit), Window: RateLimitWindow(unit), Algorithm: alg}
		if err := quotakit.CheckLimit(l); err != nil {
			c.add(at("rate_limit.requests_per_unit"), "%s: rate_limit of %d per %s cannot be counted: %v", p, r.RequestsPerUnit, unit, err)
		}
	}
	// Names need not be unique: upstream replaces every limit of a name.
	reps := nodeField(rl, "replaces")
	els, aligned := decodedElements(reps, len(r.Replaces))
	if !aligned {
		return
	}
	reps = resolveAlias(reps)
	nameOK := trust.ok("name")
	for k, rep := range r.Replaces {
		j := k
		var n *yaml.Node
		if els != nil {
			j = els[k]
			n = reps.Content[j]
		}
		if !trustFields(n, rateLimitReplacementType).ok("name") {
			continue
		}
		switch {
		case rep.Name == "":
			c.add(at(fmt.Sprintf("rate_limit.replaces[%d]", j)), "%s: rate_limit replaces[%d] has no name", p, j)
		case rep.Name == r.Name && nameOK:
			// A limit that replaced itself would never apply.
			c.add(at(fmt.Sprintf("rate_limit.replaces[%d]", j)), "%s: rate_limit replaces[%d] is the limit's own name %q", p, j, rep.Name)
		}
	}
}
