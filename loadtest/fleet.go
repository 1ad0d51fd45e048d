package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// LogName is the log_name the simulated sidecars send.
const LogName = "sluice-loadtest"

// Reports groups the entries of calls by the sidecar that reports them: every call
// is reported twice, outbound by its source and inbound by its destination.
type Reports map[*Workload]*SidecarReport

// SidecarReport is what one sidecar reports.
type SidecarReport struct {
	HTTP []*alsdata.HTTPAccessLogEntry
	TCP  []*alsdata.TCPAccessLogEntry
}

// Report builds the entries of calls.
func Report(calls []Call) Reports {
	r := Reports{}
	get := func(w *Workload) *SidecarReport {
		if r[w] == nil {
			r[w] = &SidecarReport{}
		}
		return r[w]
	}
	for i := range calls {
		c := &calls[i]
		if c.Protocol == "tcp" {
			get(c.Source).TCP = append(get(c.Source).TCP, c.TCPEntry(true))
			get(c.Dest).TCP = append(get(c.Dest).TCP, c.TCPEntry(false))
			continue
		}
		get(c.Source).HTTP = append(get(c.Source).HTTP, c.HTTPEntry(true))
		get(c.Dest).HTTP = append(get(c.Dest).HTTP, c.HTTPEntry(false))
	}
	return r
}

// Sidecars returns the reporting workloads in a stable order.
func (r Reports) Sidecars() []*Workload {
	out := make([]*Workload, 0, len(r))
	for w := range r {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Messages cuts one sidecar's report into messages of at most batch entries; the
// caller sets the identifier on a stream's first message.
func (s *SidecarReport) Messages(batch int) []*alsv3.StreamAccessLogsMessage {
	var out []*alsv3.StreamAccessLogsMessage
	for i := 0; i < len(s.HTTP); i += batch {
		end := min(i+batch, len(s.HTTP))
		out = append(out, &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
			HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: s.HTTP[i:end]}}})
	}
	for i := 0; i < len(s.TCP); i += batch {
		end := min(i+batch, len(s.TCP))
		out = append(out, &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_TcpLogs{
			TcpLogs: &alsv3.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: s.TCP[i:end]}}})
	}
	return out
}

// Identifier returns the identifier a workload's sidecar sends first.
func Identifier(w *Workload) *alsv3.StreamAccessLogsMessage_Identifier {
	return &alsv3.StreamAccessLogsMessage_Identifier{Node: Node(w), LogName: LogName}
}

// Fleet keeps one access-log stream per simulated sidecar.
type Fleet struct {
	client  alsv3.AccessLogServiceClient
	streams map[*Workload]alsv3.AccessLogService_StreamAccessLogsClient
	// Batch is the number of entries per message (Envoy's buffer flushes); default 100.
	Batch int
}

// NewFleet returns a fleet sending over conn.
func NewFleet(conn grpc.ClientConnInterface) *Fleet {
	return &Fleet{client: alsv3.NewAccessLogServiceClient(conn), streams: map[*Workload]alsv3.AccessLogService_StreamAccessLogsClient{}, Batch: 100}
}

// Send streams the entries of calls, each sidecar on its own stream.
func (f *Fleet) Send(ctx context.Context, calls []Call) error {
	r := Report(calls)
	for _, w := range r.Sidecars() {
		st, ok := f.streams[w]
		first := !ok
		if !ok {
			var err error
			if st, err = f.client.StreamAccessLogs(ctx); err != nil {
				return fmt.Errorf("open stream for %s: %w", w.Name, err)
			}
			f.streams[w] = st
		}
		for _, m := range r[w].Messages(f.Batch) {
			if first {
				m.Identifier = Identifier(w)
				first = false
			}
			if err := st.Send(m); err != nil {
				return fmt.Errorf("send for %s: %w", w.Name, err)
			}
		}
	}
	return nil
}

// Close ends every stream and waits for the server's answer.
func (f *Fleet) Close() error {
	var errs []error
	for w, st := range f.streams {
		if _, err := st.CloseAndRecv(); err != nil && !errors.Is(err, io.EOF) {
			errs = append(errs, fmt.Errorf("close stream for %s: %w", w.Name, err))
		}
		delete(f.streams, w)
	}
	return errors.Join(errs...)
}

// Encode marshals calls into ready-to-send messages per sidecar, the first of each
// carrying the identifier, so that a benchmark's client spends no time encoding.
func Encode(calls []Call, batch int) (map[*Workload][][]byte, error) {
	r := Report(calls)
	out := map[*Workload][][]byte{}
	for _, w := range r.Sidecars() {
		for i, m := range r[w].Messages(batch) {
			if i == 0 {
				m.Identifier = Identifier(w)
			}
			b, err := proto.Marshal(m)
			if err != nil {
				return nil, fmt.Errorf("encode: %w", err)
			}
			out[w] = append(out[w], b)
		}
	}
	return out, nil
}

// RawBytes is a pre-encoded message, sent as it is by RawCodec.
type RawBytes []byte

// RawCodec sends and receives RawBytes without encoding them, and everything else as
// protobuf.
type RawCodec struct{}

// Marshal implements encoding.CodecV2.
func (RawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(RawBytes); ok {
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return encoding.GetCodecV2("proto").Marshal(v)
}

// Unmarshal implements encoding.CodecV2: into *RawBytes as they are, else protobuf.
func (RawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if b, ok := v.(*RawBytes); ok {
		*b = data.Materialize()
		return nil
	}
	return encoding.GetCodecV2("proto").Unmarshal(data, v)
}

// Name implements encoding.CodecV2.
func (RawCodec) Name() string { return "proto" }

// SendRaw opens one stream and sends pre-encoded messages on it, then closes it.
func SendRaw(ctx context.Context, conn grpc.ClientConnInterface, msgs [][]byte) error {
	desc := &grpc.StreamDesc{StreamName: "StreamAccessLogs", ClientStreams: true}
	st, err := conn.NewStream(ctx, desc, "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs", grpc.ForceCodecV2(RawCodec{}))
	if err != nil {
		return fmt.Errorf("open raw stream: %w", err)
	}
	for _, m := range msgs {
		if err := st.SendMsg(RawBytes(m)); err != nil {
			return fmt.Errorf("send raw: %w", err)
		}
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	var resp alsv3.StreamAccessLogsResponse
	if err := st.RecvMsg(&resp); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("close raw stream: %w", err)
	}
	return nil
}
