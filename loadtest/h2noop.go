package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// The two check methods the lean server answers.
const (
	checkPath     = "/envoy.service.auth.v3.Authorization/Check"
	rateLimitPath = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
)

// ServeNoopH2 runs a do-nothing check server that speaks HTTP/2 by hand instead of
// through grpc-go: one goroutine per connection reads every frame, answers each
// call inline and writes all answers of what it read in one write. It is the floor
// of any check server on this machine, below grpc-go's (ServeNoop): the difference
// between the two is what grpc-go's transport costs. It serves until ctx ends.
//
// With a redisAddr (host:port or unix://PATH), each connection has one Redis
// connection of its own, and counts every call in Redis (one script call, one per
// descriptor for the rate-limit service, on FloorKey) before it answers: the
// calls of what it read go out in one write and their answers come back in one
// read. That is the floor of any check server that hears from Redis before it
// answers; a call Redis answers with an error is answered UNAVAILABLE.
func ServeNoopH2(ctx context.Context, addr, redisAddr string) error {
	if redisAddr != "" {
		// Refused now, not at the first connection.
		f, err := dialRedisFloor(redisAddr)
		if err != nil {
			return err
		}
		f.Close()
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { lis.Close() })
	defer stop()
	for {
		conn, err := lis.Accept()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			closeOnDone := context.AfterFunc(ctx, func() { conn.Close() })
			defer closeOnDone()
			_ = serveH2Conn(conn, redisAddr)
		}()
	}
}

// h2ServerConn is one connection of the lean server.
type h2ServerConn struct {
	conn    net.Conn
	in      *bufio.Reader
	out     bytes.Buffer
	wr      *http2.Framer
	hbuf    bytes.Buffer
	henc    *hpack.Encoder
	streams map[uint32]*h2Call
	unacked uint32
	okAuthz []byte // the gRPC message of an OK CheckResponse, with its prefix
	// As little garbage as the generator's: a header decoder that keeps the path
	// only, the calls and their buffers reused, answers built in one buffer.
	hdec  *hpack.Decoder
	path  string
	free  []*h2Call
	reply []byte
	// With a Redis floor, calls wait in waiting until Redis has counted them;
	// failed is count's answer, kept for reuse.
	floor   *redisFloor
	waiting []waitingCall
	failed  []bool
}

// waitingCall is a call read in full, waiting for Redis to count it.
type waitingCall struct {
	id     uint32
	call   *h2Call
	counts int // its script calls
}

type h2Call struct {
	path string
	data []byte
}

// serveH2Conn serves one connection until it fails or the client leaves, counting
// each call in the Redis at redisAddr before answering it if that is not empty.
func serveH2Conn(conn net.Conn, redisAddr string) error {
	defer conn.Close()
	c := &h2ServerConn{conn: conn, in: bufio.NewReaderSize(conn, 64<<10), streams: map[uint32]*h2Call{}}
	if redisAddr != "" {
		f, err := dialRedisFloor(redisAddr)
		if err != nil {
			return err
		}
		defer f.Close()
		c.floor = f
	}
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.wr = http2.NewFramer(&c.out, nil)
	msg, err := proto.Marshal(&authv3.CheckResponse{Status: &rpcstatus.Status{}})
	if err != nil {
		return err
	}
	c.okAuthz = grpcFrame(nil, msg)

	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.in, preface); err != nil || string(preface) != http2.ClientPreface {
		return errors.New("no HTTP/2 client preface")
	}
	// Streams keep HTTP/2's default window (64 KiB, as grpc-go's): a check request
	// fits in it, so no stream ever needs a WINDOW_UPDATE.
	_ = c.wr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1 << 20})
	_ = c.wr.WriteWindowUpdate(0, recvWindow-65535)
	rd := http2.NewFramer(nil, c.in)
	rd.SetReuseFrames() // requests are copied out of DATA frames before the next read
	c.hdec = hpack.NewDecoder(4096, func(hf hpack.HeaderField) {
		if hf.Name == ":path" {
			c.path = hf.Value
		}
	})
	for {
		// Write what was answered once nothing more is waiting to be read: one
		// write for every call that arrived together (and one round trip to
		// Redis, with a floor).
		if c.in.Buffered() == 0 && len(c.waiting) > 0 {
			if err := c.answerWaiting(); err != nil {
				return err
			}
		}
		if c.in.Buffered() == 0 && c.out.Len() > 0 {
			if _, err := conn.Write(c.out.Bytes()); err != nil {
				return err
			}
			c.out.Reset()
		}
		f, err := rd.ReadFrame()
		if err != nil {
			return err
		}
		if err := c.handle(f); err != nil {
			return err
		}
	}
}

func (c *h2ServerConn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if !f.IsAck() {
			return c.wr.WriteSettingsAck()
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			return c.wr.WritePing(true, f.Data)
		}
	case *http2.HeadersFrame:
		// The lean client never splits a header block into CONTINUATIONs.
		if !f.HeadersEnded() {
			return errors.New("CONTINUATION frames are not supported")
		}
		c.path = ""
		if _, err := c.hdec.Write(f.HeaderBlockFragment()); err != nil {
			return err
		}
		if err := c.hdec.Close(); err != nil {
			return err
		}
		call := &h2Call{}
		if n := len(c.free); n > 0 {
			call = c.free[n-1]
			c.free = c.free[:n-1]
		}
		call.path, call.data = c.path, call.data[:0]
		c.streams[f.StreamID] = call
		if f.StreamEnded() {
			return c.answer(f.StreamID, call)
		}
	case *http2.DataFrame:
		c.unacked += f.Length
		if c.unacked >= recvWindow/2 {
			_ = c.wr.WriteWindowUpdate(0, c.unacked)
			c.unacked = 0
		}
		call := c.streams[f.StreamID]
		if call == nil {
			return nil
		}
		call.data = append(call.data, f.Data()...)
		if f.StreamEnded() {
			return c.answer(f.StreamID, call)
		}
	case *http2.RSTStreamFrame:
		delete(c.streams, f.StreamID)
	case *http2.GoAwayFrame:
		return io.EOF
	}
	return nil
}

// okDescriptorStatus encodes a DescriptorStatus of code OK (field 1 = 1).
const okDescriptorStatus = "\x08\x01"

// answer writes one call's response, or, with a floor, keeps the call until
// Redis has counted it.
func (c *h2ServerConn) answer(id uint32, call *h2Call) error {
	delete(c.streams, id)
	if c.floor != nil {
		// One count per descriptor for the rate-limit service, as a quota
		// backend counts each; a request that does not decode is refused
		// without one.
		counts := 1
		if call.path == rateLimitPath {
			counts, _ = countDescriptors(call.data)
		}
		c.waiting = append(c.waiting, waitingCall{id, call, counts})
		return nil
	}
	return c.respond(id, call, false)
}

// answerWaiting counts the waiting calls in Redis, in one round trip, and
// answers them.
func (c *h2ServerConn) answerWaiting() error {
	n := 0
	for _, w := range c.waiting {
		n += w.counts
	}
	c.failed = slices.Grow(c.failed[:0], n)[:n]
	if err := c.floor.count(n, c.failed); err != nil {
		return err
	}
	i := 0
	for _, w := range c.waiting {
		// Unavailable if Redis refused any of its counts.
		failed := slices.Contains(c.failed[i:i+w.counts], true)
		i += w.counts
		if err := c.respond(w.id, w.call, failed); err != nil {
			return err
		}
	}
	clear(c.waiting)
	c.waiting = c.waiting[:0]
	return nil
}

// respond writes one call's response: headers, the message and the trailers;
// UNAVAILABLE if unavailable.
func (c *h2ServerConn) respond(id uint32, call *h2Call, unavailable bool) error {
	c.free = append(c.free, call)
	var body []byte
	status := "0"
	switch {
	case unavailable:
		status = "14"
	case call.path == checkPath:
		body = c.okAuthz
	case call.path == rateLimitPath:
		// One OK status per descriptor (field 2), encoded by hand.
		descriptors, err := countDescriptors(call.data)
		if err != nil {
			status = "13"
			break
		}
		b := append(c.reply[:0], 0, 0, 0, 0, 0)
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(rlsv3.RateLimitResponse_OK))
		for range descriptors {
			b = protowire.AppendTag(b, 2, protowire.BytesType)
			b = protowire.AppendString(b, okDescriptorStatus)
		}
		binary.BigEndian.PutUint32(b[1:5], uint32(len(b)-5))
		body, c.reply = b, b
	default:
		status = "12" // UNIMPLEMENTED
	}
	c.hbuf.Reset()
	_ = c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	_ = c.henc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
	if body == nil {
		_ = c.henc.WriteField(hpack.HeaderField{Name: "grpc-status", Value: status})
		return c.wr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true, EndStream: true})
	}
	if err := c.wr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true}); err != nil {
		return err
	}
	if err := c.wr.WriteData(id, false, body); err != nil {
		return err
	}
	c.hbuf.Reset()
	_ = c.henc.WriteField(hpack.HeaderField{Name: "grpc-status", Value: status})
	return c.wr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true, EndStream: true})
}

// countDescriptors counts the descriptors (field 2) of a rate-limit request, with
// its gRPC prefix.
func countDescriptors(data []byte) (int, error) {
	if len(data) < 5 {
		return 0, errors.New("no request message")
	}
	n := 0
	err := wireFields(data[5:], func(num protowire.Number, typ protowire.Type, _ []byte, _ uint64) error {
		if num == 2 && typ == protowire.BytesType {
			n++
		}
		return nil
	})
	return n, err
}

// grpcFrame appends msg with gRPC's length prefix (uncompressed).
func grpcFrame(dst, msg []byte) []byte {
	dst = binary.BigEndian.AppendUint32(append(dst, 0), uint32(len(msg)))
	return append(dst, msg...)
}
