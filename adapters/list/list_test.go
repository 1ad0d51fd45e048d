package list

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/adaptertest"
	"github.com/sluicemesh/sluice/templates/authorization"
)

func defaults() *Params { return Factory().NewParams().(*Params) }

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(p *Params)
		path string // the FieldError path, "" when valid
	}{
		{"strings", func(p *Params) { p.Overrides = []string{"a", "b"} }, ""},
		{"file only", func(p *Params) { p.File = "/etc/sluice/list.txt" }, ""},
		{"entry type in lower case", func(p *Params) { p.EntryType = "ip_addresses"; p.Overrides = []string{"10.0.0.0/8"} }, ""},
		{"empty entry type is STRINGS", func(p *Params) { p.EntryType = ""; p.Overrides = []string{"a"} }, ""},
		{"IPs and CIDRs", func(p *Params) {
			p.EntryType = "IP_ADDRESSES"
			p.Overrides = []string{"10.0.0.1", "10.0.0.0/8", "2001:db8::/32", "::ffff:10.0.0.0/104", "10.1.2.3/8"}
		}, ""},
		{"regexes", func(p *Params) { p.EntryType = "REGEX"; p.Overrides = []string{"a.*", "(?i)b+", `^c$`} }, ""},
		{"no polling", func(p *Params) { p.File = "x"; p.RefreshInterval = 0 }, ""},
		{"unknown entry type", func(p *Params) { p.EntryType = "CIDRS"; p.Overrides = []string{"a"} }, "entryType"},
		{"no entries", func(*Params) {}, "overrides"},
		{"empty override", func(p *Params) { p.Overrides = []string{"a", ""} }, "overrides[1]"},
		{"bad IP", func(p *Params) { p.EntryType = "IP_ADDRESSES"; p.Overrides = []string{"10.0.0.1", "10.0.0.256"} }, "overrides[1]"},
		{"bad prefix length", func(p *Params) { p.EntryType = "IP_ADDRESSES"; p.Overrides = []string{"10.0.0.0/33"} }, "overrides[0]"},
		{"host name", func(p *Params) { p.EntryType = "IP_ADDRESSES"; p.Overrides = []string{"example.com"} }, "overrides[0]"},
		{"IPv6 zone", func(p *Params) { p.EntryType = "IP_ADDRESSES"; p.Overrides = []string{"fe80::1%eth0"} }, "overrides[0]"},
		{"bad regex", func(p *Params) { p.EntryType = "REGEX"; p.Overrides = []string{"a", "b", "(c"} }, "overrides[2]"},
		{"regex escaping its anchors", func(p *Params) { p.EntryType = "REGEX"; p.Overrides = []string{"a)|(.*"} }, "overrides[0]"},
		{"negative refresh", func(p *Params) { p.File = "x"; p.RefreshInterval = -time.Second }, "refreshInterval"},
		{"refresh too often", func(p *Params) { p.File = "x"; p.RefreshInterval = time.Millisecond }, "refreshInterval"},
		{"negative validity", func(p *Params) { p.Overrides = []string{"a"}; p.ValidDuration = -1 }, "validDuration"},
		{"allow header with a space in its name", func(p *Params) {
			p.Overrides = []string{"a"}
			p.AllowHeaders = []authorization.Header{{Name: "x-a", Value: "1"}, {Name: "x b", Value: "2"}}
		}, "allowHeaders[1].name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := defaults()
			tt.edit(p)
			adaptertest.WantFieldError(t, p.Validate(), tt.path)
		})
	}
}

func TestParamsFromYAML(t *testing.T) {
	p := defaults()
	src := "entryType: IP_ADDRESSES\nblacklist: true\noverrides: [10.0.0.0/8, \"2001:db8::/32\"]\nvalidDuration: 1m\nrefreshInterval: 0s\n"
	if err := yaml.Unmarshal([]byte(src), p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if !p.Blacklist || len(p.Overrides) != 2 || p.ValidDuration != time.Minute || p.RefreshInterval != 0 {
		t.Errorf("decoded %+v", p)
	}
}

// check runs one Authorize and reports whether it allowed.
func check(t *testing.T, h *Handler, v any) authorization.Result {
	t.Helper()
	r, err := h.Authorize(context.Background(), &authorization.Instance{Name: "ns/inst", Value: v}, nil)
	if err != nil {
		t.Fatalf("Authorize(%v): %v", v, err)
	}
	return r
}

func newList(t *testing.T, typ string, blacklist bool, entries ...string) *Handler {
	t.Helper()
	p := defaults()
	p.EntryType, p.Blacklist, p.Overrides = typ, blacklist, entries
	h, err := New(context.Background(), adapters.Env{Name: "ns/mylist"}, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(context.Background()) })
	return h
}

func TestLookup(t *testing.T) {
	type probe struct {
		v      any
		listed bool
	}
	tests := []struct {
		typ     string
		entries []string
		probes  []probe
	}{
		{"STRINGS", []string{"spiffe://cluster.local/ns/shop/sa/frontend", "a b", "42", "true", "ünï"}, []probe{
			{"spiffe://cluster.local/ns/shop/sa/frontend", true},
			{"spiffe://cluster.local/ns/shop/sa/Frontend", false},
			{"spiffe://cluster.local/ns/shop/sa/frontend ", false},
			{"a b", true}, {"a", false}, {"", false},
			{"ünï", true}, {"ÜNÏ", false},
			{int64(42), true}, {int64(43), false}, {42, true}, {true, true}, {false, false},
		}},
		{"CASE_INSENSITIVE_STRINGS", []string{"Admin", "straße", "KELVIN", "ǅemal", "bad\xffbyte"}, []probe{
			{"admin", true}, {"ADMIN", true}, {"aDmIn", true}, {"admins", false},
			{"STRASSE", false}, {"STRAßE", true}, {"Straße", true},
			{"\u212Aelvin", true}, // KELVIN SIGN folds with k
			{"ǆemal", true}, {"Ǆemal", true}, {"dzemal", false},
			{"BAD\xffBYTE", true}, {"bad\xfebyte", false},
		}},
		{"IP_ADDRESSES", []string{"10.0.0.0/8", "192.168.1.1", "2001:db8::/32", "::ffff:172.16.0.0/108", "fe80::1", "100.64.1.2/10"}, []probe{
			{"10.0.0.0", true}, {"10.255.255.255", true}, {"9.255.255.255", false}, {"11.0.0.0", false},
			{"192.168.1.1", true}, {"192.168.1.2", false}, {"192.168.1.0", false},
			{"172.16.0.1", true}, {"172.31.255.255", true}, {"172.32.0.0", false}, // from the IPv4-mapped entry
			{"100.64.0.1", true}, {"100.127.255.255", true}, {"100.128.0.0", false}, // host bits of an entry ignored
			{"::ffff:10.1.2.3", true}, {"::ffff:11.1.2.3", false}, // IPv4-mapped values
			{"2001:db8::1", true}, {"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true}, {"2001:db9::", false}, {"2001:db7:ffff::", false},
			{"fe80::1", true}, {"fe80::1%eth0", true}, {"fe80::2", false},
			{"10.1.2.3:8080", true}, {"[2001:db8::5]:443", true}, {"11.1.2.3:80", false},
			{"::", false}, {"0.0.0.0", false},
		}},
		{"IP_ADDRESSES", []string{"::/0"}, []probe{
			// ::/0 holds ::ffff:0:0/96, so every IPv4 address, as IPv4-mapped IPv6.
			{"2001:db8::1", true}, {"1.2.3.4", true}, {"::1", true},
		}},
		{"IP_ADDRESSES", []string{"0.0.0.0/0"}, []probe{
			{"1.2.3.4", true}, {"255.255.255.255", true}, {"::ffff:1.2.3.4", true}, {"2001:db8::1", false}, {"::1", false},
		}},
		{"IP_ADDRESSES", []string{"255.255.255.255", "0.0.0.0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::"}, []probe{
			{"255.255.255.255", true}, {"0.0.0.0", true}, {"255.255.255.254", false}, {"0.0.0.1", false},
			{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true}, {"::", true}, {"::1", false},
		}},
		{"REGEX", []string{"foo.*", "ba[rz]", "(?i)admin", `/api/v[0-9]+/.*`, "x|y"}, []probe{
			{"foo", true}, {"foobar", true}, {"xfoo", false}, // anchored at the start
			{"bar", true}, {"baz", true}, {"barx", false}, {"abar", false}, // and at the end
			{"ADMIN", true}, {"Admin", true}, {"FOO", false}, // a flag stays inside its entry
			{"/api/v2/users", true}, {"/api/vx/users", false}, {"/x/api/v2/users", false},
			{"x", true}, {"y", true}, {"xy", false}, // an alternation stays inside its entry
			{"", false}, {int64(7), false},
		}},
	}
	for _, tt := range tests {
		for _, blacklist := range []bool{false, true} {
			name := fmt.Sprintf("%s %v blacklist=%v", tt.typ, tt.entries, blacklist)
			t.Run(name, func(t *testing.T) {
				h := newList(t, tt.typ, blacklist, tt.entries...)
				for _, pr := range tt.probes {
					r := check(t, h, pr.v)
					wantAllowed := pr.listed != blacklist
					if r.Allowed() != wantAllowed {
						t.Errorf("%#v: allowed=%v (%s), want %v", pr.v, r.Allowed(), r.Message, wantAllowed)
						continue
					}
					if r.ValidDuration != DefaultValidDuration {
						t.Errorf("%#v: valid for %v", pr.v, r.ValidDuration)
					}
					if !r.Allowed() {
						if r.Code != codes.PermissionDenied || r.HTTPStatus != 403 || !strings.Contains(r.Message, "ns/mylist") {
							t.Errorf("%#v: denial %+v", pr.v, r)
						}
						want := "is not on the allow-list"
						if blacklist {
							want = "is on the deny-list"
						}
						if !strings.Contains(r.Message, want) {
							t.Errorf("%#v: message %q lacks %q", pr.v, r.Message, want)
						}
					}
				}
			})
		}
	}
}

// TestMissingAndInvalidValues: nothing to look up is denied by an allow-list and
// allowed by a deny-list; a value that cannot be compared is denied by both.
func TestMissingAndInvalidValues(t *testing.T) {
	tests := []struct {
		name      string
		typ       string
		v         any
		allow     bool // the allow-list's answer
		deny      bool // the deny-list's answer
		inMessage string
	}{
		{"nil value", "STRINGS", nil, false, true, "no value"},
		{"nil IP", "IP_ADDRESSES", nil, false, true, "no value"},
		{"not an IP", "IP_ADDRESSES", "example.com", false, false, `"example.com" is not an IP address`},
		{"empty IP", "IP_ADDRESSES", "", false, false, "is not an IP address"},
		{"a map", "STRINGS", map[string]string{"a": "b"}, false, false, "map[string]string value cannot be looked up"},
		{"a duration", "STRINGS", time.Second, false, false, "cannot be looked up"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entry := "a"
			if tt.typ == "IP_ADDRESSES" {
				entry = "10.0.0.0/8"
			}
			for _, blacklist := range []bool{false, true} {
				h := newList(t, tt.typ, blacklist, entry)
				r := check(t, h, tt.v)
				want := tt.allow
				if blacklist {
					want = tt.deny
				}
				if r.Allowed() != want {
					t.Errorf("blacklist=%v: allowed=%v (%s), want %v", blacklist, r.Allowed(), r.Message, want)
				}
				if !r.Allowed() && !strings.Contains(r.Message, tt.inMessage) {
					t.Errorf("blacklist=%v: message %q lacks %q", blacklist, r.Message, tt.inMessage)
				}
			}
		})
	}
	// A nil instance is a missing value too.
	h := newList(t, "STRINGS", false, "a")
	if r, _ := h.Authorize(context.Background(), nil, nil); r.Allowed() {
		t.Error("a nil instance was allowed by an allow-list")
	}
}

func TestMessageIsBounded(t *testing.T) {
	h := newList(t, "STRINGS", false, "a")
	long := strings.Repeat("é", 1000) + "\n\x00"
	r := check(t, h, long)
	if r.Allowed() || len(r.Message) > 200+len("denied by list ns/mylist: ") {
		t.Fatalf("message of %d bytes: %q", len(r.Message), r.Message)
	}
	if strings.ContainsAny(r.Message, "\n\x00") || !strings.Contains(r.Message, `"éé`) || !strings.Contains(r.Message, "…") {
		t.Errorf("message %q", r.Message)
	}
}

// TestIPAgainstBruteForce compares the merged-range lookup with netip.Prefix.Contains
// over every entry, for random prefixes and addresses.
func TestIPAgainstBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randAddr := func(v6 bool) netip.Addr {
		if v6 {
			var b [16]byte
			// A narrow top keeps addresses and prefixes close enough to overlap.
			b[0], b[1] = 0x20, 0x01
			b[2] = byte(rng.IntN(4))
			for i := 3; i < 16; i++ {
				b[i] = byte(rng.Uint32())
			}
			if rng.IntN(8) == 0 {
				return netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: byte(rng.IntN(4)), 13: byte(rng.Uint32()), 14: byte(rng.Uint32()), 15: byte(rng.Uint32())})
			}
			return netip.AddrFrom16(b)
		}
		return netip.AddrFrom4([4]byte{byte(rng.IntN(4)), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())})
	}
	for round := 0; round < 20; round++ {
		var prefixes []netip.Prefix
		var entries []string
		for i := 0; i < 200; i++ {
			v6 := rng.IntN(2) == 0
			a := randAddr(v6)
			bits := rng.IntN(a.BitLen() + 1)
			p := netip.PrefixFrom(a, bits)
			prefixes = append(prefixes, p.Masked())
			entries = append(entries, p.String())
		}
		m, err := newMatcher(IPAddresses, entries)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2000; i++ {
			a := randAddr(rng.IntN(2) == 0)
			want := false
			for _, p := range prefixes {
				// The reference: compare as IPv6, with IPv4 as IPv4-mapped.
				pa, pb := p.Addr(), p.Bits()
				if pa.Is4() {
					pa, pb = netip.AddrFrom16(pa.As16()), pb+96
				}
				if netip.PrefixFrom(pa, pb).Contains(netip.AddrFrom16(a.As16())) {
					want = true
					break
				}
			}
			if got := m.lookup(a.String()) == listed; got != want {
				t.Fatalf("round %d: %s listed=%v, want %v (entries %v)", round, a, got, want, entries)
			}
		}
	}
}

// TestCaseFoldingAgreesWithEqualFold checks foldKey against strings.EqualFold.
func TestCaseFoldingAgreesWithEqualFold(t *testing.T) {
	words := []string{"a", "A", "k", "K", "\u212A", "s", "S", "ſ", "ß", "ẞ", "SS", "Σ", "σ", "ς", "ǅ", "ǆ", "Ǆ",
		"İ", "i", "I", "ı", "Ω", "ω", "\u2126", "Ꭰ", "ꭰ", "é", "É", "µ", "μ", "Μ", "0", "@", "[", "`", "{"}
	for _, a := range words {
		for _, b := range words {
			if got, want := foldKey(a) == foldKey(b), strings.EqualFold(a, b); got != want {
				t.Errorf("%q vs %q: same key %v, EqualFold %v", a, b, got, want)
			}
		}
	}
}

func TestEntryTypeNames(t *testing.T) {
	for _, typ := range []EntryType{Strings, CaseInsensitiveStrings, IPAddresses, Regex} {
		got, err := ParseEntryType(typ.String())
		if err != nil || got != typ {
			t.Errorf("%v: %v %v", typ, got, err)
		}
	}
}

// TestFoldRuneIsAnOrbitRepresentative: for every rune, every rune it folds with has
// the same key and the key is one of them, so distinct folding classes never share a
// key.
func TestFoldRuneIsAnOrbitRepresentative(t *testing.T) {
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if !utf8.ValidRune(r) {
			continue
		}
		k := foldRune(r)
		inOrbit := k == r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if foldRune(f) != k {
				t.Fatalf("%U and %U fold together but have keys %U and %U", r, f, k, foldRune(f))
			}
			inOrbit = inOrbit || f == k
		}
		if !inOrbit {
			t.Fatalf("the key %U of %U does not fold with it", k, r)
		}
	}
}

// TestAllowHeaders: the allowHeaders go with every answer that allows, of an
// allow-list and of a deny-list, and with no denial; every answer's are its own.
func TestAllowHeaders(t *testing.T) {
	want := []authorization.Header{{Name: "x-listed-by", Value: "ns/mylist"}, {Name: "x-trace", Value: "1", Append: true}}
	for _, blacklist := range []bool{false, true} {
		p := defaults()
		src := "overrides: [a]\nallowHeaders:\n- {name: x-listed-by, value: ns/mylist}\n- {name: x-trace, value: \"1\", append: true}\n"
		if err := yaml.Unmarshal([]byte(src), p); err != nil {
			t.Fatal(err)
		}
		p.Blacklist = blacklist
		h, err := New(context.Background(), adapters.Env{Name: "ns/mylist"}, p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close(context.Background()) })
		allowedValue, deniedValue := "a", "b"
		if blacklist {
			allowedValue, deniedValue = "b", "a"
		}
		r := check(t, h, allowedValue)
		if !r.Allowed() || !slices.Equal(r.Headers, want) {
			t.Fatalf("blacklist=%v: allowed answer %+v, want headers %v", blacklist, r, want)
		}
		r.Headers[0].Value = "changed by the caller"
		if r := check(t, h, allowedValue); !slices.Equal(r.Headers, want) {
			t.Errorf("blacklist=%v: after the caller changed an answer, the next has headers %v", blacklist, r.Headers)
		}
		if r := check(t, h, deniedValue); r.Allowed() || len(r.Headers) != 0 {
			t.Errorf("blacklist=%v: denial %+v, want no headers", blacklist, r)
		}
		// The names go to the core, which removes a client's forged copies.
		if got := h.UpstreamHeaderNames(); !slices.Equal(got, []string{"x-listed-by", "x-trace"}) {
			t.Errorf("blacklist=%v: UpstreamHeaderNames() = %q", blacklist, got)
		}
	}
	if got := newList(t, "STRINGS", false, "a").UpstreamHeaderNames(); len(got) != 0 {
		t.Errorf("a list without allowHeaders: UpstreamHeaderNames() = %q", got)
	}
}

func TestResolveFiles(t *testing.T) {
	for _, tc := range []struct{ file, dir, want string }{
		{"", "/etc/sluice", ""},
		{"callers.txt", "/etc/sluice", "/etc/sluice/callers.txt"},
		{"lists/callers.txt", "cfg", "cfg/lists/callers.txt"},
		{"../shared/callers.txt", "/etc/sluice", "/etc/shared/callers.txt"},
		{"/var/lists/callers.txt", "/etc/sluice", "/var/lists/callers.txt"},
	} {
		p := &Params{File: tc.file}
		p.ResolveFiles(tc.dir)
		if p.File != tc.want {
			t.Errorf("ResolveFiles(%q) of %q = %q, want %q", tc.dir, tc.file, p.File, tc.want)
		}
	}
}
