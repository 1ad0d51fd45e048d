package envoy

import (
	"net/netip"
	"time"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// str views b as a string without copying. The string is valid while the buffer is:
// until the batch it came from has been processed.
func str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// fieldIter walks the fields of one message.
type fieldIter struct {
	b   []byte
	err error
	// current field
	num   protowire.Number
	typ   protowire.Type
	bytes []byte
	u64   uint64
}

func (it *fieldIter) next() bool {
	b := it.b
	if len(b) == 0 || it.err != nil {
		return false
	}
	// Tags, lengths and most values fit in one byte: decode those inline, and leave
	// the rest to protowire. This loop is most of the decoder's time.
	var tag uint64
	if b[0] < 0x80 {
		tag, b = uint64(b[0]), b[1:]
	} else {
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			it.err = malformed("tag", n)
			return false
		}
		tag, b = v, b[n:]
	}
	num := protowire.Number(tag >> 3)
	if num < protowire.MinValidNumber || num > protowire.MaxValidNumber {
		it.err = malformed("tag", -1)
		return false
	}
	it.num, it.typ = num, protowire.Type(tag&7)
	switch it.typ {
	case protowire.BytesType:
		var l uint64
		if len(b) > 0 && b[0] < 0x80 {
			l, b = uint64(b[0]), b[1:]
		} else {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				it.err = malformed("length", n)
				return false
			}
			l, b = v, b[n:]
		}
		if l > uint64(len(b)) {
			it.err = malformed("bytes field", -1)
			return false
		}
		it.bytes, it.b = b[:l], b[l:]
	case protowire.VarintType:
		if len(b) > 0 && b[0] < 0x80 {
			it.u64, it.b = uint64(b[0]), b[1:]
			return true
		}
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			it.err = malformed("varint field", n)
			return false
		}
		it.u64, it.b = v, b[n:]
	case protowire.Fixed64Type:
		if len(b) < 8 {
			it.err = malformed("fixed64 field", -1)
			return false
		}
		it.b, it.bytes = b[8:], nil
	case protowire.Fixed32Type:
		if len(b) < 4 {
			it.err = malformed("fixed32 field", -1)
			return false
		}
		it.b, it.bytes = b[4:], nil
	default:
		n := protowire.ConsumeFieldValue(num, it.typ, b)
		if n < 0 {
			it.err = malformed("field", n)
			return false
		}
		it.b, it.bytes = b[n:], nil
	}
	return true
}

// isBytes reports whether the current field is length-delimited field num.
func (it *fieldIter) isBytes(num protowire.Number) bool {
	return it.num == num && it.typ == protowire.BytesType
}

// isVarint reports whether the current field is varint field num.
func (it *fieldIter) isVarint(num protowire.Number) bool {
	return it.num == num && it.typ == protowire.VarintType
}

// parseDuration decodes google.protobuf.Duration.
func parseDuration(b []byte) (time.Duration, error) {
	// The common shape, both fields present as one-byte tags with varints, inline.
	if len(b) >= 4 && b[0] == 0x08 {
		if secs, n := protowire.ConsumeVarint(b[1:]); n > 0 && len(b) > 1+n && b[1+n] == 0x10 {
			if nanos, m := protowire.ConsumeVarint(b[2+n:]); m > 0 && 2+n+m == len(b) {
				return time.Duration(int64(secs))*time.Second + time.Duration(int32(nanos)), nil
			}
		}
	}
	var secs, nanos int64
	it := fieldIter{b: b}
	for it.next() {
		switch {
		case it.isVarint(1):
			secs = int64(it.u64)
		case it.isVarint(2):
			nanos = int64(int32(it.u64))
		}
	}
	return time.Duration(secs)*time.Second + time.Duration(nanos), it.err
}

// parseTimestamp decodes google.protobuf.Timestamp to Unix nanoseconds.
func parseTimestamp(b []byte) (int64, error) {
	d, err := parseDuration(b) // the same two fields
	return int64(d), err
}

// parseUInt32Value decodes google.protobuf.UInt32Value.
func parseUInt32Value(b []byte) (uint32, error) {
	var v uint32
	it := fieldIter{b: b}
	for it.next() {
		if it.isVarint(1) {
			v = uint32(it.u64)
		}
	}
	return v, it.err
}

// address is a decoded config.core.v3.Address (socket addresses only).
type address struct {
	ip   string
	port uint32
}

// parseAddress decodes Address{socket_address{address, port_value}}.
func parseAddress(b []byte) (address, error) {
	var a address
	it := fieldIter{b: b}
	for it.next() {
		if it.isBytes(1) { // socket_address
			s := fieldIter{b: it.bytes}
			for s.next() {
				switch {
				case s.isBytes(2):
					a.ip = str(s.bytes)
				case s.isVarint(3):
					a.port = uint32(s.u64)
				}
			}
			if s.err != nil {
				return a, s.err
			}
		}
	}
	return a, it.err
}

// addr parses the IP for registry lookups; the zero Addr when it is not an IP.
func (a address) addr() netip.Addr {
	ip, err := netip.ParseAddr(a.ip)
	if err != nil {
		return netip.Addr{}
	}
	return ip
}

// parseCertificate returns the first URI SAN of CertificateProperties.
func parseCertificate(b []byte) (uri string, err error) {
	it := fieldIter{b: b}
	for it.next() {
		if it.isBytes(1) && uri == "" { // subject_alt_name
			s := fieldIter{b: it.bytes}
			for s.next() {
				if s.isBytes(1) { // uri
					uri = str(s.bytes)
				}
			}
			if s.err != nil {
				return "", s.err
			}
		}
	}
	return uri, it.err
}

// tlsInfo is what Sluice reads of TLSProperties.
type tlsInfo struct {
	version       uint64
	sni           string
	localURI      string
	peerURI       string
	hasPeerCert   bool
	hasProperties bool
}

func parseTLS(b []byte) (tlsInfo, error) {
	t := tlsInfo{hasProperties: true}
	it := fieldIter{b: b}
	var err error
	for it.next() {
		switch {
		case it.isVarint(1):
			t.version = it.u64
		case it.isBytes(3):
			t.sni = str(it.bytes)
		case it.isBytes(4):
			t.localURI, err = parseCertificate(it.bytes)
		case it.isBytes(5):
			t.hasPeerCert = true
			t.peerURI, err = parseCertificate(it.bytes)
		}
		if err != nil {
			return t, err
		}
	}
	return t, it.err
}

var tlsVersions = [...]string{"unknown", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}
