package h2unary

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// requestHead is what the server reads of a request's header block.
type requestHead struct {
	id    uint32
	ended bool // END_STREAM was on the HEADERS frame
	// Pseudo-headers and the regular fields a call needs; the last of a repeated
	// regular field wins.
	method, path, contentType, encoding, timeout string
	// truncated: the decoded list exceeded maxHeaderList, so the fields are partial.
	truncated bool
}

// headerReader decodes header blocks (a HEADERS frame and its CONTINUATIONs) with
// the connection's HPACK decoder and keeps only the fields a call needs. It holds
// blocks to RFC 9113's rules on fields (§8.2.1, §8.3) as x/net's MetaHeadersFrame
// does, but builds no list of fields: that list, grown field by field, was 40% of
// the bytes a check allocated on this listener, and so of the collector's work.
type headerReader struct {
	dec  *hpack.Decoder
	head requestHead
	// Of the block being read.
	open       bool   // a HEADERS frame without END_HEADERS was read
	remain     uint32 // of the decoded list's bound
	invalid    error  // the first malformed field
	sawRegular bool
	pseudos    uint8 // pseudoBit of each pseudo-header seen
}

func newHeaderReader() *headerReader {
	r := &headerReader{}
	r.dec = hpack.NewDecoder(4096, r.emit)
	r.dec.SetMaxStringLength(maxHeaderList)
	return r
}

var errPseudoAfterRegular = errors.New("pseudo-header after a regular header")

// read takes a HEADERS or CONTINUATION frame. It returns the head when the frame
// ends a well-formed block, nothing while the block goes on, a StreamError when
// the block was malformed (the stream is refused, the connection goes on) and a
// ConnectionError when the connection cannot go on: HPACK's state is lost, or the
// client keeps sending a block past the bounds.
func (r *headerReader) read(f http2.Frame) (*requestHead, error) {
	var frag []byte
	var ended bool
	switch f := f.(type) {
	case *http2.HeadersFrame:
		r.head = requestHead{id: f.StreamID, ended: f.StreamEnded()}
		r.open, r.remain, r.invalid, r.sawRegular, r.pseudos = true, maxHeaderList, nil, false, 0
		r.dec.SetEmitEnabled(true)
		frag, ended = f.HeaderBlockFragment(), f.HeadersEnded()
	case *http2.ContinuationFrame:
		if !r.open {
			// The framer orders frames; this cannot happen from the wire.
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		frag, ended = f.HeaderBlockFragment(), f.HeadersEnded()
	default:
		return nil, fmt.Errorf("h2unary: %T is not part of a header block", f)
	}
	// A block far over the bound, or going on after a malformed field (whose size
	// is no longer counted), is not decoded at all: the connection ends, so that a
	// flood of CONTINUATIONs costs the server nothing.
	if int64(len(frag)) > 2*int64(r.remain) || r.invalid != nil {
		r.open = false
		return nil, http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if _, err := r.dec.Write(frag); err != nil {
		r.open = false
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if !ended {
		return nil, nil
	}
	r.open = false
	if err := r.dec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if r.invalid != nil {
		return nil, http2.StreamError{StreamID: r.head.id, Code: http2.ErrCodeProtocol, Cause: r.invalid}
	}
	return &r.head, nil
}

// emit takes one decoded field.
func (r *headerReader) emit(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		// Not the value: it may be a secret.
		r.fail(fmt.Errorf("invalid value of header %q", hf.Name))
		return
	}
	if strings.HasPrefix(hf.Name, ":") {
		bit := pseudoBit(hf.Name)
		switch {
		case r.sawRegular:
			r.fail(errPseudoAfterRegular)
			return
		case bit == 0:
			r.fail(fmt.Errorf("pseudo-header %q is not one of a request", hf.Name))
			return
		case r.pseudos&bit != 0:
			r.fail(fmt.Errorf("pseudo-header %q repeated", hf.Name))
			return
		}
		r.pseudos |= bit
	} else {
		r.sawRegular = true
		if !validFieldName(hf.Name) {
			r.fail(fmt.Errorf("invalid header name %q", hf.Name))
			return
		}
	}
	size := hf.Size()
	if size > r.remain {
		r.head.truncated, r.remain = true, 0
		r.dec.SetEmitEnabled(false)
		return
	}
	r.remain -= size
	switch hf.Name {
	case ":method":
		r.head.method = hf.Value
	case ":path":
		r.head.path = hf.Value
	case "content-type":
		r.head.contentType = hf.Value
	case "grpc-encoding":
		r.head.encoding = hf.Value
	case "grpc-timeout":
		r.head.timeout = hf.Value
	}
}

func (r *headerReader) fail(err error) {
	r.invalid = err
	r.dec.SetEmitEnabled(false)
}

// pseudoBit numbers a request's pseudo-headers; 0 for any other.
func pseudoBit(name string) uint8 {
	switch name {
	case ":method":
		return 1
	case ":scheme":
		return 2
	case ":path":
		return 4
	case ":authority":
		return 8
	case ":protocol":
		return 16
	}
	return 0
}

// validFieldName: a token in lower case (RFC 9113 §8.2.1).
func validFieldName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		if b >= utf8.RuneSelf || !httpguts.IsTokenRune(rune(b)) || 'A' <= b && b <= 'Z' {
			return false
		}
	}
	return true
}
