package check

import (
	"context"
	"math"
	"slices"
	"strings"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/dispatch"
	"github.com/sluicemesh/sluice/mixer/envoy"
	"github.com/sluicemesh/sluice/templates/quota"
)

// rateLimits is the rate-limit config of one config version, as descriptor trees.
type rateLimits struct {
	snap    *config.Snapshot
	domains map[string]*rlNode
}

// rlNode is one level of a domain's descriptor tree.
type rlNode struct {
	exact    map[string]*rlNode // by key "\x00" value
	keyOnly  map[string]*rlNode // by key, for entries written without a value
	wildcard map[string][]*rlNode
	// pattern is the value prefix of a wildcard node (its value without the '*').
	pattern string
	// kind is how a request entry matches the node: by key alone, key and value,
	// or a value prefix.
	kind nodeKind
	// domain is a root's domain name, the config's copy: a request's own is a
	// view of bytes the listener reuses, unfit for a metric label that outlives it.
	domain string
	// keyPrefix starts a root's counting keys: its domain, escaped, and '|'.
	keyPrefix string
	desc      *config.RateLimitDescriptor
	rule      *rlRule
	// stat is the statistics name of the config path that ends here (key,
	// key_value, or key_prefix* for each level, as envoyproxy/ratelimit names
	// it), which names every request it matches unless the node has
	// detailed_metric (see detailedStatName): made once rather than per request.
	stat string
}

// nodeKind is how a descriptor entry of the config matches request entries.
type nodeKind uint8

const (
	byKey nodeKind = iota
	byValue
	byPrefix
)

// rlRule is a descriptor's limit.
type rlRule struct {
	name      string
	limit     quota.Limit
	unit      rlsv3.RateLimitResponse_RateLimit_Unit
	rpu       uint32
	unlimited bool
	replaces  []string
	shadow    bool
}

// units are the RLS enum values of config.RateLimitUnits.
var units = map[string]rlsv3.RateLimitResponse_RateLimit_Unit{
	"second": rlsv3.RateLimitResponse_RateLimit_SECOND,
	"minute": rlsv3.RateLimitResponse_RateLimit_MINUTE,
	"hour":   rlsv3.RateLimitResponse_RateLimit_HOUR,
	"day":    rlsv3.RateLimitResponse_RateLimit_DAY,
	"week":   rlsv3.RateLimitResponse_RateLimit_WEEK,
	"month":  rlsv3.RateLimitResponse_RateLimit_MONTH,
	"year":   rlsv3.RateLimitResponse_RateLimit_YEAR,
}

func unitOf(u rlsv3.RateLimitResponse_RateLimit_Unit) (time.Duration, bool) {
	for name, x := range units {
		if x == u {
			return config.RateLimitWindow(name), true
		}
	}
	return 0, false
}

func newNode() *rlNode {
	return &rlNode{exact: map[string]*rlNode{}, keyOnly: map[string]*rlNode{}, wildcard: map[string][]*rlNode{}}
}

// newRoot is the root of a domain's descriptor tree.
func newRoot(domain string) *rlNode {
	root := newNode()
	root.domain = domain
	root.keyPrefix = string(append(quotakit.AppendEscaped(nil, domain, &keySpecial), '|'))
	return root
}

// compileRateLimits builds the descriptor trees; the config loader has validated them.
func compileRateLimits(snap *config.Snapshot) *rateLimits {
	rl := &rateLimits{snap: snap, domains: map[string]*rlNode{}}
	for domain, cfg := range snap.RateLimits() {
		root := newRoot(domain)
		addDescriptors(root, cfg.Descriptors)
		rl.domains[domain] = root
	}
	return rl
}

func addDescriptors(parent *rlNode, ds []config.RateLimitDescriptor) {
	for i := range ds {
		d := &ds[i]
		n := newNode()
		n.desc = d
		if r := d.RateLimit; r != nil {
			rule := &rlRule{name: r.Name, unlimited: r.Unlimited, shadow: d.ShadowMode}
			for _, rep := range r.Replaces {
				rule.replaces = append(rule.replaces, rep.Name)
			}
			if !r.Unlimited {
				unit := strings.ToLower(r.Unit)
				alg, _ := quota.ParseAlgorithm(r.Algorithm)
				rule.unit, rule.rpu = units[unit], r.RequestsPerUnit
				rule.limit = quota.Limit{Requests: uint64(r.RequestsPerUnit), Window: config.RateLimitWindow(unit), Algorithm: alg}
			}
			n.rule = rule
		}
		switch {
		case d.Value == "":
			parent.keyOnly[d.Key] = n
			n.stat = d.Key
		case strings.HasSuffix(d.Value, "*"):
			n.kind, n.pattern = byPrefix, strings.TrimSuffix(d.Value, "*")
			n.stat = d.Key + "_" + d.Value
			// In config order: the first that matches wins, as envoyproxy/ratelimit
			// takes them, so that a file means what it meant there.
			parent.wildcard[d.Key] = append(parent.wildcard[d.Key], n)
		default:
			n.kind = byValue
			parent.exact[d.Key+"\x00"+d.Value] = n
			n.stat = d.Key + "_" + d.Value
		}
		if parent.desc != nil {
			n.stat = parent.stat + "." + n.stat
		}
		addDescriptors(n, d.Descriptors)
	}
}

// match walks the tree for a request descriptor: at each level the most specific
// entry (key and value, then the first wildcard value that matches, then the key
// alone). It returns the matched rule, the counting key (the domain and every
// entry's key and value, escaped), and the statistics name of the descriptor (its
// config path's, or detailedStatName).
func (root *rlNode) match(entries []envoy.RateLimitEntry) (n *rlNode, key, stat string) {
	// Built on the stack when it fits: the key costs one allocation, its string.
	var kbuf [256]byte
	kb := append(kbuf[:0], root.keyPrefix...)
	var buf [8]*rlNode
	path := buf[:0]
	n = root
	for i, e := range entries {
		k, v := e.Key, e.Value
		next := n.exact[k+"\x00"+v]
		if next == nil {
			for _, w := range n.wildcard[k] {
				if strings.HasPrefix(v, w.pattern) {
					next = w
					break
				}
			}
		}
		if next == nil {
			next = n.keyOnly[k]
		}
		if next == nil {
			return nil, "", ""
		}
		if i > 0 {
			kb = append(kb, '|')
		}
		kb = append(quotakit.AppendEscaped(kb, k, &keySpecial), '=')
		if next.kind == byPrefix && next.desc.ShareThreshold {
			// Every matching value shares one count. A raw "%*" marks the pattern:
			// no escaped value contains it, so no request value can name this count.
			kb = append(quotakit.AppendEscaped(kb, next.pattern, &keySpecial), "%*"...)
		} else {
			kb = quotakit.AppendEscaped(kb, v, &keySpecial)
		}
		path = append(path, next)
		n = next
	}
	if n.desc.DetailedMetric {
		return n, string(kb), detailedStatName(entries, path)
	}
	return n, string(kb), n.stat
}

// detailedStatName names a matched descriptor whose leaf has detailed_metric, as
// envoyproxy/ratelimit does, without the domain: the request's key_value for every
// entry, a share_threshold wildcard's level keeping its pattern so that the values
// sharing a count share a name. Other descriptors are named by their config path
// (rlNode.stat).
func detailedStatName(entries []envoy.RateLimitEntry, path []*rlNode) string {
	shared := false
	for _, n := range path {
		shared = shared || (n.kind == byPrefix && n.desc.ShareThreshold)
	}
	var sb strings.Builder
	for i, e := range entries {
		n := path[i]
		if i > 0 {
			sb.WriteByte('.')
		}
		sb.WriteString(e.Key)
		switch {
		case n.kind == byPrefix && n.desc.ShareThreshold:
			sb.WriteByte('_')
			sb.WriteString(n.desc.Value)
		case shared && e.Value == "":
			// Upstream names an empty value "key" here and "key_" below.
		default:
			sb.WriteByte('_')
			sb.WriteString(e.Value)
		}
	}
	return sb.String()
}

func (s *Server) rateLimitsFor(l *dispatch.Lease) *rateLimits {
	if rl := s.rl.Load(); rl != nil && rl.snap == l.Snapshot() {
		return rl
	}
	s.rlMu.Lock()
	defer s.rlMu.Unlock()
	if rl := s.rl.Load(); rl != nil && rl.snap == l.Snapshot() {
		return rl
	}
	rl := compileRateLimits(l.Snapshot())
	if cur := s.rl.Load(); cur == nil || cur.snap.Version <= rl.snap.Version { // see planFor
		s.rl.Store(rl)
	}
	return rl
}

// ShouldRateLimit implements envoy.service.ratelimit.v3.RateLimitService.
func (s *Server) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	start := time.Now()
	st := s.scratch.Get().(*requestState)
	defer s.scratch.Put(st)
	st.rl.SetRequest(req)
	outcome, err := s.shouldRateLimit(ctx, st)
	s.metrics.observe("ratelimit", outcome, time.Since(start))
	if err != nil {
		return nil, err
	}
	return st.answer.message(s.opts.RateLimitHeaders), nil
}

// shouldRateLimitEncoded answers a RateLimitRequest from its encoding, for the lean
// listener, without building the message. msg must not change until the call
// returns.
func (s *Server) shouldRateLimitEncoded(ctx context.Context, msg, dst []byte) ([]byte, error) {
	return s.answerEncoded(ctx, "ratelimit", "RateLimitRequest", msg, dst,
		func(st *requestState, b []byte) error { return st.rl.Unmarshal(b) },
		func(ctx context.Context, st *requestState, dst []byte) ([]byte, string, error) {
			outcome, err := s.shouldRateLimit(ctx, st)
			if err != nil {
				return nil, outcome, err
			}
			return st.answer.appendWire(dst, s.opts.RateLimitHeaders), outcome, nil
		})
}

// pending is one descriptor's matched rule, waiting for its decision.
type pending struct {
	rule  *rlRule
	stat  string
	limit quota.Limit
	req   int // index into the backend batch, -1 when not counted
	// detailed says that stat holds the request's values (detailed_metric).
	detailed bool
}

// shouldRateLimit decides the request in st.rl into st.answer.
func (s *Server) shouldRateLimit(ctx context.Context, st *requestState) (string, error) {
	req := &st.rl
	if req.Domain == "" {
		return "invalid", status.Error(codes.InvalidArgument, "rate limit domain must not be empty")
	}
	if len(req.Descriptors) == 0 {
		return "invalid", status.Error(codes.InvalidArgument, "rate limit descriptor list must not be empty")
	}
	hits := uint64(req.HitsAddend)
	if hits == 0 {
		hits = 1
	}
	lease := s.opts.Dispatcher.Lease()
	if lease == nil {
		return "unavailable", status.Error(codes.Unavailable, "no config applied yet")
	}
	defer lease.Release()
	// The plan says whether checks may run inline on the lean listener; a service
	// that only answers rate limits must build it too.
	s.planFor(lease)
	rl := s.rateLimitsFor(lease)
	root, known := rl.domains[req.Domain]
	domain := "" // unknown domains are counted together: their names are unbounded
	if known {
		domain = root.domain
	}

	ans := &st.answer
	ans.reset(len(req.Descriptors))
	pend := slices.Grow(st.pend[:0], len(req.Descriptors))[:len(req.Descriptors)]
	clear(pend)
	batch := st.batch[:0]
	defer func() {
		// The storage is kept for the next request, without what it points to.
		st.pend, st.batch = pend[:0], batch[:0]
		clear(pend)
		clear(batch[:cap(batch)])
	}()
	replaced := map[string]bool{}
	for i := range req.Descriptors {
		d := &req.Descriptors[i]
		pend[i].req = -1
		h := hits
		if d.HasHitsAddend {
			h = d.HitsAddend
		}
		var n *rlNode
		var key string
		if known && len(d.Entries) > 0 {
			n, key, pend[i].stat = root.match(d.Entries)
			pend[i].detailed = n != nil && n.desc.DetailedMetric
		}
		var rule *rlRule
		if n != nil {
			rule = n.rule
		}
		if d.HasLimit && known {
			// Envoy may send the limit itself (from route metadata). As in
			// envoyproxy/ratelimit, it is a limit of its own, whatever the config
			// says of the descriptor: counted under the descriptor's entries, in a
			// fixed window, never in shadow mode, with no name to replace or be
			// replaced by. An unknown domain has no limits, sent ones included.
			unit := rlsv3.RateLimitResponse_RateLimit_Unit(d.Unit) // the two enums share their numbers
			w, ok := unitOf(unit)
			if !ok {
				return "invalid", status.Errorf(codes.InvalidArgument, "descriptor %d: limit override unit %v is not supported", i, typev3.RateLimitUnit(d.Unit))
			}
			// Keyed by its unit too: overrides of one descriptor in two units are
			// two limits, as they are in Redis, whose keys hold the window.
			key, pend[i].stat = root.keyPrefix+"override|"+unit.String()+"|"+entriesKey(d.Entries), "override"
			pend[i].detailed = false
			rule = &rlRule{rpu: d.RequestsPerUnit, unit: unit,
				limit: quota.Limit{Requests: uint64(d.RequestsPerUnit), Window: w, Algorithm: quota.FixedWindow}}
		}
		pend[i].rule = rule
		if rule == nil {
			continue
		}
		for _, r := range rule.replaces {
			replaced[r] = true
		}
		if rule.unlimited || d.IsNegativeHits {
			continue
		}
		pend[i].limit = rule.limit
		pend[i].req = len(batch)
		// More hits than the limit holds are over it, however many: the backends
		// count at most one past the limit, so that no count overflows, and an
		// absurd hits_addend is refused as OVER_LIMIT rather than with an error
		// that Envoy, failing open by default, would let through.
		batch = append(batch, quota.Request{Key: key, Limit: rule.limit, Hits: min(h, rule.limit.Requests+1)})
	}
	// A limit replaced by another matched one neither counts nor answers.
	if len(replaced) > 0 {
		kept := batch[:0]
		idx := map[int]int{}
		for i := range pend {
			// An unlimited limit answers as unlimited even when replaced, as
			// upstream marks it before it replaces anything.
			if r := pend[i].rule; r != nil && !r.unlimited && r.name != "" && replaced[r.name] {
				pend[i].rule = nil
				pend[i].req = -1
				continue
			}
			if pend[i].req >= 0 {
				idx[i] = len(kept)
				kept = append(kept, batch[pend[i].req])
			}
		}
		for i, j := range idx {
			pend[i].req = j
		}
		batch = kept
	}

	decisions := slices.Grow(st.decisions[:0], len(batch))[:len(batch)]
	clear(decisions)
	st.decisions = decisions[:0]
	if len(batch) > 0 {
		h, ok := lease.Handler(s.opts.QuotaHandler)
		if !ok {
			return "error", status.Errorf(codes.Unavailable, "the rate-limit backend %s is not configured", s.opts.QuotaHandler)
		}
		rlh, ok := h.(quota.RateLimiter)
		if !ok {
			return "error", status.Errorf(codes.Internal, "handler %s is not a rate-limit backend", s.opts.QuotaHandler)
		}
		if err := rlh.Allow(ctx, s.opts.Now(), batch, decisions); err != nil {
			s.metrics.handlerErrors.WithLabelValues(s.opts.QuotaHandler).Inc()
			return "error", status.Errorf(codes.Unavailable, "rate-limit backend: %v", err)
		}
	}

	for i := range pend {
		p := &pend[i]
		ds := &ans.statuses[i]
		result := "no_limit"
		switch {
		case !known:
			result = "unknown_domain"
		case req.Descriptors[i].IsNegativeHits:
			result = "negative_hits_ignored"
		case p.rule == nil:
		case p.rule.unlimited:
			ds.remaining = math.MaxUint32
			result = "unlimited"
		case decisions[p.req].ByPolicy && decisions[p.req].Allowed:
			// Allowed by the fail-open policy: nothing is known of the count, so
			// the status claims no limit, remaining or reset (as when upstream's
			// backend fails and Envoy's failure_mode_deny allows), and the RateLimit-*
			// headers describe another descriptor or none.
			result = "fail_open"
		default:
			dec := decisions[p.req]
			ds.rule = p.rule
			ds.remaining = uint32(min(dec.Remaining, math.MaxUint32))
			// Whole seconds, rounded up, as upstream answers: Envoy reads only the
			// seconds (x-ratelimit-reset), and a retry after a rounded-down wait
			// would come too soon.
			ds.hasReset, ds.reset = true, ceilSecond(dec.ResetAfter)
			result = "ok"
			if !dec.Allowed {
				if p.rule.shadow {
					result = "shadow_over_limit"
				} else {
					result = "over_limit"
					if dec.ByPolicy {
						result = "fail_closed"
					}
					ds.over, ans.over = true, true
				}
			}
			// The RateLimit-* headers describe the last descriptor over its limit,
			// or else the first with the least remaining, as envoyproxy/ratelimit
			// picks it (an over-limit one has none remaining: no later descriptor
			// has less).
			if ds.over || ans.tightest < 0 || ds.remaining < ans.statuses[ans.tightest].remaining {
				ans.tightest = i
			}
		}
		stat := p.stat
		if p.detailed {
			stat = s.metrics.detailed.label(stat)
		}
		s.metrics.rateLimit.WithLabelValues(domain, stat, result).Inc()
	}
	if ans.over {
		return "over_limit", nil
	}
	return "ok", nil
}

func entriesKey(es []envoy.RateLimitEntry) string {
	var b []byte
	for i, e := range es {
		if i > 0 {
			b = append(b, '|')
		}
		b = append(quotakit.AppendEscaped(b, e.Key, &keySpecial), '=')
		b = quotakit.AppendEscaped(b, e.Value, &keySpecial)
	}
	return string(b)
}

// keySpecial are the bytes escaped in a counting key's domain, keys and values: its
// separators, and '%', so that no value can forge a key's structure
// ([user="bob|path=/x"] must not count as [user=bob, path=/x]).
var keySpecial = quotakit.NewEscapeSet("|=") // never changed

// ceilSecond rounds a positive wait up to whole seconds.
func ceilSecond(d time.Duration) time.Duration {
	if r := d % time.Second; r > 0 {
		d += time.Second - r
	}
	return d
}
