package envoy

import (
	"testing"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestFieldNumbers checks every field number the wire decoder uses against the
// generated descriptors, so that a renumbering upstream cannot go unnoticed.
func TestFieldNumbers(t *testing.T) {
	type want struct {
		msg  protoreflect.ProtoMessage
		name string
		num  int
	}
	tests := []want{
		{&alsv3.StreamAccessLogsMessage{}, "identifier", msgIdentifier},
		{&alsv3.StreamAccessLogsMessage{}, "http_logs", msgHTTPLogs},
		{&alsv3.StreamAccessLogsMessage{}, "tcp_logs", msgTCPLogs},
		{&alsv3.StreamAccessLogsMessage_Identifier{}, "node", identNode},
		{&alsv3.StreamAccessLogsMessage_Identifier{}, "log_name", identLogName},
		{&alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{}, "log_entry", entriesLogEntry},
		{&alsv3.StreamAccessLogsMessage_TCPAccessLogEntries{}, "log_entry", entriesLogEntry},
		{&alsdata.HTTPAccessLogEntry{}, "common_properties", entryCommon},
		{&alsdata.HTTPAccessLogEntry{}, "protocol_version", httpProtocolVersion},
		{&alsdata.HTTPAccessLogEntry{}, "request", httpRequest},
		{&alsdata.HTTPAccessLogEntry{}, "response", httpResponse},
		{&alsdata.TCPAccessLogEntry{}, "common_properties", entryCommon},
		{&alsdata.TCPAccessLogEntry{}, "connection_properties", tcpConnectionProperties},
		{&alsdata.ConnectionProperties{}, "received_bytes", connReceivedBytes},
		{&alsdata.ConnectionProperties{}, "sent_bytes", connSentBytes},
		{&alsdata.AccessLogCommon{}, "downstream_remote_address", commonDownstreamRemote},
		{&alsdata.AccessLogCommon{}, "downstream_local_address", commonDownstreamLocal},
		{&alsdata.AccessLogCommon{}, "tls_properties", commonTLS},
		{&alsdata.AccessLogCommon{}, "start_time", commonStartTime},
		{&alsdata.AccessLogCommon{}, "time_to_last_downstream_tx_byte", commonLastDownstreamTx},
		{&alsdata.AccessLogCommon{}, "upstream_remote_address", commonUpstreamRemote},
		{&alsdata.AccessLogCommon{}, "upstream_cluster", commonUpstreamCluster},
		{&alsdata.AccessLogCommon{}, "response_flags", commonResponseFlags},
		{&alsdata.AccessLogCommon{}, "upstream_transport_failure_reason", commonUpstreamFailure},
		{&alsdata.AccessLogCommon{}, "route_name", commonRouteName},
		{&alsdata.AccessLogCommon{}, "duration", commonDuration},
		{&alsdata.AccessLogCommon{}, "stream_id", commonStreamID},
		{&alsdata.AccessLogCommon{}, "intermediate_log_entry", commonIntermediate},
		{&alsdata.AccessLogCommon{}, "access_log_type", commonAccessLogType},
		{&alsdata.HTTPRequestProperties{}, "request_method", reqMethod},
		{&alsdata.HTTPRequestProperties{}, "scheme", reqScheme},
		{&alsdata.HTTPRequestProperties{}, "authority", reqAuthority},
		{&alsdata.HTTPRequestProperties{}, "path", reqPath},
		{&alsdata.HTTPRequestProperties{}, "user_agent", reqUserAgent},
		{&alsdata.HTTPRequestProperties{}, "referer", reqReferer},
		{&alsdata.HTTPRequestProperties{}, "request_id", reqRequestID},
		{&alsdata.HTTPRequestProperties{}, "request_headers_bytes", reqHeadersBytes},
		{&alsdata.HTTPRequestProperties{}, "request_body_bytes", reqBodyBytes},
		{&alsdata.HTTPRequestProperties{}, "request_headers", reqHeaders},
		{&alsdata.HTTPResponseProperties{}, "response_code", respCode},
		{&alsdata.HTTPResponseProperties{}, "response_headers_bytes", respHeadersBytes},
		{&alsdata.HTTPResponseProperties{}, "response_body_bytes", respBodyBytes},
		{&alsdata.HTTPResponseProperties{}, "response_headers", respHeaders},
		{&alsdata.HTTPResponseProperties{}, "response_trailers", respTrailers},
		{&alsdata.HTTPResponseProperties{}, "response_code_details", respCodeDetails},
		{&alsdata.TLSProperties{}, "tls_version", 1},
		{&alsdata.TLSProperties{}, "tls_sni_hostname", 3},
		{&alsdata.TLSProperties{}, "local_certificate_properties", 4},
		{&alsdata.TLSProperties{}, "peer_certificate_properties", 5},
		{&alsdata.TLSProperties_CertificateProperties{}, "subject_alt_name", 1},
		{&alsdata.TLSProperties_CertificateProperties_SubjectAltName{}, "uri", 1},
		{&alsdata.ResponseFlags{}, "unauthorized_details", unauthorizedResponseFlags},
	}
	for _, tt := range tests {
		fd := tt.msg.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(tt.name))
		if fd == nil {
			t.Errorf("%s has no field %s", tt.msg.ProtoReflect().Descriptor().FullName(), tt.name)
			continue
		}
		if int(fd.Number()) != tt.num {
			t.Errorf("%s.%s is field %d, the decoder reads %d", tt.msg.ProtoReflect().Descriptor().FullName(), tt.name, fd.Number(), tt.num)
		}
	}
}

// TestResponseFlagCodes checks that the flag table covers exactly ResponseFlags' fields.
func TestResponseFlagCodes(t *testing.T) {
	fields := (&alsdata.ResponseFlags{}).ProtoReflect().Descriptor().Fields()
	if fields.Len() != numResponseFlags {
		t.Fatalf("ResponseFlags has %d fields, the decoder knows %d", fields.Len(), numResponseFlags)
	}
	for i := 0; i < fields.Len(); i++ {
		n := int(fields.Get(i).Number())
		if n < 1 || n > numResponseFlags || responseFlagCodes[n] == "" {
			t.Errorf("ResponseFlags.%s (field %d) has no short code", fields.Get(i).Name(), n)
		}
	}
}
