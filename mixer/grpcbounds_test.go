package mixer_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
	"github.com/sluicemesh/sluice/mixer/server"
)

// TestGRPCPortStreamBound: a client that opens calls on the gRPC port and never
// finishes their requests holds a stream, a goroutine and up to a message of
// buffer for each; one connection may hold MaxConcurrentStreams of them, and the
// streams it opens past that are refused. The port also bounds a call's header
// block, as the check listener does, rather than grpc-go's 16 MiB.
func TestGRPCPortStreamBound(t *testing.T) {
	const limit, opened = 64, 200
	h := start(t, t.TempDir(), func(o *mixer.Options) { o.MaxConcurrentStreams = limit })
	nc, err := net.Dial("tcp", h.GRPCAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fr := http2.NewFramer(nc, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i := range opened {
		hb.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/envoy.service.auth.v3.Authorization/Check"},
			{":authority", "sluice"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		// Headers without END_STREAM: the call waits for a request that never comes.
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	// The server answers frames in order: once the PING is answered, every stream
	// it refused has been reset.
	if err := fr.WritePing(false, [8]byte{1}); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	settings := map[http2.SettingID]uint32{}
	refused := 0
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = f.ForeachSetting(func(s http2.Setting) error { settings[s.ID] = s.Val; return nil })
				_ = fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			if f.ErrCode == http2.ErrCodeRefusedStream {
				refused++
			}
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v: %s", f.ErrCode, f.DebugData())
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
			break
		}
	}
	if got, ok := settings[http2.SettingMaxConcurrentStreams]; !ok || got != limit {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d (sent: %v), want %d", got, ok, limit)
	}
	if got := settings[http2.SettingMaxHeaderListSize]; got != server.MaxHeaderListSize {
		t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE = %d, want %d", got, server.MaxHeaderListSize)
	}
	if held := opened - refused; held > limit {
		t.Errorf("one connection holds %d unfinished calls, want at most %d (%d refused)", held, limit, refused)
	}
}

// TestGRPCPortDropsSilentPeers: a peer that stops answering (an Envoy whose node
// died) is pinged once the connection has been silent for KeepaliveTime, and
// closed when the ping goes unanswered for KeepaliveTimeout, rather than holding
// its streams for grpc-go's default of two hours.
func TestGRPCPortDropsSilentPeers(t *testing.T) {
	h := start(t, t.TempDir(), func(o *mixer.Options) {
		o.KeepaliveTime, o.KeepaliveTimeout = 200*time.Millisecond, 200*time.Millisecond
	})
	nc, err := net.Dial("tcp", h.GRPCAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(nc, nc)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	// Read, so that the server's writes never block, but answer nothing.
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	pinged := false
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			if !pinged {
				t.Fatalf("connection ended (%v) before the server pinged it", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("a silent peer was closed after %v", d)
			}
			return
		}
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			pinged = true
		}
	}
}

// TestConnectionBound: the gRPC port and the check listener each hold at most
// MaxConnections open; one more is closed as soon as it is accepted, and counted,
// and once a connection closes its place is taken again.
func TestConnectionBound(t *testing.T) {
	const limit = 3
	h := start(t, t.TempDir(), func(o *mixer.Options) { o.MaxConnections, o.CheckAddr = limit, "127.0.0.1:0" })
	for _, tc := range []struct {
		listener                string
		addr                    net.Addr
		active, refused         string
		activeSeries, refusedBy map[string]string
	}{
		{"grpc", h.GRPCAddr(), "sluice_connections_active", "sluice_connections_refused_total",
			map[string]string{"listener": "grpc"}, map[string]string{"listener": "grpc"}},
		{"check", h.CheckAddr(), "sluice_h2unary_connections_active", "sluice_h2unary_errors_total",
			nil, map[string]string{"reason": "connection_limit"}},
	} {
		t.Run(tc.listener, func(t *testing.T) {
			var open []net.Conn
			defer func() {
				for _, c := range open {
					c.Close()
				}
			}()
			for range limit {
				c, err := http2Session(tc.addr)
				if err != nil {
					t.Fatalf("connection under the bound: %v", err)
				}
				open = append(open, c)
			}
			if _, err := http2Session(tc.addr); err == nil {
				t.Fatal("a connection past the bound was served")
			}
			// Counted before the close the client saw.
			f := h.scrape()
			if got := f.Sum(tc.refused, tc.refusedBy); got != 1 {
				t.Errorf("%s = %v, want 1", tc.refused, got)
			}
			if got := f.Sum(tc.active, tc.activeSeries); got != limit {
				t.Errorf("%s = %v, want %d", tc.active, got, limit)
			}
			open[0].Close()
			open = open[1:]
			h.waitMetric("the closed connection's place to be given back", func(f loadtest.Families) bool {
				return f.Sum(tc.active, tc.activeSeries) == limit-1
			})
			c, err := http2Session(tc.addr)
			if err != nil {
				t.Fatalf("connection after one closed: %v", err)
			}
			open = append(open, c)
		})
	}
}

// http2Session opens an HTTP/2 connection to addr and returns it once the
// server's SETTINGS arrive, or the error that ended it first.
func http2Session(addr net.Addr) (net.Conn, error) {
	nc, err := net.Dial("tcp", addr.String())
	if err != nil {
		return nil, err
	}
	fr := http2.NewFramer(nc, nc)
	_, err = io.WriteString(nc, http2.ClientPreface)
	if err == nil {
		err = fr.WriteSettings()
	}
	if err == nil {
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		var f http2.Frame
		if f, err = fr.ReadFrame(); err == nil {
			if _, ok := f.(*http2.SettingsFrame); !ok {
				err = fmt.Errorf("first frame %v, want SETTINGS", f.Header().Type)
			}
		}
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetReadDeadline(time.Time{})
	return nc, nil
}
