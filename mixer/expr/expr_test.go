package expr

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/traits"

	"github.com/sluicemesh/sluice/mixer/attribute"
)

func compiler(t testing.TB) *Compiler {
	t.Helper()
	c, err := NewCompiler(attribute.NewVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testBags() []*attribute.Bag {
	var http, tcp, empty attribute.Bag
	http.SetString(attribute.ContextProtocol, "http")
	http.SetString(attribute.RequestPath, "/api/v1?x=1")
	http.SetString(attribute.DestinationServiceHost, "reviews.default.svc.cluster.local")
	http.SetInt(attribute.ResponseCode, 503)
	http.SetBool(attribute.ConnectionMTLS, true)
	http.SetDuration(attribute.ResponseDuration, 1500*time.Microsecond)
	http.AddHeader(attribute.RequestHeaders, "x-user", "alice")
	http.AddHeader(attribute.RequestHeaders, "content-type", "application/grpc")
	tcp.SetString(attribute.ContextProtocol, "tcp")
	tcp.SetString(attribute.ConnectionEvent, "close")
	tcp.SetBool(attribute.ConnectionMTLS, false)
	tcp.SetInt(attribute.ConnectionSentBytes, 42)
	return []*attribute.Bag{&http, &tcp, &empty}
}

// TestFastPathMatchesCEL evaluates every expression both ways on every bag: the
// results, and whether there was a result, must agree.
func TestFastPathMatchesCEL(t *testing.T) {
	c := compiler(t)
	exprs := []string{
		`"x"`, `42`, `2.5`, `true`,
		`request.path`, `response.code`, `connection.mtls`, `response.duration`,
		`request.headers["x-user"]`, `request.headers["absent"]`,
		`context.protocol == "http"`, `"http" == context.protocol`, `context.protocol != "http"`,
		`response.code == 503`, `response.code != 200`,
		`context.protocol == "tcp" && connection.event in ["open", "close"]`,
		`context.protocol == "http" || context.protocol == "grpc"`,
		`!(context.protocol == "http")`, `connection.mtls`, `!connection.mtls`,
		`request.headers["x-user"] == "alice"`, `request.headers["x-user"] in ["bob", "alice"]`,
		`request.path == "/" && context.protocol == "tcp"`, // error && false
		`context.protocol == "tcp" || request.path == "/"`, // true || error
		`response.code in [500, 503]`,
	}
	a := NewActivation(attribute.NewVocabulary())
	for _, src := range exprs {
		fast, err := c.compile(src, true)
		if err != nil {
			t.Fatalf("compile %q: %v", src, err)
		}
		if !fast.IsFast() {
			t.Errorf("%q should take the fast path", src)
		}
		slow, err := c.compile(src, false)
		if err != nil {
			t.Fatal(err)
		}
		for bi, b := range testBags() {
			a.Reset(b)
			fv, ferr := fast.Eval(a)
			sv, serr := slow.Eval(a)
			if (ferr != nil) != (serr != nil) {
				t.Errorf("%q on bag %d: fast error %v, CEL error %v", src, bi, ferr, serr)
				continue
			}
			if ferr == nil && fmt.Sprint(fv) != fmt.Sprint(sv) {
				t.Errorf("%q on bag %d: fast %v, CEL %v", src, bi, fv, sv)
			}
			if ferr != nil && (!errors.Is(ferr, ErrMissing) || !errors.Is(serr, ErrMissing)) {
				t.Errorf("%q on bag %d: errors %v / %v should both be ErrMissing", src, bi, ferr, serr)
			}
		}
	}
}

func TestCELPath(t *testing.T) {
	c := compiler(t)
	a := NewActivation(attribute.NewVocabulary())
	b := testBags()[0]
	a.Reset(b)
	tests := []struct {
		src  string
		want string
	}{
		{`request.path.startsWith("/api")`, "true"},
		{`request.headers.exists(k, k == "x-user")`, "true"},
		{`size(request.headers)`, "2"},
		// Map attributes are looked up in place and built whole only when needed:
		// every way of reading one must answer as CEL's own map does.
		{`request.headers["x-user"] + "!"`, "alice!"},
		{`request.headers[request.headers["x-user"] == "alice" ? "content-type" : "x-user"]`, "application/grpc"},
		{`"x-user" in request.headers && !("absent" in request.headers)`, "true"},
		{`has(request.headers.absent) || !has(request.headers.x_user) && request.path != ""`, "true"},
		{`request.headers == {"x-user": "alice", "content-type": "application/grpc"}`, "true"},
		{`request.headers != {"x-user": "alice"}`, "true"},
		{`request.headers.all(k, request.headers[k] != "")`, "true"},
		{`request.headers.?absent.orValue("none") + "/" + request.headers[?"x-user"].orValue("none")`, "none/alice"},
		{`request.headers["absent"] == "x" || request.path.startsWith("/")`, "true"},
		{`response.code >= 500 ? "error" : "ok"`, "error"},
		{`destination.service.host.split(".")[0]`, "reviews"},
		{`response.duration > duration("1ms")`, "true"},
	}
	for _, tt := range tests {
		x, err := c.Compile(tt.src)
		if err != nil {
			t.Fatalf("compile %q: %v", tt.src, err)
		}
		if x.IsFast() {
			t.Errorf("%q unexpectedly on the fast path", tt.src)
		}
		got, err := x.AppendString(nil, a)
		if err != nil || string(got) != tt.want {
			t.Errorf("%q = %q, %v; want %q", tt.src, got, err, tt.want)
		}
	}
	// An empty map is CEL's zero value; a non-empty one is not.
	var empty attribute.Bag
	empty.SetMap(attribute.RequestHeaders, attribute.MapOf(map[string]string{}))
	for bag, want := range map[*attribute.Bag]string{&empty: "false", b: "true"} {
		a.Reset(bag)
		got, err := c.MustCompile(`optional.ofNonZeroValue(request.headers).hasValue()`).AppendString(nil, a)
		if err != nil || string(got) != want {
			t.Errorf("optional.ofNonZeroValue(request.headers) present = %q, %v; want %s", got, err, want)
		}
	}
	var _ traits.Zeroer = (*lazyMap)(nil)
	if got, want := fmt.Sprint(&lazyMap{m: attribute.MapOf(map[string]string{"a": "b"})}), fmt.Sprint(types.NewStringStringMap(types.DefaultTypeAdapter, map[string]string{"a": "b"})); got != want {
		t.Errorf("a lazy map prints %q, CEL's own map %q", got, want)
	}
	a.Reset(b)
	x := c.MustCompile(`request.headers["absent"] + "!"`)
	if got, err := x.AppendString(nil, a); err == nil || !strings.Contains(err.Error(), "no such key") {
		t.Errorf("a missing key = %q, %v; want CEL's no such key error", got, err)
	}
}

func TestAppendStringAndFloat(t *testing.T) {
	c := compiler(t)
	a := NewActivation(attribute.NewVocabulary())
	a.Reset(testBags()[0])
	for src, want := range map[string]string{
		`request.path`: "/api/v1?x=1", `response.code`: "503", `connection.mtls`: "true",
		`response.duration`: "1.5ms", `request.headers["x-user"]`: "alice", `source.workload.name`: "unknown",
	} {
		got, _ := c.MustCompile(src).AppendString([]byte("p:"), a)
		if string(got) != "p:"+want {
			t.Errorf("AppendString(%s) = %q, want %q", src, got, "p:"+want)
		}
	}
	for src, want := range map[string]float64{`response.duration`: 1.5, `response.code`: 503, `1`: 1, `connection.mtls`: 1} {
		got, err := c.MustCompile(src).EvalFloat(a)
		if err != nil || got != want {
			t.Errorf("EvalFloat(%s) = %v, %v; want %v", src, got, err, want)
		}
	}
	if _, err := c.MustCompile(`connection.sent.bytes`).EvalFloat(a); !errors.Is(err, ErrMissing) {
		t.Errorf("a missing value should be ErrMissing, got %v", err)
	}
}

func TestCompileErrors(t *testing.T) {
	c := compiler(t)
	for _, src := range []string{``, `request.pth`, `request.path +`, `response.code == "x"`, `foo(1)`,
		// Header names arrive lower-cased: these could never match.
		`request.headers["X-Block"] == "1"`, `has(response.headers.Location)`, `"X-Role" in request.headers`,
		`request.headers[?"X-Debug"].hasValue()`, `request.headers.?Authorization.hasValue()`,
		// ... also where the expression reads the whole map besides.
		`request.headers["X-Block"] == "1" && size(request.headers) > 0`,
		`response.headers.exists(k, k == "x") || has(response.headers.Location)`} {
		if _, err := c.Compile(src); err == nil {
			t.Errorf("Compile(%q) succeeded", src)
		}
	}
	// Other maps keep their keys' case, and a header value may have any.
	for _, src := range []string{`source.labels["App"] == "x"`, `request.headers["x-block"] == "YES"`} {
		if _, err := c.Compile(src); err != nil {
			t.Errorf("Compile(%q): %v", src, err)
		}
	}
}

func TestReferences(t *testing.T) {
	c := compiler(t)
	x := c.MustCompile(`request.headers["x"] == "a" && source.principal.startsWith("spiffe://") && response.code > 1`)
	got := fmt.Sprint(x.References())
	want := fmt.Sprint([]attribute.ID{attribute.SourcePrincipal, attribute.ResponseCode, attribute.RequestHeaders})
	if got != want {
		t.Errorf("References = %v, want %v", got, want)
	}
}

func BenchmarkMatchFast(b *testing.B) {
	c := compiler(b)
	x := c.MustCompile(`context.protocol == "tcp" && connection.event in ["open", "complete"]`)
	a := NewActivation(attribute.NewVocabulary())
	a.Reset(testBags()[1])
	b.ReportAllocs()
	for b.Loop() {
		_, _ = x.EvalBool(a)
	}
}

func BenchmarkMatchCEL(b *testing.B) {
	c := compiler(b)
	x, _ := c.compile(`context.protocol == "tcp" && connection.event in ["open", "complete"]`, false)
	a := NewActivation(attribute.NewVocabulary())
	a.Reset(testBags()[1])
	b.ReportAllocs()
	for b.Loop() {
		_, _ = x.EvalBool(a)
	}
}

func TestKeyReferences(t *testing.T) {
	c := compiler(t)
	tests := []struct {
		src  string
		want string
	}{
		{`request.headers["x-role"] == "admin"`, `[request.headers["x-role"]]`},
		{`request.headers["a"] == "1" && has(request.headers.b)`, `[request.headers["a"] request.headers["b"]]`},
		{`"a" in request.headers`, `[request.headers["a"]]`},
		{`request.headers[?"x-debug"].orValue("") == "1"`, `[request.headers["x-debug"]]`},
		{`request.headers.?authorization.orValue("") == "1"`, `[request.headers["authorization"]]`},
		{`!("x-role" in request.headers) || request.headers["x-role"] != "admin"`, `[request.headers["x-role"]]`},
		{`source.principal in request.headers`, `[source.principal request.headers]`},
		{`request.headers["a"] == "1" && size(request.headers) > 2`, `[request.headers]`},
		{`source.principal.startsWith("spiffe://") && response.code > 1`, `[source.principal response.code]`},
		{`request.headers.exists(k, k.startsWith("x-"))`, `[request.headers]`},
		{`[source.ip, destination.ip].exists(x, x == "1.2.3.4")`, `[source.ip destination.ip]`},
		// Message literals read what their fields' values read.
		{`google.protobuf.StringValue{value: request.headers["x-client"]} == "legacy"`, `[request.headers["x-client"]]`},
		{`google.protobuf.Struct{fields: {"p": source.principal}}.p == "x"`, `[source.principal]`},
	}
	for _, tt := range tests {
		var got []string
		for _, r := range c.MustCompile(tt.src).KeyReferences() {
			got = append(got, r.String())
		}
		if fmt.Sprint(got) != tt.want {
			t.Errorf("%s: KeyReferences = %v, want %v", tt.src, got, tt.want)
		}
		for _, s := range got {
			if r, ok := c.ParseRef(s); !ok || r.String() != s {
				t.Errorf("ParseRef(%q) = %v, %v", s, r, ok)
			}
		}
	}
}

// TestCostLimit: an expression whose work a request's values drive stops at
// MaxCost with an error (not an absence), however large the value, and answers on
// ordinary values; an expression whose worst case stays within MaxCost is not
// tracked at all.
func TestCostLimit(t *testing.T) {
	c := compiler(t)
	nested := c.MustCompile(`request.headers["x-ids"].split(",").exists(a, request.headers["x-ids"].split(",").exists(b, a + b == "zz"))`)
	if !nested.costTracked {
		t.Fatal("a nested comprehension over a header is not cost-tracked")
	}
	for _, src := range []string{
		`source.principal == "spiffe://x" && request.method == "GET"`,
		`request.path.startsWith("/api/") && request.method in ["GET", "HEAD"]`,
		`cidr("10.0.0.0/8").containsIP(ip(source.ip))`,
		`request.path.matches("^/api/v[0-9]+/items$")`,
	} {
		if c.MustCompile(src).costTracked {
			t.Errorf("%s: cost-tracked, though its worst case is within MaxCost", src)
		}
	}
	a := NewActivation(attribute.NewVocabulary())
	for _, tc := range []struct {
		name, value string
		want        bool
		fails       bool
	}{
		{"a few values", "a,b,z", true, false},
		{"eight thousand values", strings.Repeat("a,", 4000), false, true},
	} {
		var bag attribute.Bag
		bag.AddHeader(attribute.RequestHeaders, "x-ids", tc.value)
		a.Reset(&bag)
		start := time.Now()
		got, err := nested.EvalBool(a)
		if tc.fails != (err != nil) || (err == nil && got != tc.want) {
			t.Errorf("%s: %v, %v; want %v, failing: %v", tc.name, got, err, tc.want, tc.fails)
		}
		if errors.Is(err, ErrMissing) {
			t.Errorf("%s: over the cost limit reads as an absent attribute: %v", tc.name, err)
		}
		if el := time.Since(start); el > 500*time.Millisecond {
			t.Errorf("%s: took %v", tc.name, el)
		}
	}
}

// TestTypeErrorIsNotMissing: a value of a type no overload takes is an error of
// the expression, which a rule treats as a failure, not an absent attribute, which
// it treats as no match.
func TestTypeErrorIsNotMissing(t *testing.T) {
	c := compiler(t)
	e := c.MustCompile(`dyn(request.headers["x-n"]) > 5`)
	a := NewActivation(attribute.NewVocabulary())
	var present, absent attribute.Bag
	present.AddHeader(attribute.RequestHeaders, "x-n", "7")
	a.Reset(&present)
	if _, err := e.EvalBool(a); err == nil || errors.Is(err, ErrMissing) {
		t.Errorf("a string compared with an int: %v, want an error that is not ErrMissing", err)
	}
	a.Reset(&absent)
	if _, err := e.EvalBool(a); !errors.Is(err, ErrMissing) {
		t.Errorf("an absent header: %v, want ErrMissing", err)
	}
}
