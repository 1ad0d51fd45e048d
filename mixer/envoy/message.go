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

// Entry is one raw access-log entry inside a message buffer, with what the receiver
// needs to route it: its shard key and, for TCP, the access-log type.
type Entry struct {
	Raw  []byte
	Key  uint64
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

// ScanMessage frames b into m: the identifier, and each entry with its shard key,
// computed from seed (the stream's workload) and the entry's upstream cluster.
func ScanMessage(b []byte, seed uint64, m *Message) error {
	m.Reset()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return malformed("message tag", n)
		}
		b = b[n:]
		if typ != protowire.BytesType || num < msgIdentifier || num > msgTCPLogs {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return malformed("message field", n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return malformed("message field", n)
		}
		b = b[n:]
		switch num {
		case msgIdentifier:
			m.Identifier = v
		case msgHTTPLogs, msgTCPLogs:
			kind := HTTPEntries
			if num == msgTCPLogs {
				kind = TCPEntries
			}
			if m.Kind != NoEntries && m.Kind != kind {
				return fmt.Errorf("%w: message carries both HTTP and TCP entries", ErrMalformed)
			}
			m.Kind = kind
			if err := scanEntries(v, seed, m); err != nil {
				return err
			}
		}
	}
	return nil
}

func scanEntries(b []byte, seed uint64, m *Message) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return malformed("entries tag", n)
		}
		b = b[n:]
		if num != entriesLogEntry || typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return malformed("entries field", n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return malformed("log entry", n)
		}
		b = b[n:]
		cluster, logType := peekCommon(v, m.Kind)
		m.Entries = append(m.Entries, Entry{Raw: v, Key: hashBytes(seed, cluster), Type: logType})
	}
	return nil
}

// peekCommon reads the upstream cluster and, for TCP, the access-log type of an entry
// without decoding it. Envoy writes fields in number order, so an HTTP peek stops
// after the cluster. A malformed entry yields zero values; the shard's decoder reports it.
func peekCommon(entry []byte, kind EntryKind) (cluster []byte, logType uint32) {
	common := firstBytes(entry, entryCommon)
	it := fieldIter{b: common}
	for it.next() {
		switch {
		case it.isBytes(commonUpstreamCluster):
			cluster = it.bytes
			if kind == HTTPEntries {
				return
			}
		case it.isVarint(commonAccessLogType):
			logType = uint32(it.u64)
		case kind == HTTPEntries && it.num > commonUpstreamCluster:
			return
		}
	}
	return
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

// FNV-1a, inlined so that hashing a cluster name costs no allocation or call.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func hashBytes(h uint64, b []byte) uint64 {
	if h == 0 {
		h = fnvOffset
	}
	for _, c := range b {
		h ^= uint64(c)
		h *= fnvPrime
	}
	return h
}

func hashString(h uint64, s string) uint64 {
	if h == 0 {
		h = fnvOffset
	}
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}
