package h2unary

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// blockFrames encodes fields with enc and splits the block into a HEADERS frame and
// CONTINUATIONs of at most chunk bytes each (0: one frame).
func blockFrames(t *testing.T, enc *hpack.Encoder, hb *bytes.Buffer, id uint32, chunk int, fields ...string) []byte {
	t.Helper()
	hb.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		if err := enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
			t.Fatal(err)
		}
	}
	return splitBlock(id, hb.Bytes(), chunk)
}

func splitBlock(id uint32, block []byte, chunk int) []byte {
	if chunk <= 0 {
		chunk = len(block)
	}
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	first := block[:min(chunk, len(block))]
	rest := block[len(first):]
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(rest) == 0, EndStream: true})
	for len(rest) > 0 {
		n := min(chunk, len(rest))
		_ = fr.WriteContinuation(id, n == len(rest), rest[:n])
		rest = rest[n:]
	}
	return out.Bytes()
}

// readBlock feeds a block's frames to r and returns what the last one gave.
func readBlock(t *testing.T, r *headerReader, wire []byte) (*requestHead, error) {
	t.Helper()
	fr := http2.NewFramer(nil, bytes.NewReader(wire))
	fr.SetMaxReadFrameSize(1 << 20)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("framer: %v", err)
		}
		h, err := r.read(f)
		if h != nil || err != nil {
			return h, err
		}
	}
}

func TestHeaderReader(t *testing.T) {
	req := []string{":method", "POST", ":scheme", "http", ":path", "/a.B/C", ":authority", "x",
		"content-type", "application/grpc", "grpc-timeout", "5m", "grpc-encoding", "identity"}
	big := strings.Repeat("v", 30000)
	for _, tt := range []struct {
		name   string
		fields []string
		chunk  int
		raw    []byte // a header block sent as is, instead of fields
		// want: the fields read, a StreamError or a ConnectionError of this code.
		want       requestHead
		streamErr  bool
		connErr    bool
		connCode   http2.ErrCode
		errContain string
	}{
		{name: "one frame", fields: req,
			want: requestHead{id: 1, ended: true, method: "POST", path: "/a.B/C", contentType: "application/grpc", timeout: "5m", encoding: "identity"}},
		{name: "split into continuations", fields: req, chunk: 3,
			want: requestHead{id: 1, ended: true, method: "POST", path: "/a.B/C", contentType: "application/grpc", timeout: "5m", encoding: "identity"}},
		{name: "last repeated field wins", fields: append(append([]string{}, req...), "content-type", "application/grpc+proto"),
			want: requestHead{id: 1, ended: true, method: "POST", path: "/a.B/C", contentType: "application/grpc+proto", timeout: "5m", encoding: "identity"}},
		{name: "over the list bound", fields: append(append([]string{}, req...), "x-a", big, "x-b", big, "x-c", big),
			want: requestHead{id: 1, ended: true, method: "POST", path: "/a.B/C", contentType: "application/grpc", timeout: "5m", encoding: "identity", truncated: true}},
		{name: "upper-case name", fields: []string{":method", "POST", "Content-Type", "application/grpc"}, streamErr: true, errContain: "invalid header name"},
		{name: "name not a token", fields: []string{":method", "POST", "x y", "1"}, streamErr: true, errContain: "invalid header name"},
		{name: "value with a newline", fields: []string{":method", "POST", "x-a", "1\n2"}, streamErr: true, errContain: "invalid value"},
		{name: "pseudo after regular", fields: []string{"x-a", "1", ":method", "POST"}, streamErr: true, errContain: "pseudo-header after"},
		{name: "response pseudo-header", fields: []string{":status", "200"}, streamErr: true, errContain: "not one of a request"},
		{name: "repeated pseudo-header", fields: []string{":path", "/a", ":path", "/b"}, streamErr: true, errContain: "repeated"},
		{name: "not HPACK", raw: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, connErr: true, connCode: http2.ErrCodeCompression},
		{name: "block ends inside a field", raw: []byte{0x40, 0x05, 'x'}, connErr: true, connCode: http2.ErrCodeCompression},
		{name: "index out of the table", raw: []byte{0xbf, 0x20}, connErr: true, connCode: http2.ErrCodeCompression},
		{name: "continuation after a malformed field", fields: []string{"Bad", "1", "x-pad", strings.Repeat("p", 64)}, chunk: 8, connErr: true, connCode: http2.ErrCodeProtocol},
		{name: "fragment far over the bound", raw: bytes.Repeat([]byte{0x80 | 2}, 2*maxHeaderList+1), connErr: true, connCode: http2.ErrCodeProtocol},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newHeaderReader()
			var hb bytes.Buffer
			enc := hpack.NewEncoder(&hb)
			wire := tt.raw
			if wire == nil {
				wire = blockFrames(t, enc, &hb, 1, tt.chunk, tt.fields...)
			} else {
				wire = splitBlock(1, wire, 0)
			}
			h, err := readBlock(t, r, wire)
			var se http2.StreamError
			var ce http2.ConnectionError
			switch {
			case tt.streamErr:
				if !errors.As(err, &se) || se.Code != http2.ErrCodeProtocol || se.StreamID != 1 || !strings.Contains(se.Cause.Error(), tt.errContain) {
					t.Fatalf("got %+v, %v; want a PROTOCOL_ERROR StreamError on stream 1 saying %q", h, err, tt.errContain)
				}
			case tt.connErr:
				if !errors.As(err, &ce) || http2.ErrCode(ce) != tt.connCode {
					t.Fatalf("got %+v, %v; want ConnectionError %v", h, err, tt.connCode)
				}
				return
			default:
				if err != nil || h == nil || *h != tt.want {
					t.Fatalf("got %+v, %v; want %+v", h, err, tt.want)
				}
			}
			// The decoder's table stays in step with the client's: the next block,
			// mostly indices into it, reads in full.
			h, err = readBlock(t, r, blockFrames(t, enc, &hb, 3, 0, req...))
			if err != nil || h == nil || h.path != "/a.B/C" || h.contentType != "application/grpc" || h.truncated {
				t.Fatalf("next block: %+v, %v", h, err)
			}
		})
	}
}

func TestValidFieldName(t *testing.T) {
	for name, want := range map[string]bool{
		"content-type": true, "x-b3-traceid": true, "a!#$%&'*+-.^_`|~9": true,
		"": false, "Content-Type": false, "x y": false, "x:y": false, "é": false, "x\x00": false,
	} {
		if got := validFieldName(name); got != want {
			t.Errorf("validFieldName(%q) = %v, want %v", name, got, want)
		}
	}
}
