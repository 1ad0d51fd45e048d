package list

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzParseFile feeds arbitrary files of every entry type to the parser: it must not
// panic, what it accepts must build a list that holds every entry, and what it
// rejects must be reported at a line of the file.
//
//	go test -run '^$' -fuzz FuzzParseFile -fuzztime 1m ./adapters/list
func FuzzParseFile(f *testing.F) {
	seeds := []struct {
		typ  EntryType
		data string
	}{
		{Strings, "alice\nbob\n"},
		{Strings, "\xef\xbb\xbf# comment\r\n\r\n  spiffe://cluster.local/ns/a/sa/b  \r\n"},
		{Strings, "a # b\n#\n##\n \t \n"},
		{CaseInsensitiveStrings, "Admin\nSTRAßE\n\u212Aelvin\nbad\xffbyte\n"},
		{IPAddresses, "10.0.0.0/8\n192.168.1.1\n2001:db8::/32\n::ffff:10.0.0.0/104\n::/0\n0.0.0.0/0\n"},
		{IPAddresses, "10.0.0.300\nfe80::1%eth0\n1.2.3.4/33\nexample.com\n"},
		{Regex, "^/api/.*\n(?i)admin\nx|y\n"},
		{Regex, "(unclosed\na)|(b\n\\\n[z-a]\n"},
		{Strings, ""},
		{Strings, "\n\n\n"},
	}
	for _, s := range seeds {
		f.Add(uint8(s.typ), []byte(s.data))
	}
	f.Fuzz(func(t *testing.T, typ uint8, data []byte) {
		et := EntryType(typ % 4)
		lines := bytes.Count(data, []byte("\n")) + 1
		for _, e := range splitFile(data) {
			if e.text == "" || e.text != strings.TrimSpace(e.text) || e.text[0] == '#' || strings.Contains(e.text, "\n") {
				t.Fatalf("entry %q at line %d", e.text, e.line)
			}
			if e.line < 1 || e.line > lines {
				t.Fatalf("entry %q at line %d of %d", e.text, e.line, lines)
			}
		}
		entries, errs := parseFile("f", data, et)
		if len(errs) > 0 {
			if entries != nil {
				t.Fatal("a rejected file returned entries")
			}
			for _, err := range errs {
				var le *LineError
				if errors.As(err, &le) && (le.Line < 1 || le.Line > lines || le.File != "f") {
					t.Fatalf("error %v outside the file", err)
				}
			}
			return
		}
		m, err := newMatcher(et, entries)
		if err != nil {
			t.Fatalf("accepted entries %q do not build: %v", entries, err)
		}
		for _, e := range entries {
			switch et {
			case IPAddresses:
				p, _ := parseIPEntry(e)
				if m.lookup(p.Addr().String()) != listed {
					t.Fatalf("the first address of %q is not listed", e)
				}
			case Regex:
				// An entry matches some value only if it is satisfiable; nothing to assert.
				m.lookup(e)
			default:
				if m.lookup(e) != listed {
					t.Fatalf("entry %q is not listed", e)
				}
			}
		}
	})
}
