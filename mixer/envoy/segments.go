package envoy

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// Spill holds the copies of what straddles two receive buffers. Its storage is
// obtained once per message, large enough for every copy, so that what was handed
// out stays where it is.
type Spill struct {
	buf []byte
	// Grow returns storage of at least n bytes, for the message's copies.
	Grow func(n int) []byte
}

// Release forgets the storage, which its owner takes back.
func (s *Spill) Release() { s.buf = nil }

func (s *Spill) copyOf(segs [][]byte, i, off, n, total int) []byte {
	if s.buf == nil {
		if s.Grow != nil {
			s.buf = s.Grow(total)[:0]
		} else {
			s.buf = make([]byte, 0, total)
		}
	}
	start := len(s.buf)
	for n > 0 {
		chunk := segs[i][off:]
		if len(chunk) > n {
			chunk = chunk[:n]
		}
		s.buf = append(s.buf, chunk...)
		n -= len(chunk)
		i, off = i+1, 0
	}
	return s.buf[start:len(s.buf):len(s.buf)]
}

// segReader reads protobuf wire data spread over several buffers.
type segReader struct {
	segs  [][]byte
	i     int // current buffer
	off   int // offset in it
	left  int // bytes left in all buffers
	total int
	spill *Spill
}

func newSegReader(segs [][]byte, spill *Spill) *segReader {
	r := &segReader{segs: segs, spill: spill}
	for _, s := range segs {
		r.left += len(s)
	}
	r.total = r.left
	r.normalize()
	return r
}

// normalize moves past exhausted buffers.
func (r *segReader) normalize() {
	for r.i < len(r.segs) && r.off == len(r.segs[r.i]) {
		r.i, r.off = r.i+1, 0
	}
}

func (r *segReader) advance(n int) {
	r.left -= n
	if rem := len(r.segs[r.i]) - r.off; n < rem {
		r.off += n
		return
	}
	for n > 0 {
		rem := len(r.segs[r.i]) - r.off
		if n < rem {
			r.off += n
			return
		}
		n -= rem
		r.i, r.off = r.i+1, 0
	}
	r.normalize()
}

func (r *segReader) varint() (uint64, error) {
	if r.left == 0 {
		return 0, malformed("varint", -1)
	}
	cur := r.segs[r.i][r.off:]
	if cur[0] < 0x80 {
		r.advance(1)
		return uint64(cur[0]), nil
	}
	if v, n := protowire.ConsumeVarint(cur); n > 0 {
		r.advance(n)
		return v, nil
	}
	// A varint across two buffers: gather at most ten bytes.
	var tmp [10]byte
	k := 0
	for i, off := r.i, r.off; k < len(tmp) && i < len(r.segs); {
		if off == len(r.segs[i]) {
			i, off = i+1, 0
			continue
		}
		tmp[k] = r.segs[i][off]
		k, off = k+1, off+1
	}
	v, n := protowire.ConsumeVarint(tmp[:k])
	if n < 0 {
		return 0, malformed("varint", n)
	}
	r.advance(n)
	return v, nil
}

// bytes returns the next n bytes: a slice of the buffer they lie in, or a copy in the
// spill when they straddle two.
func (r *segReader) bytes(n uint64) ([]byte, error) {
	if n > uint64(r.left) {
		return nil, malformed("length", -1)
	}
	if n == 0 {
		return nil, nil
	}
	cur := r.segs[r.i][r.off:]
	if uint64(len(cur)) >= n {
		b := cur[:n:n]
		r.advance(int(n))
		return b, nil
	}
	b := r.spill.copyOf(r.segs, r.i, r.off, int(n), r.total)
	r.advance(int(n))
	return b, nil
}

func (r *segReader) skip(num protowire.Number, typ protowire.Type) error {
	switch typ {
	case protowire.VarintType:
		_, err := r.varint()
		return err
	case protowire.Fixed64Type, protowire.Fixed32Type:
		n := 8
		if typ == protowire.Fixed32Type {
			n = 4
		}
		if r.left < n {
			return malformed("fixed field", -1)
		}
		r.advance(n)
		return nil
	case protowire.BytesType:
		l, err := r.varint()
		if err != nil {
			return err
		}
		if l > uint64(r.left) {
			return malformed("length", -1)
		}
		r.advance(int(l))
		return nil
	}
	return fmt.Errorf("%w: field %d has wire type %d", ErrMalformed, num, typ)
}

func (r *segReader) tag() (protowire.Number, protowire.Type, error) {
	v, err := r.varint()
	if err != nil {
		return 0, 0, err
	}
	num := protowire.Number(v >> 3)
	if num < protowire.MinValidNumber || num > protowire.MaxValidNumber {
		return 0, 0, malformed("tag", -1)
	}
	return num, protowire.Type(v & 7), nil
}

// ScanSegments frames a message received as several buffers (gRPC keeps one per
// HTTP/2 frame) without first copying it into one: entries within one buffer are
// sliced in place, and the few that straddle two are copied into spill.
func ScanSegments(segs [][]byte, m *Message, spill *Spill) error {
	m.Reset()
	r := newSegReader(segs, spill)
	for r.left > 0 {
		num, typ, err := r.tag()
		if err != nil {
			return err
		}
		if typ != protowire.BytesType || num < msgIdentifier || num > msgTCPLogs {
			if err := r.skip(num, typ); err != nil {
				return err
			}
			continue
		}
		l, err := r.varint()
		if err != nil {
			return err
		}
		if l > uint64(r.left) {
			return malformed("message field", -1)
		}
		if num == msgIdentifier {
			if m.Identifier, err = r.bytes(l); err != nil {
				return err
			}
			continue
		}
		kind := HTTPEntries
		if num == msgTCPLogs {
			kind = TCPEntries
		}
		if m.Kind != NoEntries && m.Kind != kind {
			return fmt.Errorf("%w: message carries both HTTP and TCP entries", ErrMalformed)
		}
		m.Kind = kind
		if err := scanSegEntries(r, int(l), m); err != nil {
			return err
		}
	}
	return nil
}

// scanSegEntries reads the log_entry fields of an HTTP or TCP entries message that
// occupies the next n bytes.
func scanSegEntries(r *segReader, n int, m *Message) error {
	end := r.left - n
	for r.left > end {
		num, typ, err := r.tag()
		if err != nil {
			return err
		}
		if num != entriesLogEntry || typ != protowire.BytesType {
			if err := r.skip(num, typ); err != nil {
				return err
			}
			continue
		}
		l, err := r.varint()
		if err != nil {
			return err
		}
		if l > uint64(r.left-end) {
			return malformed("log entry", -1)
		}
		v, err := r.bytes(l)
		if err != nil {
			return err
		}
		e := Entry{Raw: v}
		if m.Kind == TCPEntries {
			e.Type = peekLogType(v)
		}
		m.Entries = append(m.Entries, e)
	}
	if r.left != end {
		return malformed("entries", -1)
	}
	return nil
}
