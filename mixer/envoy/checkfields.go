package envoy

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sluicemesh/sluice/mixer/attribute"
)

// CheckFields are the fields of an ext_authz CheckRequest that CheckDecoder reads,
// flattened into reusable storage. They are filled either from a message grpc-go
// has decoded (SetRequest) or straight from the request's encoding (Unmarshal),
// which builds no message: generating the whole message, maps and all, cost about
// an eighth of a check's CPU, most of it for fields no check reads.
//
// Unmarshal follows proto.Unmarshal's semantics for every field it reads: the last
// value of a scalar wins, a message field sent twice is merged, a oneof takes its
// last member, map keys are unique, and a field of an unexpected wire type is
// skipped as unknown. Whenever proto.Unmarshal accepts a request, the two fill the
// same fields (FuzzCheckFields checks this). Unmarshal is more lenient in one way:
// fields no check reads, such as the metadata contexts, are skipped unparsed.
type CheckFields struct {
	hasAttributes bool
	source        peerFields
	destination   peerFields
	extensions    pairs
	sni           string

	hasTime   bool
	timeSecs  int64
	timeNanos int32

	hasHTTP                                 bool
	id, method, path, host, scheme, version string
	size                                    int64
	headers                                 pairs
	hasHeaderMap                            bool
	headerMap                               []headerValue
	// mapped: headers were filled from headerMap (headersFromMap).
	mapped bool
}

type peerFields struct {
	hasSocket bool // the address's oneof holds a socket address
	ip        string
	port      uint32 // zero unless the port oneof holds port_value
	labels    pairs
	principal string
	cert      string
}

// headerValue is one config.core.v3.HeaderValue.
type headerValue struct {
	key, value string
	raw        []byte
	// slot is the header's place in the headers, once headersFromMap has run.
	slot int
}

// text is the header's value: raw_value stands in for an empty value, as Envoy
// sends it with encode_raw_headers.
func (hv *headerValue) text() string {
	if hv.value == "" {
		return str(hv.raw)
	}
	return hv.value
}

// Reset empties f for reuse, keeping its storage.
func (f *CheckFields) Reset() {
	f.extensions.reset()
	f.headers.reset()
	f.source.labels.reset()
	f.destination.labels.reset()
	clear(f.headerMap)
	ext, hdr, hm := f.extensions, f.headers, f.headerMap[:0]
	if cap(hm) > MaxHeaders+1 {
		hm = nil // a proto-built request's: not kept for the next
	}
	src, dst := f.source.labels, f.destination.labels
	*f = CheckFields{extensions: ext, headers: hdr, headerMap: hm}
	f.source.labels, f.destination.labels = src, dst
}

// HasAttributes reports whether the request carried its AttributeContext.
func (f *CheckFields) HasAttributes() bool { return f.hasAttributes }

// MaxHeaders bounds the headers a check may carry; Envoy's own default limit is
// 100, so a request above it was not built by an Envoy. The decoder keeps at most
// one more of each kind, so that a message of many tiny headers cannot make it
// hold many times its size.
const MaxHeaders = 1024

// NumHeaders is the number of headers the request carries, up to MaxHeaders+1: the
// distinct keys of its headers map and every entry of its header_map, where a
// header sent twice is two entries. It is the same before and after Decode.
func (f *CheckFields) NumHeaders() int {
	n := len(f.headerMap)
	if !f.mapped {
		n += len(f.headers.kv)
	}
	return min(n, MaxHeaders+1)
}

// SetRequest fills f from a decoded request; f's strings are req's.
func (f *CheckFields) SetRequest(req *authv3.CheckRequest) {
	f.Reset()
	ac := req.GetAttributes()
	if ac == nil {
		return
	}
	f.hasAttributes = true
	f.source.setPeer(ac.GetSource())
	f.destination.setPeer(ac.GetDestination())
	for k, v := range ac.GetContextExtensions() {
		f.extensions.set(k, v)
	}
	f.sni = ac.GetTlsSession().GetSni()
	r := ac.GetRequest()
	if t := r.GetTime(); t != nil {
		f.hasTime, f.timeSecs, f.timeNanos = true, t.GetSeconds(), t.GetNanos()
	}
	h := r.GetHttp()
	if h == nil {
		return
	}
	f.hasHTTP = true
	f.id, f.method, f.path, f.host = h.GetId(), h.GetMethod(), h.GetPath(), h.GetHost()
	f.scheme, f.version, f.size = h.GetScheme(), h.GetProtocol(), h.GetSize()
	for k, v := range h.GetHeaders() {
		f.headers.set(k, v)
	}
	if hm := h.GetHeaderMap(); hm != nil {
		f.hasHeaderMap = true
		for _, hv := range hm.GetHeaders() {
			f.headerMap = append(f.headerMap, headerValue{key: hv.GetKey(), value: hv.GetValue(), raw: hv.GetRawValue()})
		}
	}
}

func (p *peerFields) setPeer(peer *authv3.AttributeContext_Peer) {
	if sa := peer.GetAddress().GetSocketAddress(); sa != nil {
		p.hasSocket, p.ip, p.port = true, sa.GetAddress(), sa.GetPortValue()
	}
	for k, v := range peer.GetLabels() {
		p.labels.set(k, v)
	}
	p.principal, p.cert = peer.GetPrincipal(), peer.GetCertificate()
}

// Unmarshal fills f from the encoding of a CheckRequest. f's strings view b, which
// must not change while they are in use.
func (f *CheckFields) Unmarshal(b []byte) error {
	f.Reset()
	it := fieldIter{b: b}
	for it.next() {
		if it.isBytes(1) { // attributes
			f.hasAttributes = true
			if err := f.attributes(it.bytes); err != nil {
				return fmt.Errorf("attributes: %w", err)
			}
		}
	}
	return it.err
}

// The field numbers of envoy.service.auth.v3.AttributeContext and the messages in it.
const (
	acSource      = 1
	acDestination = 2
	acRequest     = 4
	acExtensions  = 10
	acTLSSession  = 12

	reqTime = 1
	reqHTTP = 2

	httpID        = 1
	httpMethod    = 2
	httpHeaders   = 3
	httpPath      = 4
	httpHost      = 5
	httpScheme    = 6
	httpSize      = 9
	httpProtocol  = 10
	httpHeaderMap = 13

	peerAddress     = 1
	peerLabels      = 3
	peerPrincipal   = 4
	peerCertificate = 5
)

func (f *CheckFields) attributes(b []byte) error {
	it := fieldIter{b: b}
	for it.next() {
		var err error
		switch {
		case it.isBytes(acSource):
			err = f.source.peer(it.bytes)
		case it.isBytes(acDestination):
			err = f.destination.peer(it.bytes)
		case it.isBytes(acRequest):
			err = f.request(it.bytes)
		case it.isBytes(acExtensions):
			err = f.extensions.entry(it.bytes)
		case it.isBytes(acTLSSession):
			err = eachString(it.bytes, 1, &f.sni)
		}
		if err != nil {
			return fmt.Errorf("field %d: %w", it.num, err)
		}
	}
	return it.err
}

func (p *peerFields) peer(b []byte) error {
	it := fieldIter{b: b}
	for it.next() {
		var err error
		switch {
		case it.isBytes(peerAddress):
			err = p.addressField(it.bytes)
		case it.isBytes(peerLabels):
			err = p.labels.entry(it.bytes)
		case it.isBytes(peerPrincipal):
			p.principal, err = utf8String(it.bytes)
		case it.isBytes(peerCertificate):
			p.cert, err = utf8String(it.bytes)
		}
		if err != nil {
			return err
		}
	}
	return it.err
}

// addressField reads config.core.v3.Address, whose oneof is socket_address (1), pipe (2)
// or envoy_internal_address (3); a socket address sent twice is merged.
func (p *peerFields) addressField(b []byte) error {
	it := fieldIter{b: b}
	for it.next() {
		if it.typ != protowire.BytesType {
			continue
		}
		switch it.num {
		case 1:
			if !p.hasSocket {
				p.hasSocket, p.ip, p.port = true, "", 0
			}
			if err := p.socket(it.bytes); err != nil {
				return err
			}
		case 2, 3:
			p.hasSocket, p.ip, p.port = false, "", 0
		}
	}
	return it.err
}

// socket reads SocketAddress: address (2), and the port oneof, port_value (3) or
// named_port (4).
func (p *peerFields) socket(b []byte) error {
	it := fieldIter{b: b}
	for it.next() {
		switch {
		case it.isBytes(2):
			var err error
			if p.ip, err = utf8String(it.bytes); err != nil {
				return err
			}
		case it.isVarint(3):
			p.port = uint32(it.u64)
		case it.isBytes(4):
			p.port = 0
		}
	}
	return it.err
}

func (f *CheckFields) request(b []byte) error {
	it := fieldIter{b: b}
	for it.next() {
		switch {
		case it.isBytes(reqTime):
			f.hasTime = true
			t := fieldIter{b: it.bytes}
			for t.next() {
				switch {
				case t.isVarint(1):
					f.timeSecs = int64(t.u64)
				case t.isVarint(2):
					f.timeNanos = int32(t.u64)
				}
			}
			if t.err != nil {
				return t.err
			}
		case it.isBytes(reqHTTP):
			f.hasHTTP = true
			if err := f.http(it.bytes); err != nil {
				return err
			}
		}
	}
	return it.err
}

func (f *CheckFields) http(b []byte) error {
	it := fieldIter{b: b}
	for it.next() {
		var err error
		switch {
		case it.isVarint(httpSize):
			f.size = int64(it.u64)
		case it.typ != protowire.BytesType:
		case it.num == httpID:
			f.id, err = utf8String(it.bytes)
		case it.num == httpMethod:
			f.method, err = utf8String(it.bytes)
		case it.num == httpHeaders:
			if len(f.headers.kv) <= MaxHeaders { // past it the request is refused: hold no more
				err = f.headers.entry(it.bytes)
			}
		case it.num == httpPath:
			f.path, err = utf8String(it.bytes)
		case it.num == httpHost:
			f.host, err = utf8String(it.bytes)
		case it.num == httpScheme:
			f.scheme, err = utf8String(it.bytes)
		case it.num == httpProtocol:
			f.version, err = utf8String(it.bytes)
		case it.num == httpHeaderMap:
			f.hasHeaderMap = true
			err = f.headerValues(it.bytes)
		}
		if err != nil {
			return fmt.Errorf("http field %d: %w", it.num, err)
		}
	}
	return it.err
}

// headerValues reads config.core.v3.HeaderMap: repeated HeaderValue (1) of key (1),
// value (2) and raw_value (3).
func (f *CheckFields) headerValues(b []byte) error {
	it := fieldIter{b: b}
	for it.next() {
		if !it.isBytes(1) || len(f.headerMap) > MaxHeaders {
			continue
		}
		var hv headerValue
		h := fieldIter{b: it.bytes}
		for h.next() {
			var err error
			switch {
			case h.isBytes(1):
				hv.key, err = utf8String(h.bytes)
			case h.isBytes(2):
				hv.value, err = utf8String(h.bytes)
			case h.isBytes(3):
				hv.raw = h.bytes
			}
			if err != nil {
				return err
			}
		}
		if h.err != nil {
			return h.err
		}
		f.headerMap = append(f.headerMap, hv)
	}
	return it.err
}

// eachString sets *dst to the last string field num of message b.
func eachString(b []byte, num protowire.Number, dst *string) error {
	it := fieldIter{b: b}
	for it.next() {
		if it.isBytes(num) {
			var err error
			if *dst, err = utf8String(it.bytes); err != nil {
				return err
			}
		}
	}
	return it.err
}

var errUTF8 = errors.New("string field contains invalid UTF-8")

// utf8String views b as a string, refused as protobuf refuses it when it is not
// UTF-8.
func utf8String(b []byte) (string, error) {
	s := str(b)
	if !utf8.ValidString(s) {
		return "", errUTF8
	}
	return s, nil
}

// pairs is a string map kept as pairs in arrival order, each key once: as in a
// protobuf map, the last value of a key wins. Small maps are searched in place; a
// large one gets an index, so that a request of a million entries costs linear time.
type pairs struct {
	kv    []attribute.KV
	index map[string]int
}

const pairsScanned = 32

// set sets the value of k, replacing the one it has.
func (p *pairs) set(k, v string) {
	if i, ok := p.find(k); ok {
		p.kv[i].Value = v
		return
	}
	p.add(k, v)
}

// find returns the place of k in kv.
func (p *pairs) find(k string) (int, bool) {
	if p.index != nil {
		i, ok := p.index[k]
		return i, ok
	}
	for i := range p.kv {
		if p.kv[i].Key == k {
			return i, true
		}
	}
	return 0, false
}

// add appends k, which p does not hold, and returns its place in kv.
func (p *pairs) add(k, v string) int {
	i := len(p.kv)
	p.kv = append(p.kv, attribute.KV{Key: k, Value: v})
	switch {
	case p.index != nil:
		p.index[k] = i
	case len(p.kv) > pairsScanned:
		p.index = make(map[string]int, 2*len(p.kv))
		for j, kv := range p.kv {
			p.index[kv.Key] = j
		}
	}
	return i
}

// get returns the value of k.
func (p *pairs) get(k string) string {
	if i, ok := p.find(k); ok {
		return p.kv[i].Value
	}
	return ""
}

// entry adds one encoded map<string, string> entry: key (1) and value (2), either
// missing meaning "".
func (p *pairs) entry(b []byte) error {
	var k, v string
	it := fieldIter{b: b}
	for it.next() {
		var err error
		switch {
		case it.isBytes(1):
			k, err = utf8String(it.bytes)
		case it.isBytes(2):
			v, err = utf8String(it.bytes)
		}
		if err != nil {
			return err
		}
	}
	if it.err != nil {
		return it.err
	}
	p.set(k, v)
	return nil
}

func (p *pairs) reset() {
	clear(p.kv) // drop the previous request's strings
	p.kv, p.index = p.kv[:0], nil
}

// goMap returns the pairs as a new Go map.
func (p *pairs) goMap() map[string]string {
	m := make(map[string]string, len(p.kv))
	for _, kv := range p.kv {
		m[kv.Key] = kv.Value
	}
	return m
}

// headersFromMap fills the empty headers from header_map, as Envoy sends them when
// configured to: keys lower-cased, raw_value standing in for an empty value, and a
// header that came more than once (with encode_raw_headers each of its values is an
// entry of its own) holding all its values joined with "," in arrival order, as
// Envoy joins them for the headers map. Keeping only one of them would let a client
// pass a policy on a header by sending it twice.
func (f *CheckFields) headersFromMap() {
	f.mapped = true
	repeated := false
	for j := range f.headerMap {
		hv := &f.headerMap[j]
		k := strings.ToLower(hv.key)
		i, found := f.headers.find(k)
		if found {
			repeated = true
		} else {
			i = f.headers.add(k, hv.text())
		}
		hv.slot = i
	}
	if repeated {
		f.joinRepeated()
	}
}

// joinRepeated gives every header that header_map holds more than once all its
// values joined with ",", in arrival order. Headers sent once keep the string they
// have; the joined values share one allocation, and the work is linear however
// often a header repeats.
func (f *CheckFields) joinRepeated() {
	kv := f.headers.kv
	// next[i] is first header i's joined length plus one, then where its next
	// value goes (-1 for a header sent once); end[i] is where its value ends.
	work := make([]int, 2*len(kv))
	next, end := work[:len(kv)], work[len(kv):]
	for j := range f.headerMap {
		hv := &f.headerMap[j]
		next[hv.slot] += len(hv.text()) + 1
	}
	total := 0
	for i := range kv {
		n := next[i] - 1
		if n == len(kv[i].Value) { // one value: more would add a comma at least
			next[i], end[i] = -1, -1
			continue
		}
		next[i], end[i] = total, total+n
		total += n
	}
	buf := make([]byte, total)
	for j := range f.headerMap {
		hv := &f.headerMap[j]
		i := hv.slot
		if next[i] < 0 {
			continue
		}
		next[i] += copy(buf[next[i]:], hv.text())
		if next[i] < end[i] { // a value follows
			buf[next[i]] = ','
			next[i]++
		}
	}
	joined, from := str(buf), 0
	for i := range kv {
		if end[i] >= 0 {
			kv[i].Value = joined[from:end[i]]
			from = end[i]
		}
	}
}
