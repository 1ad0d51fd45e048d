package check

import (
	"math"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/durationpb"
)

// rlAnswer is a rate-limit answer kept in a request's reusable state. The gRPC
// port builds the RateLimitResponse from it; the lean listener writes its encoding
// directly: building the message cost three allocations per descriptor, most of
// what an RLS check allocated there.
type rlAnswer struct {
	over     bool // OVER_LIMIT overall
	statuses []rlStatus
	// tightest is the status with the least remaining of those counted, whose
	// limit the RateLimit-* headers describe; -1 for none.
	tightest int
}

// rlStatus is one descriptor's answer.
type rlStatus struct {
	over bool
	// rule is the limit reported as current_limit; nil for none.
	rule *rlRule
	// remaining is limit_remaining; reset, when hasReset, duration_until_reset.
	remaining uint32
	hasReset  bool
	reset     time.Duration
}

// reset empties the answer for n descriptors, keeping its storage.
func (a *rlAnswer) reset(n int) {
	a.over, a.tightest = false, -1
	if cap(a.statuses) < n {
		a.statuses = make([]rlStatus, n)
	}
	a.statuses = a.statuses[:n]
	clear(a.statuses)
}

func rlCode(over bool) rlsv3.RateLimitResponse_Code {
	if over {
		return rlsv3.RateLimitResponse_OVER_LIMIT
	}
	return rlsv3.RateLimitResponse_OK
}

// message builds the RateLimitResponse, with the RateLimit-* headers when asked.
func (a *rlAnswer) message(headers bool) *rlsv3.RateLimitResponse {
	resp := &rlsv3.RateLimitResponse{OverallCode: rlCode(a.over), Statuses: make([]*rlsv3.RateLimitResponse_DescriptorStatus, len(a.statuses))}
	for i := range a.statuses {
		st := &a.statuses[i]
		ds := &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlCode(st.over), LimitRemaining: st.remaining}
		if st.rule != nil {
			ds.CurrentLimit = &rlsv3.RateLimitResponse_RateLimit{Name: st.rule.name, RequestsPerUnit: st.rule.rpu, Unit: st.rule.unit}
		}
		if st.hasReset {
			ds.DurationUntilReset = durationpb.New(st.reset)
		}
		resp.Statuses[i] = ds
	}
	if headers && a.tightest >= 0 {
		var v []byte
		for i, name := range rlHeaders() {
			v = a.statuses[a.tightest].appendHeader(v[:0], i)
			resp.ResponseHeadersToAdd = append(resp.ResponseHeadersToAdd, &corev3.HeaderValue{Key: name, Value: string(v)})
		}
	}
	return resp
}

// Field numbers of the messages appendWire writes (envoy.service.ratelimit.v3,
// config.core.v3.HeaderValue, google.protobuf.Duration).
const (
	respOverallCode   = 1
	respStatuses      = 2
	respHeadersToAdd  = 3
	statusCode        = 1
	statusLimit       = 2
	statusRemaining   = 3
	statusReset       = 4
	limitRPU          = 1
	limitUnit         = 2
	limitName         = 3
	headerKey         = 1
	headerValue       = 2
	durationSeconds   = 1
	durationNanos     = 2
	maxVarintLen      = 10
	maxHeaderValueLen = 3*20 + 8 // three integers and ", ;w="
)

// appendWire appends the encoding of message(headers) to dst, as proto.Marshal
// would write it (fields in number order, proto3 zero values left out).
func (a *rlAnswer) appendWire(dst []byte, headers bool) []byte {
	dst = appendEnum(dst, respOverallCode, int32(rlCode(a.over)))
	for i := range a.statuses {
		dst = appendMessage(dst, respStatuses, a.statuses[i].appendWire)
	}
	if headers && a.tightest >= 0 {
		st := &a.statuses[a.tightest]
		for i, name := range rlHeaders() {
			dst = appendMessage(dst, respHeadersToAdd, func(b []byte) []byte {
				b = protowire.AppendTag(b, headerKey, protowire.BytesType)
				b = protowire.AppendString(b, name)
				var v [maxHeaderValueLen]byte
				b = protowire.AppendTag(b, headerValue, protowire.BytesType)
				return protowire.AppendBytes(b, st.appendHeader(v[:0], i))
			})
		}
	}
	return dst
}

func (st *rlStatus) appendWire(b []byte) []byte {
	b = appendEnum(b, statusCode, int32(rlCode(st.over)))
	if r := st.rule; r != nil {
		b = appendMessage(b, statusLimit, func(b []byte) []byte {
			if r.rpu != 0 {
				b = protowire.AppendTag(b, limitRPU, protowire.VarintType)
				b = protowire.AppendVarint(b, uint64(r.rpu))
			}
			b = appendEnum(b, limitUnit, int32(r.unit))
			if r.name != "" {
				b = protowire.AppendTag(b, limitName, protowire.BytesType)
				b = protowire.AppendString(b, r.name)
			}
			return b
		})
	}
	if st.remaining != 0 {
		b = protowire.AppendTag(b, statusRemaining, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(st.remaining))
	}
	if st.hasReset {
		b = appendMessage(b, statusReset, func(b []byte) []byte {
			// As durationpb.New splits it: both parts carry the sign.
			secs, nanos := int64(st.reset/time.Second), int32(st.reset%time.Second)
			if secs != 0 {
				b = protowire.AppendTag(b, durationSeconds, protowire.VarintType)
				b = protowire.AppendVarint(b, uint64(secs))
			}
			if nanos != 0 {
				b = protowire.AppendTag(b, durationNanos, protowire.VarintType)
				b = protowire.AppendVarint(b, uint64(int64(nanos)))
			}
			return b
		})
	}
	return b
}

// appendEnum appends an enum field unless it holds zero, as proto3 leaves it out.
func appendEnum(b []byte, num protowire.Number, v int32) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(int64(v)))
}

// appendMessage appends a message field whose body body appends. The body is
// written after room for the longest length prefix, then moved up against the
// prefix once its length is known: no second buffer.
func appendMessage(b []byte, num protowire.Number, body func([]byte) []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	at := len(b)
	b = append(b, make([]byte, maxVarintLen)...)
	b = body(b)
	n := len(b) - at - maxVarintLen
	var pfx [maxVarintLen]byte
	p := protowire.AppendVarint(pfx[:0], uint64(n))
	copy(b[at:], p)
	copy(b[at+len(p):], b[at+maxVarintLen:])
	return b[:at+len(p)+n]
}

// rlHeaders name the IETF draft's RateLimit-* headers, as envoyproxy/ratelimit
// sends them; appendHeader writes their values.
func rlHeaders() [3]string {
	return [3]string{"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
}

// appendHeader appends the value of rlHeaders()[i] for this status.
func (st *rlStatus) appendHeader(b []byte, i int) []byte {
	switch i {
	case 0:
		// The limit alone, as envoyproxy/ratelimit writes it: clients of the
		// draft's earlier versions read the header as one number.
		var rpu uint32
		if st.rule != nil {
			rpu = st.rule.rpu
		}
		return strconv.AppendUint(b, uint64(rpu), 10)
	case 1:
		return strconv.AppendUint(b, uint64(st.remaining), 10)
	default:
		return strconv.AppendInt(b, int64(math.Ceil(st.reset.Seconds())), 10)
	}
}
