package h2unary

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

func TestOnlyIndexed(t *testing.T) {
	for _, tt := range []struct {
		name  string
		block []byte
		want  bool
	}{
		{"empty", nil, false},
		{"static index", []byte{0x88}, true},
		{"three indices", []byte{0x88, 0xbf, 0xbe}, true},
		{"index past 126", []byte{0xff, 0x81, 0x01}, true},
		{"index cut short", []byte{0xff, 0x81}, false},
		{"literal with indexing", []byte{0x88, 0x40, 0x01, 'a', 0x01, 'b'}, false},
		{"literal with an indexed name", []byte{0x5f, 0x10, 0x01, '0'}, false},
		{"table size update", []byte{0x20, 0x88}, false},
	} {
		if got := onlyIndexed(tt.block); got != tt.want {
			t.Errorf("%s: onlyIndexed(%x) = %v, want %v", tt.name, tt.block, got, tt.want)
		}
	}
}

// TestOKBlocksFollowTheTable: successful answers sent from the kept encodings
// decode, with the client's one decoder, as the fields they stand for, whatever
// came between them: error answers whose fields entered the table, and changes of
// the table's size, to one too small for all the fields and to none. The
// connection keeps the blocks only while they are wholly indexed.
func TestOKBlocksFollowTheTable(t *testing.T) {
	ts := startServer(t, Options{}, false)
	r, id := dialRaw(t, ts.addr), uint32(1)
	// collect reads until the streams ids end, and returns the fields of each.
	collect := func(ids ...uint32) map[uint32]map[string]string {
		t.Helper()
		got := map[uint32]map[string]string{}
		for _, id := range ids {
			got[id] = map[string]string{}
		}
		_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for open := len(ids); open > 0; {
			f, err := r.fr.ReadFrame()
			if err != nil {
				t.Fatalf("streams %v: %v", ids, err)
			}
			h, ok := f.(*http2.MetaHeadersFrame)
			if !ok || got[h.StreamID] == nil {
				continue
			}
			for _, hf := range h.Fields {
				if _, dup := got[h.StreamID][hf.Name]; dup {
					t.Errorf("stream %d: %s twice", h.StreamID, hf.Name)
				}
				got[h.StreamID][hf.Name] = hf.Value
			}
			if h.StreamEnded() {
				open--
			}
		}
		return got
	}
	send := func(path, msg string) uint32 {
		r.headers(id, path, false)
		_ = r.fr.WriteData(id, true, reqBody([]byte(msg)))
		id += 2
		return id - 2
	}
	call := func(path string, msg string) map[string]string {
		t.Helper()
		sent := send(path, msg)
		return collect(sent)[sent]
	}
	// reconnect closes the client's connection, waits for the server's side to
	// end, and opens a new one.
	reconnect := func(settings ...http2.Setting) {
		t.Helper()
		r.c.Close()
		waitFor(t, func() bool {
			ts.mu.Lock()
			defer ts.mu.Unlock()
			return len(ts.active) == 0
		}, "the connection to close")
		r, id = dialRaw(t, ts.addr, settings...), 1
	}
	check := func(step string, got map[string]string, want ...string) {
		t.Helper()
		for i := 0; i+1 < len(want); i += 2 {
			if got[want[i]] != want[i+1] {
				t.Errorf("%s: %s = %q, want %q (all: %v)", step, want[i], got[want[i]], want[i+1], got)
			}
		}
		if len(got) != len(want)/2 {
			t.Errorf("%s: fields %v, want %v", step, got, want)
		}
	}
	ok := func(step string) {
		t.Helper()
		for i := range 3 {
			check(step, call(echoPath, string(rune('a'+i))), ":status", "200", "content-type", "application/grpc", "grpc-status", "0")
		}
	}
	fail := func(step, msg string) {
		t.Helper()
		got := call(failPath, msg)
		delete(got, "grpc-status-details-bin")
		check(step, got, ":status", "200", "content-type", "application/grpc", "grpc-status", "7", "grpc-message", msg)
	}
	// kept tells whether the connection holds the OK blocks, as it should once
	// the table holds their fields and nothing else came since.
	kept := func(step string, want bool) {
		t.Helper()
		c := ts.onlyConn(t)
		c.mu.Lock()
		head, trail := c.okHead, c.okTrail
		c.mu.Unlock()
		if got := head != nil && trail != nil; got != want {
			t.Errorf("%s: the connection keeps OK blocks %x and %x; want them kept: %v", step, head, trail, want)
		}
	}
	setTable := func(size uint32) {
		t.Helper()
		_ = r.fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: size})
		r.sync(t)
	}

	ok("first answers")
	fail("an error", "first")
	ok("after an error")
	fail("another error", "second")
	fail("a third error", "third")
	ok("after errors")
	kept("after errors", true)
	// content-type's entry (60 bytes) and grpc-status's (44) do not fit together:
	// each answer's fields evict the other's.
	setTable(100)
	ok("a table for one entry")
	kept("a table for one entry", false)
	fail("an error in a small table", "fourth")
	ok("small table, after an error")
	setTable(0)
	ok("no table")
	kept("no table", false)
	fail("an error without a table", "fifth")
	ok("no table, after an error")

	// A connection whose first answer is an error: the next answer's headers
	// are wholly indexed before its trailer's grpc-status: 0 enters the table.
	reconnect()
	fail("an error first", "sixth")
	ok("after an error first")
	kept("after an error first", true)

	// Answers held by flow control: the second answer's headers are encoded
	// before the first answer's trailer.
	reconnect(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	first, second := send(echoPath, "x"), send(echoPath, "y")
	heads := map[uint32]map[string]string{}
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(heads) < 2 { // both answers' headers; their messages wait for window
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("held answers' headers: %v", err)
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok {
			heads[h.StreamID] = map[string]string{}
			for _, hf := range h.Fields {
				heads[h.StreamID][hf.Name] = hf.Value
			}
		}
	}
	_ = r.fr.WriteWindowUpdate(first, 1<<20)
	_ = r.fr.WriteWindowUpdate(second, 1<<20)
	for sid, trailer := range collect(first, second) {
		for k, v := range trailer {
			heads[sid][k] = v
		}
		check(fmt.Sprintf("held answer %d", sid), heads[sid], ":status", "200", "content-type", "application/grpc", "grpc-status", "0")
	}
	_ = r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	r.sync(t)
	ok("after held answers")
	kept("after held answers", true)
}
