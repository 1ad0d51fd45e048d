package h2unary

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// clientFrames is a well-formed client session after the preface: settings, a
// window update, a ping and one call of the method at path with msg, split in two
// DATA frames.
func clientFrames(path string, msg []byte) []byte {
	var out, hb bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	enc := hpack.NewEncoder(&hb)
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	_ = fr.WriteWindowUpdate(0, 1<<20)
	_ = fr.WritePing(false, [8]byte{1})
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", path}, {":authority", "x"},
		{"content-type", "application/grpc"}, {"grpc-timeout", "1S"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	body := grpcPrefix(nil, len(msg))
	body = append(body, msg...)
	_ = fr.WriteData(1, false, body[:len(body)/2])
	_ = fr.WriteData(1, true, body[len(body)/2:])
	_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
	_ = fr.WriteGoAway(1, http2.ErrCodeNo, nil)
	return out.Bytes()
}

// FuzzConn feeds arbitrary frames to a connection: whatever arrives, the server
// answers or refuses without a panic, and lets go of the connection when the
// client leaves.
func FuzzConn(f *testing.F) {
	req, _ := proto.Marshal(wrapperspb.Bytes([]byte{2, 'a', 'b'}))
	full := clientFrames(echoPath, req)
	f.Add(full)
	f.Add(full[:len(full)/2])
	f.Add(clientFrames(echoPath, nil))
	f.Add(clientFrames(rawPath, req))
	f.Add(clientFrames(failPath, req))
	// A burst of calls that park, one of them reset, and one that breaks the
	// connection behind them.
	seed := &rawClient{}
	seed.enc = hpack.NewEncoder(&seed.hb)
	calls := requests(seed, parkPath, 1, 2, 3)
	f.Add(calls)
	f.Add(append(append(calls[:len(calls):len(calls)], 0, 0, 4, byte(http2.FrameRSTStream), 0, 0, 0, 0, 3, 0, 0, 0, 8), 0, 0, 1, 0, 0, 0, 0, 0, 0))
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0})       // an empty SETTINGS
	f.Add([]byte{0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2}) // a truncated PING
	ts := &testServer{waiting: make(chan struct{}, 1<<20), exited: make(chan error, 1<<20), release: make(chan struct{})}
	close(ts.release)
	methods := testMethods(ts)
	// Echo on goroutines, Fail inline, Raw on the reader (in bursts on its
	// coroutines), Park on the reader, parking in bursts.
	methods[1].Inline = func() bool { return true }
	methods[2].OnReader = func() bool { return true }
	methods = append(methods, parkMethod(&batchSender{}))
	s, err := New(Options{Methods: methods, MaxRecvMsgSize: 1 << 16, MaxConcurrentStreams: 8})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, frames []byte) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			newConn(s, server).serve()
			close(done)
		}()
		go func() { _, _ = io.Copy(io.Discard, client) }()
		_, _ = client.Write([]byte(http2.ClientPreface))
		_, _ = client.Write(frames)
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the connection was not let go after the client left")
		}
	})
}
