package envoy_test

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer/envoy"
)

func sameMessage(t *testing.T, what string, got, want *envoy.Message) {
	t.Helper()
	if !bytes.Equal(got.Identifier, want.Identifier) || got.Kind != want.Kind || len(got.Entries) != len(want.Entries) {
		t.Fatalf("%s: identifier/kind/count differ: %d entries, want %d", what, len(got.Entries), len(want.Entries))
	}
	for i := range want.Entries {
		g, w := got.Entries[i], want.Entries[i]
		if !bytes.Equal(g.Raw, w.Raw) || g.Type != w.Type {
			t.Fatalf("%s: entry %d differs", what, i)
		}
	}
}

// TestScanSegmentsSplits cuts real messages at every byte and in random pieces: the
// frames-in-place scan must find exactly what the contiguous scan finds.
func TestScanSegmentsSplits(t *testing.T) {
	enc, err := loadtest.Encode(bookinfo(40), 7)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	n := 0
	for _, msgs := range enc {
		for _, b := range msgs {
			if n++; n > 6 {
				return
			}
			var want envoy.Message
			if err := envoy.ScanMessage(b, &want); err != nil {
				t.Fatal(err)
			}
			for k := 0; k <= len(b); k++ {
				var got envoy.Message
				if err := envoy.ScanSegments([][]byte{b[:k], b[k:]}, &got, &envoy.Spill{}); err != nil {
					t.Fatalf("split at %d: %v", k, err)
				}
				sameMessage(t, "split", &got, &want)
			}
			for trial := 0; trial < 200; trial++ {
				var segs [][]byte
				for rest := b; len(rest) > 0; {
					k := min(len(rest), 1+rng.IntN(64))
					segs = append(segs, rest[:k])
					rest = rest[k:]
				}
				var got envoy.Message
				if err := envoy.ScanSegments(segs, &got, &envoy.Spill{}); err != nil {
					t.Fatalf("%d pieces: %v", len(segs), err)
				}
				sameMessage(t, "pieces", &got, &want)
			}
		}
	}
}

func bookinfo(n int) []loadtest.Call {
	tr := loadtest.NewTraffic(loadtest.Bookinfo(), 9)
	calls := make([]loadtest.Call, n)
	for i := range calls {
		calls[i] = tr.Next()
	}
	return calls
}

// TestScanSegmentsSpillIsStable checks that copies handed out earlier stay valid while
// later ones are made.
func TestScanSegmentsSpillIsStable(t *testing.T) {
	enc, _ := loadtest.Encode(bookinfo(60), 60)
	for _, msgs := range enc {
		b := msgs[0]
		var segs [][]byte
		for rest := b; len(rest) > 0; rest = rest[min(len(rest), 100):] {
			segs = append(segs, rest[:min(len(rest), 100)])
		}
		grows := 0
		spill := &envoy.Spill{Grow: func(n int) []byte { grows++; return make([]byte, n) }}
		var got, want envoy.Message
		if err := envoy.ScanSegments(segs, &got, spill); err != nil {
			t.Fatal(err)
		}
		_ = envoy.ScanMessage(b, &want)
		sameMessage(t, "100-byte frames", &got, &want)
		if grows != 1 {
			t.Errorf("the spill grew %d times, want once", grows)
		}
		return
	}
}
