// Package envoy turns Envoy messages into attribute bags: a wire-level decoder for
// access-log streams that reads only the fields Sluice uses, and Istio's identity rules.
package envoy

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of envoy.service.accesslog.v3 and envoy.data.accesslog.v3, checked
// against the generated descriptors in tests.
const (
	msgIdentifier = 1
	msgHTTPLogs   = 2
	msgTCPLogs    = 3

	identNode    = 1
	identLogName = 2

	entriesLogEntry = 1

	entryCommon = 1
	// HTTPAccessLogEntry
	httpProtocolVersion = 2
	httpRequest         = 3
	httpResponse        = 4
	// TCPAccessLogEntry
	tcpConnectionProperties = 2

	commonUpstreamCluster = 15
	commonAccessLogType   = 33
)

// ErrMalformed wraps every wire-format error.
var ErrMalformed = errors.New("malformed protobuf")

func malformed(what string, n int) error {
	return fmt.Errorf("%w: %s: %v", ErrMalformed, what, protowire.ParseError(n))
}

// EntryKind is the kind of entries a message carries.
type EntryKind uint8

// Entry kinds.
const (
	NoEntries EntryKind = iota
	HTTPEntries
	TCPEntries
)

func (k EntryKind) String() string {
	return [...]string{"none", "http", "tcp"}[k]
}

// Entry is one raw access-log entry inside a message buffer and, for TCP, its
// access-log type, which the receiver reads to follow the stream's connections.
type Entry struct {
	Raw  []byte
	Type uint32
}

// Message is a scanned StreamAccessLogsMessage. Its slices point into the buffer.
type Message struct {
	// Identifier is the raw Identifier, nil when absent (Envoy sends it first only).
	Identifier []byte
	Kind       EntryKind
	Entries    []Entry
}

// Reset empties m, keeping its entry storage.
func (m *Message) Reset() {
	m.Identifier = nil
	m.Kind = NoEntries
	m.Entries = m.Entries[:0]
}

// ScanMessage frames b into m: the identifier and the entries.
func ScanMessage(b []byte, m *Message) error {
	return ScanSegments([][]byte{b}, m, &Spill{})
}

// peekLogType reads the access-log type of a TCP entry without decoding it; a
// malformed entry yields 0, and the shard's decoder reports it.
func peekLogType(entry []byte) uint32 {
	it := fieldIter{b: firstBytes(entry, entryCommon)}
	for it.next() {
		if it.isVarint(commonAccessLogType) {
			return uint32(it.u64)
		}
	}
	return 0
}

// firstBytes returns the first occurrence of a length-delimited field, or nil.
func firstBytes(b []byte, want protowire.Number) []byte {
	it := fieldIter{b: b}
	for it.next() {
		if it.isBytes(want) {
			return it.bytes
		}
	}
	return nil
}
