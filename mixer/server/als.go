package server

import (
	"errors"
	"io"
	"log/slog"
	"sync"
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

// rawMessage receives a message's bytes without decoding them.
type rawMessage struct {
	buf mem.Buffer
}

// codec keeps access-log messages as raw bytes, for the wire decoder, and uses the
// standard protobuf codec for everything else the server handles.
type codec struct {
	proto encoding.CodecV2
	pool  mem.BufferPool
}

func newCodec(pool mem.BufferPool) codec {
	return codec{proto: encoding.GetCodecV2("proto"), pool: pool}
}

func (c codec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rawMessage); ok {
		// One buffer is kept by reference, several are copied into one.
		r.buf = data.MaterializeToBuffer(c.pool)
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

	streams  prometheus.Gauge
	rejected *prometheus.CounterVec
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
		batches   = make([]*dispatch.Batch, s.d.Shards())
	)
	for {
		var raw rawMessage
		err := ss.RecvMsg(&raw)
		if errors.Is(err, io.EOF) {
			return ss.SendMsg(&alsv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			if status.Code(err) == codes.ResourceExhausted {
				s.rejected.WithLabelValues(rejectTooLarge).Inc()
				s.log.Warn("access-log message over the receive limit", "err", err)
			}
			return err
		}
		data := raw.buf.ReadOnlyData()
		var seed uint64
		if node != nil {
			seed = node.Seed()
		}
		if err := envoy.ScanMessage(data, seed, &msg); err != nil {
			raw.buf.Free()
			return s.reject(rejectMalformed, 1, codes.InvalidArgument, "malformed StreamAccessLogsMessage: %v", err)
		}
		if node == nil {
			if msg.Identifier == nil {
				raw.buf.Free()
				return s.reject(rejectNoIdentifier, len(msg.Entries), codes.InvalidArgument,
					"the first StreamAccessLogsMessage of a stream must carry identifier.node")
			}
			node, err = envoy.DecodeIdentifier(msg.Identifier, s.trustDomain)
			if err != nil {
				raw.buf.Free()
				return s.reject(rejectBadNode, len(msg.Entries), codes.InvalidArgument, "bad identifier: %v", err)
			}
			// Entries are keyed by the stream's workload: scan again with its seed.
			if err := envoy.ScanMessage(data, node.Seed(), &msg); err != nil {
				raw.buf.Free()
				return s.reject(rejectMalformed, 1, codes.InvalidArgument, "malformed StreamAccessLogsMessage: %v", err)
			}
		}
		if len(msg.Entries) > 0 {
			s.d.Received(msg.Kind, len(msg.Entries))
			s.dispatch(node, &msg, &opensSeen, batches, raw.buf)
		}
		raw.buf.Free()
	}
}

// dispatch cuts a message into one batch per shard, in one pass.
func (s *alsServer) dispatch(node *envoy.Node, msg *envoy.Message, opensSeen *bool, batches []*dispatch.Batch, buf mem.Buffer) {
	now := time.Now()
	for i := range msg.Entries {
		e := &msg.Entries[i]
		if msg.Kind == envoy.TCPEntries && envoy.IsOpenEvent(e.Type) {
			*opensSeen = true
		}
		sh := s.d.ShardOf(e.Key)
		b := batches[sh]
		if b == nil {
			b = s.d.NewBatch()
			b.Node, b.Kind, b.Received = node, msg.Kind, now
			batches[sh] = b
		}
		b.Entries = append(b.Entries, *e)
	}
	for sh, b := range batches {
		if b == nil {
			continue
		}
		b.OpensSeen = *opensSeen
		buf.Ref()
		b.Buffer = buf
		s.d.Submit(sh, b)
		batches[sh] = nil
	}
}
