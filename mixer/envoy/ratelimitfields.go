package envoy

import (
	"fmt"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
)

// RateLimitFields are the fields of a rate-limit service request
// (envoy.service.ratelimit.v3.RateLimitRequest) that Sluice reads, in reusable
// storage. Like CheckFields, they are filled from a message grpc-go decoded
// (SetRequest) or from the request's encoding (Unmarshal), which builds no
// message: a request of two descriptors is some twenty allocations as a message.
//
// Unmarshal follows proto.Unmarshal's semantics: the last value of a scalar wins,
// every descriptors or entries field is one more element, the limit and
// hits_addend messages of a descriptor merge when sent twice, strings must be
// UTF-8, and a field of an unexpected wire type is skipped as unknown. Whenever
// proto.Unmarshal accepts a request, the two fill the same fields
// (FuzzRateLimitFields checks this).
type RateLimitFields struct {
	Domain string
	// HitsAddend is the request's hits_addend; 0 when absent.
	HitsAddend  uint32
	Descriptors []RateLimitDescriptor

	entries []RateLimitEntry // storage of the descriptors' entries
}

// RateLimitDescriptor is one envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.
type RateLimitDescriptor struct {
	Entries []RateLimitEntry
	// HasLimit says the descriptor carries a limit override: RequestsPerUnit per
	// Unit (an envoy.type.v3.RateLimitUnit).
	HasLimit        bool
	RequestsPerUnit uint32
	Unit            int32
	// HasHitsAddend says the descriptor carries its own hits_addend.
	HasHitsAddend  bool
	HitsAddend     uint64
	IsNegativeHits bool
}

// RateLimitEntry is one key and value of a descriptor.
type RateLimitEntry struct{ Key, Value string }

// Reset empties f, keeping its storage.
func (f *RateLimitFields) Reset() {
	clear(f.entries)
	clear(f.Descriptors)
	*f = RateLimitFields{Descriptors: f.Descriptors[:0], entries: f.entries[:0]}
}

// SetRequest fills f from a decoded request; f's strings are req's.
func (f *RateLimitFields) SetRequest(req *rlsv3.RateLimitRequest) {
	f.Reset()
	f.Domain, f.HitsAddend = req.GetDomain(), req.GetHitsAddend()
	for _, d := range req.GetDescriptors() {
		start := len(f.entries)
		for _, e := range d.GetEntries() {
			f.entries = append(f.entries, RateLimitEntry{Key: e.GetKey(), Value: e.GetValue()})
		}
		rd := RateLimitDescriptor{Entries: f.entries[start:len(f.entries):len(f.entries)], IsNegativeHits: d.GetIsNegativeHits()}
		if l := d.GetLimit(); l != nil {
			rd.HasLimit, rd.RequestsPerUnit, rd.Unit = true, l.GetRequestsPerUnit(), int32(l.GetUnit())
		}
		if h := d.GetHitsAddend(); h != nil {
			rd.HasHitsAddend, rd.HitsAddend = true, h.GetValue()
		}
		f.Descriptors = append(f.Descriptors, rd)
	}
}

// Field numbers of envoy.service.ratelimit.v3.RateLimitRequest and the messages in it.
const (
	rlrDomain      = 1
	rlrDescriptors = 2
	rlrHitsAddend  = 3

	rldEntries        = 1
	rldLimit          = 2
	rldHitsAddend     = 3
	rldIsNegativeHits = 4

	rleKey   = 1
	rleValue = 2

	rloRequestsPerUnit = 1
	rloUnit            = 2
)

// Unmarshal fills f from the encoding of a RateLimitRequest. f's strings view b,
// which must not change while they are in use.
func (f *RateLimitFields) Unmarshal(b []byte) error {
	f.Reset()
	it := fieldIter{b: b}
	for it.next() {
		switch {
		case it.isBytes(rlrDomain):
			var err error
			if f.Domain, err = utf8String(it.bytes); err != nil {
				return fmt.Errorf("domain: %w", err)
			}
		case it.isBytes(rlrDescriptors):
			if err := f.descriptor(it.bytes); err != nil {
				return fmt.Errorf("descriptor %d: %w", len(f.Descriptors), err)
			}
		case it.isVarint(rlrHitsAddend):
			f.HitsAddend = uint32(it.u64)
		}
	}
	return it.err
}

func (f *RateLimitFields) descriptor(b []byte) error {
	start := len(f.entries)
	var d RateLimitDescriptor
	it := fieldIter{b: b}
	for it.next() {
		switch {
		case it.isBytes(rldEntries):
			var e RateLimitEntry
			if err := e.unmarshal(it.bytes); err != nil {
				return fmt.Errorf("entry %d: %w", len(f.entries)-start, err)
			}
			f.entries = append(f.entries, e)
		case it.isBytes(rldLimit):
			d.HasLimit = true
			l := fieldIter{b: it.bytes}
			for l.next() {
				switch {
				case l.isVarint(rloRequestsPerUnit):
					d.RequestsPerUnit = uint32(l.u64)
				case l.isVarint(rloUnit):
					d.Unit = int32(l.u64)
				}
			}
			if l.err != nil {
				return fmt.Errorf("limit: %w", l.err)
			}
		case it.isBytes(rldHitsAddend):
			d.HasHitsAddend = true
			h := fieldIter{b: it.bytes}
			for h.next() {
				if h.isVarint(1) {
					d.HitsAddend = h.u64
				}
			}
			if h.err != nil {
				return fmt.Errorf("hits_addend: %w", h.err)
			}
		case it.isVarint(rldIsNegativeHits):
			d.IsNegativeHits = it.u64 != 0
		}
	}
	if it.err != nil {
		return it.err
	}
	d.Entries = f.entries[start:len(f.entries):len(f.entries)]
	f.Descriptors = append(f.Descriptors, d)
	return nil
}

func (e *RateLimitEntry) unmarshal(b []byte) error {
	it := fieldIter{b: b}
	for it.next() {
		var err error
		switch {
		case it.isBytes(rleKey):
			e.Key, err = utf8String(it.bytes)
		case it.isBytes(rleValue):
			e.Value, err = utf8String(it.bytes)
		}
		if err != nil {
			return err
		}
	}
	return it.err
}
