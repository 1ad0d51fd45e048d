package check

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/proto"
)

// TestRLAnswerWire: the lean listener's encoding of a rate-limit answer is the
// bytes proto.Marshal writes for the message the gRPC port sends, over answers of
// every shape: no limit, unlimited, counted, over, shadowed, any unit, reset and
// remaining at their edges, with and without the RateLimit-* headers.
func TestRLAnswerWire(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	rules := []*rlRule{
		nil,
		{name: "", rpu: 0, unit: rlsv3.RateLimitResponse_RateLimit_UNKNOWN},
		{name: "per-user", rpu: 10, unit: rlsv3.RateLimitResponse_RateLimit_SECOND},
		{name: "ünïcode", rpu: math.MaxUint32, unit: rlsv3.RateLimitResponse_RateLimit_DAY},
		{name: string(make([]byte, 300)), rpu: 1, unit: rlsv3.RateLimitResponse_RateLimit_HOUR},
		{rpu: 500, unit: rlsv3.RateLimitResponse_RateLimit_MINUTE},
	}
	resets := []time.Duration{0, time.Nanosecond, 999 * time.Millisecond, time.Second, 59*time.Second + 1, 24 * time.Hour, -1500 * time.Millisecond}
	remainings := []uint32{0, 1, 127, 128, 16384, math.MaxUint32}
	var a rlAnswer
	for i := range 3000 {
		n := 1 + rng.IntN(4)
		a.reset(n)
		for j := range a.statuses {
			st := &a.statuses[j]
			st.rule = rules[rng.IntN(len(rules))]
			st.remaining = remainings[rng.IntN(len(remainings))]
			st.hasReset = rng.IntN(3) > 0
			if st.hasReset {
				st.reset = resets[rng.IntN(len(resets))]
			}
			st.over = rng.IntN(4) == 0
			a.over = a.over || st.over
		}
		if rng.IntN(3) > 0 {
			a.tightest = rng.IntN(n)
		}
		headers := rng.IntN(2) == 0
		want, err := proto.Marshal(a.message(headers))
		if err != nil {
			t.Fatal(err)
		}
		got := a.appendWire([]byte("prefix"), headers)
		if !bytes.HasPrefix(got, []byte("prefix")) || !bytes.Equal(got[6:], want) {
			t.Fatalf("answer %d (%+v, headers %v):\n got %x\nwant %x", i, a, headers, got[6:], want)
		}
	}
}

// TestRLAnswerReset: a reused answer keeps nothing of the last request.
func TestRLAnswerReset(t *testing.T) {
	var a rlAnswer
	a.reset(3)
	a.over, a.tightest = true, 2
	a.statuses[2] = rlStatus{over: true, rule: &rlRule{name: "x", rpu: 1}, remaining: 5, hasReset: true, reset: time.Second}
	a.reset(3)
	ok := &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK}
	want := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK, Statuses: []*rlsv3.RateLimitResponse_DescriptorStatus{ok, ok, ok}}
	if got := a.message(true); !proto.Equal(got, want) {
		t.Errorf("reused answer: %v, want %v", got, want)
	}
	wire, _ := proto.Marshal(want)
	if got := a.appendWire(nil, true); !bytes.Equal(got, wire) {
		t.Errorf("reused answer encodes as %x, want %x", got, wire)
	}
}
