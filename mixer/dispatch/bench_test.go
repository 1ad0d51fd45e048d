package dispatch

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sluicemesh/sluice/adapters/all"
	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/envoy"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/mixer/registry"
)

// benchMessages encodes bookinfo HTTP traffic in messages of batch entries, as one
// sidecar streams them, with the entries' reporting node.
func benchMessages(b *testing.B, batch int) ([][]byte, []*envoy.Node, int) {
	b.Helper()
	tr := loadtest.NewTraffic(loadtest.Bookinfo(), 42)
	var calls []loadtest.Call
	for len(calls) < 2000 {
		if c := tr.Next(); c.Protocol != "tcp" {
			calls = append(calls, c)
		}
	}
	enc, err := loadtest.Encode(calls, batch)
	if err != nil {
		b.Fatal(err)
	}
	var msgs [][]byte
	var nodes []*envoy.Node
	entries, size := 0, 0
	for w, ms := range enc {
		n := envoy.NodeFrom(loadtest.Node(w), loadtest.LogName, "cluster.local")
		for _, m := range ms {
			msgs = append(msgs, m)
			nodes = append(nodes, n)
			var s envoy.Message
			if err := envoy.ScanMessage(m, &s); err != nil {
				b.Fatal(err)
			}
			entries += len(s.Entries)
			for _, e := range s.Entries {
				size += len(e.Raw)
			}
		}
	}
	b.ReportMetric(float64(size)/float64(entries), "bytes/entry")
	return msgs, nodes, entries
}

func benchDispatcher(b *testing.B) *Dispatcher {
	b.Helper()
	comp, err := expr.NewCompiler(attribute.NewVocabulary())
	if err != nil {
		b.Fatal(err)
	}
	snap, err := (&config.Loader{Adapters: all.Registry(), Compiler: comp}).Load()
	if err != nil {
		b.Fatal(err)
	}
	d, err := New(Options{Shards: 1, Registry: registry.New(""), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Apply(context.Background(), snap); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = d.Close(context.Background()) })
	return d
}

// BenchmarkReportPathShard is the report path after the gRPC receive: framing, wire
// decode, identity, the default rules and the eight Istio metrics, on one shard.
func BenchmarkReportPathShard(b *testing.B) {
	for _, batch := range []int{10, 100, 1000} {
		b.Run(batchName(batch), func(b *testing.B) {
			msgs, nodes, entries := benchMessages(b, batch)
			d := benchDispatcher(b)
			s := newShard(99, d)
			var m envoy.Message
			now := time.Now()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j, raw := range msgs {
					if err := envoy.ScanMessage(raw, &m); err != nil {
						b.Fatal(err)
					}
					bt := d.NewBatch()
					bt.Node, bt.Kind, bt.Received = nodes[j], m.Kind, now
					bt.Entries = append(bt.Entries, m.Entries...)
					s.handle(bt)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*entries), "ns/entry")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkProtoUnmarshal is the yardstick: the standard decode of the same messages
// into the full Envoy types, and nothing else.
func BenchmarkProtoUnmarshal(b *testing.B) {
	for _, batch := range []int{10, 100, 1000} {
		b.Run(batchName(batch), func(b *testing.B) {
			msgs, _, entries := benchMessages(b, batch)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for _, raw := range msgs {
					var m alsv3.StreamAccessLogsMessage
					if err := proto.Unmarshal(raw, &m); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*entries), "ns/entry")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func batchName(n int) string {
	switch n {
	case 10:
		return "batch=10"
	case 100:
		return "batch=100"
	}
	return "batch=1000"
}
