package server

import (
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/sluicemesh/sluice/mixer/dispatch"
	"github.com/sluicemesh/sluice/mixer/envoy"
)

// rawMessage receives a message's bytes without decoding them, as the transport's
// buffers (one per HTTP/2 frame), which it holds a reference to.
type rawMessage struct {
	data mem.BufferSlice
}

// codec keeps access-log messages as raw bytes, for the wire decoder, and uses the
// standard protobuf codec for everything else the server handles.
type codec struct {
	proto encoding.CodecV2
}

func newCodec() codec { return codec{proto: encoding.GetCodecV2("proto")} }

func (c codec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rawMessage); ok {
		data.Ref() // the transport frees its own reference when Unmarshal returns
		r.data = data
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

func (c codec) Name() string { return "proto" }

// alsServer implements envoy.service.accesslog.v3.AccessLogService on raw bytes.
type alsServer struct {
	d           *dispatch.Dispatcher
	log         *slog.Logger
	trustDomain string

	streams   prometheus.Gauge
	rejected  *prometheus.CounterVec
	pool      *bufferPool
	helds     sync.Pool // *held
	nextShard atomic.Uint64
	// active tracks running stream handlers so that shutdown can wait for them.
	active sync.WaitGroup
}

// alsServiceDesc mirrors the generated descriptor with a handler that receives raw bytes.
func alsServiceDesc() grpc.ServiceDesc {
	return grpc.ServiceDesc{
		ServiceName: "envoy.service.accesslog.v3.AccessLogService",
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{
			StreamName:    "StreamAccessLogs",
			ClientStreams: true,
			Handler: func(srv any, stream grpc.ServerStream) error {
				return srv.(*alsServer).stream(stream)
			},
		}},
		Metadata: alsv3.File_envoy_service_accesslog_v3_als_proto.Path(),
	}
}

// Message rejection reasons, counted in sluice_messages_rejected_total.
const (
	rejectMalformed    = "malformed"
	rejectNoIdentifier = "no_identifier"
	rejectBadNode      = "bad_identifier"
	rejectTooLarge     = "too_large"
)

func (s *alsServer) reject(reason string, entries int, code codes.Code, format string, args ...any) error {
	s.rejected.WithLabelValues(reason).Inc()
	dropReason := dispatch.DropMalformed
	if reason == rejectNoIdentifier || reason == rejectBadNode {
		dropReason = dispatch.DropNoIdentity
	}
	s.d.Drop(dropReason, entries)
	err := status.Errorf(code, format, args...)
	s.log.Warn("access-log stream rejected", "reason", reason, "err", err)
	return err
}

func (s *alsServer) stream(ss grpc.ServerStream) error {
	s.active.Add(1)
	defer s.active.Done()
	s.streams.Inc()
	defer s.streams.Dec()

	var (
		node      *envoy.Node
		msg       envoy.Message
		opensSeen bool
		shard     int
	)
	for {
		h := s.hold()
		raw := rawMessage{}
		err := ss.RecvMsg(&raw)
		if errors.Is(err, io.EOF) {
			h.Free()
			return ss.SendMsg(&alsv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			h.Free()
			if status.Code(err) == codes.ResourceExhausted {
				s.rejected.WithLabelValues(rejectTooLarge).Inc()
				s.log.Warn("access-log message over the receive limit", "err", err)
			}
			return err
		}
		h.take(raw.data)
		if err := envoy.ScanSegments(h.segs, &msg, &h.spill); err != nil {
			h.Free()
			return s.reject(rejectMalformed, 1, codes.InvalidArgument, "malformed StreamAccessLogsMessage: %v", err)
		}
		if node == nil {
			if msg.Identifier == nil {
				h.Free()
				return s.reject(rejectNoIdentifier, len(msg.Entries), codes.InvalidArgument,
					"the first StreamAccessLogsMessage of a stream must carry identifier.node")
			}
			node, err = envoy.DecodeIdentifier(msg.Identifier, s.trustDomain)
			if err != nil {
				h.Free()
				return s.reject(rejectBadNode, len(msg.Entries), codes.InvalidArgument, "bad identifier: %v", err)
			}
			// Streams take the shards in turn: a stream keeps its shard (its TCP
			// connections' entries stay together) and the shards share the streams.
			shard = int(s.nextShard.Add(1) % uint64(s.d.Shards()))
		}
		if len(msg.Entries) > 0 {
			s.d.Received(msg.Kind, len(msg.Entries))
			s.dispatch(node, &msg, &opensSeen, shard, h)
		}
		h.Free()
	}
}

// held keeps one received message alive for the batches cut from it: the transport's
// buffers, and the spill holding the entries that straddled two of them.
type held struct {
	refs  atomic.Int32
	data  mem.BufferSlice
	segs  [][]byte
	spill envoy.Spill
	mem   *[]byte // the spill's storage, from the pool
	s     *alsServer
}

// hold returns a held with one reference, the receiver's.
func (s *alsServer) hold() *held {
	h := s.helds.Get().(*held)
	h.refs.Store(1)
	return h
}

func (s *alsServer) newHeld() any {
	h := &held{s: s}
	h.spill.Grow = func(n int) []byte {
		h.mem = s.pool.Get(n)
		return *h.mem
	}
	return h
}

func (h *held) take(data mem.BufferSlice) {
	h.data = data
	for _, b := range data {
		h.segs = append(h.segs, b.ReadOnlyData())
	}
}

// Free drops a reference; the last one returns the buffers.
func (h *held) Free() {
	if h.refs.Add(-1) != 0 {
		return
	}
	h.data.Free()
	h.data = nil
	clear(h.segs)
	h.segs = h.segs[:0]
	h.spill.Release()
	if h.mem != nil {
		h.s.pool.Put(h.mem)
		h.mem = nil
	}
	h.s.helds.Put(h)
}

// dispatch hands a message's entries to the stream's shard as one batch. The batch
// takes the message's entry list, and the message the batch's empty one, so that
// nothing is copied.
func (s *alsServer) dispatch(node *envoy.Node, msg *envoy.Message, opensSeen *bool, shard int, h *held) {
	if msg.Kind == envoy.TCPEntries {
		for i := range msg.Entries {
			if envoy.IsOpenEvent(msg.Entries[i].Type) {
				*opensSeen = true
				break
			}
		}
	}
	b := s.d.NewBatch()
	b.Node, b.Kind, b.Received, b.OpensSeen = node, msg.Kind, time.Now(), *opensSeen
	b.Entries, msg.Entries = msg.Entries, b.Entries[:0]
	h.refs.Add(1)
	b.Buffer = h
	s.d.Submit(shard, b)
}
