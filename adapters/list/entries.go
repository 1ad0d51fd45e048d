package list

import (
	"cmp"
	"fmt"
	"net/netip"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// EntryType is what a list holds and how a value is compared with it.
type EntryType uint8

// Entry types, as written in params.entryType.
const (
	// Strings match exactly.
	Strings EntryType = iota
	// CaseInsensitiveStrings match under Unicode simple case folding, as
	// strings.EqualFold does ("Admin" is "ADMIN"; "straße" is not "STRASSE").
	CaseInsensitiveStrings
	// IPAddresses are IPv4 or IPv6 addresses or CIDR prefixes; a value matches when an
	// entry contains it.
	IPAddresses
	// Regex entries are Go (RE2) regular expressions that must match the whole value.
	Regex
)

var entryTypeNames = [...]string{
	Strings:                "STRINGS",
	CaseInsensitiveStrings: "CASE_INSENSITIVE_STRINGS",
	IPAddresses:            "IP_ADDRESSES",
	Regex:                  "REGEX",
}

func (t EntryType) String() string {
	if int(t) < len(entryTypeNames) {
		return entryTypeNames[t]
	}
	return fmt.Sprintf("EntryType(%d)", t)
}

// ParseEntryType reads an entry type name, case-insensitively; "" is STRINGS.
func ParseEntryType(s string) (EntryType, error) {
	if s == "" {
		return Strings, nil
	}
	for t, name := range entryTypeNames {
		if strings.EqualFold(s, name) {
			return EntryType(t), nil
		}
	}
	return 0, fmt.Errorf("entry type %q is not one of %s", s, strings.Join(entryTypeNames[:], ", "))
}

// u128 is an IPv6 address as a number, for range arithmetic.
type u128 struct{ hi, lo uint64 }

func (a u128) less(b u128) bool { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo) }

func (a u128) cmp(b u128) int {
	if a == b {
		return 0
	}
	if a.less(b) {
		return -1
	}
	return 1
}

func (a u128) next() u128 {
	if a.lo == ^uint64(0) {
		return u128{a.hi + 1, 0}
	}
	return u128{a.hi, a.lo + 1}
}

func u128Of(a netip.Addr) u128 {
	b := a.As16()
	var x u128
	for i := 0; i < 8; i++ {
		x.hi = x.hi<<8 | uint64(b[i])
		x.lo = x.lo<<8 | uint64(b[8+i])
	}
	return x
}

// hostMask128 has the low 128-bits bits set.
func hostMask128(bits int) u128 {
	host := 128 - bits
	switch {
	case host <= 0:
		return u128{}
	case host < 64:
		return u128{0, 1<<host - 1}
	case host == 64:
		return u128{0, ^uint64(0)}
	case host < 128:
		return u128{1<<(host-64) - 1, ^uint64(0)}
	}
	return u128{^uint64(0), ^uint64(0)}
}

type span4 struct{ lo, hi uint32 }

type span6 struct{ lo, hi u128 }

// The IPv4-mapped IPv6 range, ::ffff:0.0.0.0 to ::ffff:255.255.255.255.
var (
	mappedLo = u128{0, 0xffff_0000_0000}
	mappedHi = u128{0, 0xffff_ffff_ffff}
)

// parseIPEntry reads an address or a CIDR prefix. Host bits of a prefix are ignored
// ("10.1.2.3/8" is 10.0.0.0/8), as most firewalls do.
func parseIPEntry(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR prefix", s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR prefix", s)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q has an IPv6 zone, which a list cannot match", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	p = p.Masked()
	// An IPv4-mapped prefix that lies inside ::ffff:0:0/96 is an IPv4 prefix.
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, nil
}

// parseIPValue reads the value a list checks: an address, optionally with a port
// ("10.0.0.1:8080", "[::1]:443") since Envoy reports addresses both ways. The zone
// is dropped and an IPv4-mapped IPv6 address becomes IPv4.
func parseIPValue(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.Addr{}, false
		}
		a = ap.Addr()
	}
	return a.WithZone("").Unmap(), true
}

// checkRegex compiles an entry on its own first, so that an entry such as "a)|(b"
// cannot escape the anchoring group it is later wrapped in.
func checkRegex(s string) error {
	if _, err := syntax.Parse(s, syntax.Perl); err != nil {
		return fmt.Errorf("%q is not a valid regular expression: %v", s, err)
	}
	if _, err := regexp.Compile(anchor(s)); err != nil {
		return fmt.Errorf("%q is not a valid regular expression: %v", s, err)
	}
	return nil
}

func anchor(s string) string { return `^(?:` + s + `)$` }

// checkEntry reports whether s is a valid entry of type t.
func checkEntry(t EntryType, s string) error {
	if s == "" {
		return fmt.Errorf("empty entry")
	}
	switch t {
	case IPAddresses:
		_, err := parseIPEntry(s)
		return err
	case Regex:
		return checkRegex(s)
	}
	return nil
}

// foldKey maps s to one representative of its case-folding class, so that a map can
// answer strings.EqualFold questions. Invalid UTF-8 bytes are kept as they are: unlike
// EqualFold, which reads every one of them as U+FFFD, they match only themselves.
func foldKey(s string) string {
	simple := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf || ('A' <= c && c <= 'Z') {
			simple = false
			break
		}
	}
	if simple {
		return s // lower-case ASCII is its own key; no allocation on the common path
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteByte(s[i])
		} else {
			b.WriteRune(foldRune(r))
		}
		i += size
	}
	return b.String()
}

// foldRune returns the smallest rune of r's folding orbit, except that an ASCII
// letter's orbit is represented by the lower-case letter, which keeps lower-case
// ASCII strings their own keys.
func foldRune(r rune) rune {
	m := r
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		m = min(m, f)
	}
	if 'A' <= m && m <= 'Z' {
		m += 'a' - 'A'
	}
	return m
}

// matcher is one immutable version of a list, swapped whole when the file changes.
type matcher struct {
	typ     EntryType
	entries int
	strs    map[string]struct{}
	v4      []span4
	v6      []span6
	// re matches any regex entry; res holds them one by one when the combined
	// expression is too large for the regexp package.
	re  *regexp.Regexp
	res []*regexp.Regexp
}

// newMatcher builds a matcher from entries that checkEntry has accepted.
func newMatcher(t EntryType, entries []string) (*matcher, error) {
	m := &matcher{typ: t, entries: len(entries)}
	switch t {
	case Strings, CaseInsensitiveStrings:
		m.strs = make(map[string]struct{}, len(entries))
		for _, e := range entries {
			if t == CaseInsensitiveStrings {
				e = foldKey(e)
			}
			m.strs[e] = struct{}{}
		}
	case IPAddresses:
		for _, e := range entries {
			p, err := parseIPEntry(e)
			if err != nil {
				return nil, err
			}
			m.addPrefix(p)
		}
		m.v4 = merge4(m.v4)
		m.v6 = merge6(m.v6)
	case Regex:
		if len(entries) == 0 {
			break
		}
		parts := make([]string, len(entries))
		for i, e := range entries {
			parts[i] = `(?:` + e + `)`
		}
		re, err := regexp.Compile(anchor(strings.Join(parts, "|")))
		if err == nil {
			m.re = re
			break
		}
		for _, e := range entries {
			re, err := regexp.Compile(anchor(e))
			if err != nil {
				return nil, fmt.Errorf("%q is not a valid regular expression: %v", e, err)
			}
			m.res = append(m.res, re)
		}
	default:
		return nil, fmt.Errorf("unknown entry type %v", t)
	}
	return m, nil
}

func (m *matcher) addPrefix(p netip.Prefix) {
	if p.Addr().Is4() {
		lo := uint32(0)
		for _, b := range p.Addr().As4() {
			lo = lo<<8 | uint32(b)
		}
		host := uint32(uint64(1)<<(32-p.Bits()) - 1)
		m.v4 = append(m.v4, span4{lo, lo | host})
		return
	}
	lo := u128Of(p.Addr())
	mask := hostMask128(p.Bits())
	hi := u128{lo.hi | mask.hi, lo.lo | mask.lo}
	m.v6 = append(m.v6, span6{lo, hi})
	// Values are unmapped to IPv4 before the lookup, so the part of a wide IPv6
	// prefix (such as ::/0) that covers ::ffff:0:0/96 must be an IPv4 range too.
	if !hi.less(mappedLo) && !mappedHi.less(lo) {
		a, b := lo, hi
		if a.less(mappedLo) {
			a = mappedLo
		}
		if mappedHi.less(b) {
			b = mappedHi
		}
		m.v4 = append(m.v4, span4{uint32(a.lo), uint32(b.lo)})
	}
}

// merge4 sorts spans and joins overlapping and adjacent ones, so that a lookup is
// one binary search.
func merge4(s []span4) []span4 {
	slices.SortFunc(s, func(a, b span4) int { return cmp.Compare(a.lo, b.lo) })
	out := s[:0]
	for _, x := range s {
		if n := len(out); n > 0 && (out[n-1].hi == ^uint32(0) || x.lo <= out[n-1].hi+1) {
			out[n-1].hi = max(out[n-1].hi, x.hi)
			continue
		}
		out = append(out, x)
	}
	return slices.Clip(out)
}

func merge6(s []span6) []span6 {
	slices.SortFunc(s, func(a, b span6) int { return a.lo.cmp(b.lo) })
	out := s[:0]
	for _, x := range s {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.hi == (u128{^uint64(0), ^uint64(0)}) || !last.hi.next().less(x.lo) {
				if last.hi.less(x.hi) {
					last.hi = x.hi
				}
				continue
			}
		}
		out = append(out, x)
	}
	return slices.Clip(out)
}

func (m *matcher) containsIP(a netip.Addr) bool {
	if a.Is4() {
		b := a.As4()
		x := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		// The last span starting at or below x is the only one that can hold it.
		i, j := 0, len(m.v4)
		for i < j {
			h := int(uint(i+j) >> 1)
			if m.v4[h].lo <= x {
				i = h + 1
			} else {
				j = h
			}
		}
		return i > 0 && x <= m.v4[i-1].hi
	}
	x := u128Of(a)
	i, j := 0, len(m.v6)
	for i < j {
		h := int(uint(i+j) >> 1)
		if !x.less(m.v6[h].lo) {
			i = h + 1
		} else {
			j = h
		}
	}
	return i > 0 && !m.v6[i-1].hi.less(x)
}

// verdict is how a value relates to a list.
type verdict uint8

const (
	listed verdict = iota
	unlisted
	// invalid: the value cannot be compared with the entries (not an IP address for
	// an IP list, not a string-like value).
	invalid
)

// lookup compares one value with the list.
func (m *matcher) lookup(v string) verdict {
	switch m.typ {
	case Strings:
		if _, ok := m.strs[v]; ok {
			return listed
		}
	case CaseInsensitiveStrings:
		if _, ok := m.strs[foldKey(v)]; ok {
			return listed
		}
	case IPAddresses:
		a, ok := parseIPValue(v)
		if !ok {
			return invalid
		}
		if m.containsIP(a) {
			return listed
		}
	case Regex:
		if m.re != nil {
			if m.re.MatchString(v) {
				return listed
			}
			break
		}
		for _, re := range m.res {
			if re.MatchString(v) {
				return listed
			}
		}
	}
	return unlisted
}
