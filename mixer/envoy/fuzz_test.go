package envoy_test

import (
	"testing"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/envoy"
)

// seedMessages are realistic messages: bookinfo traffic as its sidecars report it.
func seedMessages(f *testing.F) [][]byte {
	f.Helper()
	tr := loadtest.NewTraffic(loadtest.Bookinfo(), 1)
	calls := make([]loadtest.Call, 40)
	for i := range calls {
		calls[i] = tr.Next()
	}
	enc, err := loadtest.Encode(calls, 3)
	if err != nil {
		f.Fatal(err)
	}
	var out [][]byte
	for _, msgs := range enc {
		out = append(out, msgs...)
	}
	return out
}

// FuzzScanMessage frames arbitrary bytes and decodes every entry: nothing may panic,
// and wherever the standard decoder accepts the input, the wire decoder must agree.
func FuzzScanMessage(f *testing.F) {
	for _, m := range seedMessages(f) {
		f.Add(m)
	}
	f.Add([]byte{})
	f.Add([]byte{0x12, 0x00})
	n := productpageNode()
	f.Fuzz(func(t *testing.T, data []byte) {
		var m envoy.Message
		scanErr := envoy.ScanMessage(data, &m)
		// The same bytes split into three frames must scan alike.
		var split envoy.Message
		a, b := len(data)/3, 2*len(data)/3
		splitErr := envoy.ScanSegments([][]byte{data[:a], data[a:b], data[b:]}, &split, &envoy.Spill{})
		if (splitErr == nil) != (scanErr == nil) {
			t.Fatalf("contiguous scan error %v, split scan error %v", scanErr, splitErr)
		}
		if scanErr == nil {
			sameMessage(t, "split", &split, &m)
		}
		var std alsv3.StreamAccessLogsMessage
		stdErr := proto.Unmarshal(data, &std)
		if stdErr == nil && scanErr == nil {
			want := len(std.GetHttpLogs().GetLogEntry()) + len(std.GetTcpLogs().GetLogEntry())
			if len(m.Entries) != want {
				t.Fatalf("scanner found %d entries, proto.Unmarshal %d", len(m.Entries), want)
			}
		}
		if scanErr != nil {
			return
		}
		if m.Identifier != nil {
			_, _ = envoy.DecodeIdentifier(m.Identifier, "cluster.local")
		}
		d := envoy.NewDecoder("cluster.local")
		d.Begin(testRegistry(), time.Now())
		var bag attribute.Bag
		for i, e := range m.Entries {
			bag.Reset()
			if m.Kind == envoy.HTTPEntries {
				err := d.DecodeHTTP(e.Raw, n, &bag)
				if stdErr == nil && err != nil {
					t.Fatalf("entry %d: wire decoder failed where proto.Unmarshal succeeded: %v", i, err)
				}
				if stdErr == nil {
					compareHTTP(t, std.GetHttpLogs().GetLogEntry()[i], &bag)
				}
			} else {
				err := d.DecodeTCP(e.Raw, n, false, &bag)
				if stdErr == nil && err != nil {
					t.Fatalf("entry %d: wire decoder failed where proto.Unmarshal succeeded: %v", i, err)
				}
			}
		}
	})
}

// compareHTTP checks the fields both decoders read.
func compareHTTP(t *testing.T, std *alsdata.HTTPAccessLogEntry, bag *attribute.Bag) {
	t.Helper()
	if got, _ := bag.String(attribute.UpstreamCluster); got != std.GetCommonProperties().GetUpstreamCluster() {
		t.Fatalf("upstream cluster %q, standard %q", got, std.GetCommonProperties().GetUpstreamCluster())
	}
	if got, _ := bag.Int(attribute.ResponseCode); got != int64(std.GetResponse().GetResponseCode().GetValue()) {
		t.Fatalf("response code %d, standard %d", got, std.GetResponse().GetResponseCode().GetValue())
	}
	if got, _ := bag.Int(attribute.ResponseTotalSize); got != int64(std.GetResponse().GetResponseHeadersBytes()+std.GetResponse().GetResponseBodyBytes()) {
		t.Fatalf("response size %d, standard %d", got, std.GetResponse().GetResponseHeadersBytes()+std.GetResponse().GetResponseBodyBytes())
	}
	if std.GetRequest() != nil {
		if got := bag.StringOr(attribute.RequestPath, ""); got != std.GetRequest().GetPath() {
			t.Fatalf("path %q, standard %q", got, std.GetRequest().GetPath())
		}
		if got := bag.StringOr(attribute.RequestHost, ""); got != std.GetRequest().GetAuthority() {
			t.Fatalf("authority %q, standard %q", got, std.GetRequest().GetAuthority())
		}
		hdrs, _ := bag.Map(attribute.RequestHeaders)
		for k, v := range std.GetRequest().GetRequestHeaders() {
			if got, ok := hdrs.Get(k); !ok || got != v {
				t.Fatalf("request header %q = %q, standard %q", k, got, v)
			}
		}
		want := int64(std.GetRequest().GetRequestHeadersBytes() + std.GetRequest().GetRequestBodyBytes())
		if got, _ := bag.Int(attribute.RequestTotalSize); got != want {
			t.Fatalf("request size %d, standard %d", got, want)
		}
	}
}

// FuzzDecodeHTTP decodes arbitrary bytes as one HTTP entry.
func FuzzDecodeHTTP(f *testing.F) {
	tr := loadtest.NewTraffic(loadtest.Bookinfo(), 2)
	for i := 0; i < 20; i++ {
		c := tr.Next()
		if c.Protocol == "tcp" {
			continue
		}
		for _, out := range []bool{true, false} {
			b, err := proto.Marshal(c.HTTPEntry(out))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	n := productpageNode()
	f.Fuzz(func(t *testing.T, data []byte) {
		d := envoy.NewDecoder("cluster.local")
		d.Begin(testRegistry(), time.Now())
		var bag attribute.Bag
		err := d.DecodeHTTP(data, n, &bag)
		var std alsdata.HTTPAccessLogEntry
		if proto.Unmarshal(data, &std) == nil {
			if err != nil {
				t.Fatalf("wire decoder failed where proto.Unmarshal succeeded: %v", err)
			}
			compareHTTP(t, &std, &bag)
		}
	})
}

// FuzzDecodeTCP decodes arbitrary bytes as one TCP entry.
func FuzzDecodeTCP(f *testing.F) {
	tr := loadtest.NewTraffic(loadtest.Bookinfo(), 3)
	for i := 0; i < 200; i++ {
		c := tr.Next()
		if c.Protocol != "tcp" {
			continue
		}
		b, err := proto.Marshal(c.TCPEntry(i%2 == 0))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	n := productpageNode()
	f.Fuzz(func(t *testing.T, data []byte) {
		d := envoy.NewDecoder("cluster.local")
		d.Begin(testRegistry(), time.Now())
		var bag attribute.Bag
		err := d.DecodeTCP(data, n, true, &bag)
		var std alsdata.TCPAccessLogEntry
		if proto.Unmarshal(data, &std) == nil && err != nil {
			t.Fatalf("wire decoder failed where proto.Unmarshal succeeded: %v", err)
		}
	})
}
