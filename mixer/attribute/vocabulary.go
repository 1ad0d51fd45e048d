// Package attribute defines Sluice's attribute vocabulary (Istio's names and types)
// and the Bag, the typed per-request record that rules, templates and adapters read.
package attribute

import "fmt"

// Kind is the type of an attribute's value.
type Kind uint8

// Attribute kinds. Strings, numbers and maps live in separate slot arrays of a Bag.
const (
	String Kind = iota + 1
	Int64
	Bool
	Duration  // nanoseconds in the numeric slot
	Timestamp // Unix nanoseconds in the numeric slot
	Map
)

func (k Kind) String() string {
	switch k {
	case String:
		return "string"
	case Int64:
		return "int64"
	case Bool:
		return "bool"
	case Duration:
		return "duration"
	case Timestamp:
		return "timestamp"
	case Map:
		return "map<string, string>"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// ID names one attribute of the vocabulary. IDs are grouped by kind so that an ID
// indexes its kind's slot array directly: strings first, then numbers, then maps.
type ID uint16

// String attributes.
const (
	SourceUID ID = iota
	SourceIP
	SourceName
	SourceNamespace
	SourcePrincipal
	SourceWorkloadName
	SourceWorkloadNamespace
	SourceApp
	SourceVersion
	SourceCanonicalService
	SourceCanonicalRevision
	SourceClusterID
	SourceServiceAccount

	DestinationUID
	DestinationIP
	DestinationName
	DestinationNamespace
	DestinationPrincipal
	DestinationWorkloadName
	DestinationWorkloadNamespace
	DestinationApp
	DestinationVersion
	DestinationCanonicalService
	DestinationCanonicalRevision
	DestinationClusterID
	DestinationServiceAccount
	DestinationServiceHost
	DestinationServiceName
	DestinationServiceNamespace
	DestinationSubset

	RequestID
	RequestMethod
	RequestPath
	RequestURLPath
	RequestHost
	RequestScheme
	RequestUserAgent
	RequestReferer
	RequestHTTPVersion

	ResponseCodeDetails
	ResponseFlags
	ResponseGRPCStatus

	ContextProtocol
	ContextReporterKind
	ContextReporterRole
	ContextReporterUID
	ContextLogName

	ConnectionID
	ConnectionEvent
	ConnectionSecurityPolicy
	ConnectionRequestedServerName
	ConnectionTLSVersion

	UpstreamCluster
	UpstreamAddress
	UpstreamFailureReason
	RouteName

	numStrings
)

// Numeric attributes: Int64, Bool, Duration and Timestamp share the numeric slots.
const (
	SourcePort ID = iota + numStrings
	DestinationPort
	RequestSize
	RequestTotalSize
	RequestTime
	ResponseCode
	ResponseSize
	ResponseTotalSize
	ResponseDuration
	ResponseTime
	ConnectionSentBytes
	ConnectionReceivedBytes
	ConnectionMTLS
	ConnectionDuration
	ContextTime
	ContextIntermediate

	numEnd
)

// Map attributes.
const (
	RequestHeaders ID = iota + numEnd
	ResponseHeaders
	ResponseTrailers
	SourceLabels
	DestinationLabels
	ContextExtensions

	// Count is the number of attributes in the vocabulary.
	Count
)

const (
	numNumeric = int(numEnd - numStrings)
	numMaps    = int(Count - numEnd)
)

// Def describes one attribute.
type Def struct {
	ID   ID
	Name string
	Kind Kind
	Doc  string
}

// vocabulary is indexed by ID; it is read-only after package initialisation.
var vocabulary = [Count]Def{
	SourceUID:                    {Name: "source.uid", Kind: String, Doc: "platform-specific unique identifier of the source instance (kubernetes://POD.NAMESPACE)"},
	SourceIP:                     {Name: "source.ip", Kind: String, Doc: "source IP address"},
	SourceName:                   {Name: "source.name", Kind: String, Doc: "source instance (pod) name"},
	SourceNamespace:              {Name: "source.namespace", Kind: String, Doc: "source instance namespace"},
	SourcePrincipal:              {Name: "source.principal", Kind: String, Doc: "SPIFFE identity of the source, from the peer certificate"},
	SourceWorkloadName:           {Name: "source.workload.name", Kind: String, Doc: "source workload name"},
	SourceWorkloadNamespace:      {Name: "source.workload.namespace", Kind: String, Doc: "source workload namespace"},
	SourceApp:                    {Name: "source.app", Kind: String, Doc: "the source workload's app label"},
	SourceVersion:                {Name: "source.version", Kind: String, Doc: "the source workload's version label"},
	SourceCanonicalService:       {Name: "source.canonical.service", Kind: String, Doc: "the source's canonical service"},
	SourceCanonicalRevision:      {Name: "source.canonical.revision", Kind: String, Doc: "the source's canonical revision"},
	SourceClusterID:              {Name: "source.cluster.id", Kind: String, Doc: "the cluster of the source workload"},
	SourceServiceAccount:         {Name: "source.service_account", Kind: String, Doc: "the source workload's service account"},
	DestinationUID:               {Name: "destination.uid", Kind: String, Doc: "platform-specific unique identifier of the destination instance"},
	DestinationIP:                {Name: "destination.ip", Kind: String, Doc: "destination IP address"},
	DestinationName:              {Name: "destination.name", Kind: String, Doc: "destination instance (pod) name"},
	DestinationNamespace:         {Name: "destination.namespace", Kind: String, Doc: "destination instance namespace"},
	DestinationPrincipal:         {Name: "destination.principal", Kind: String, Doc: "SPIFFE identity of the destination, from the local certificate"},
	DestinationWorkloadName:      {Name: "destination.workload.name", Kind: String, Doc: "destination workload name"},
	DestinationWorkloadNamespace: {Name: "destination.workload.namespace", Kind: String, Doc: "destination workload namespace"},
	DestinationApp:               {Name: "destination.app", Kind: String, Doc: "the destination workload's app label"},
	DestinationVersion:           {Name: "destination.version", Kind: String, Doc: "the destination workload's version label"},
	DestinationCanonicalService:  {Name: "destination.canonical.service", Kind: String, Doc: "the destination's canonical service"},
	DestinationCanonicalRevision: {Name: "destination.canonical.revision", Kind: String, Doc: "the destination's canonical revision"},
	DestinationClusterID:         {Name: "destination.cluster.id", Kind: String, Doc: "the cluster of the destination workload"},
	DestinationServiceAccount:    {Name: "destination.service_account", Kind: String, Doc: "the destination workload's service account"},
	DestinationServiceHost:       {Name: "destination.service.host", Kind: String, Doc: "destination service host (FQDN)"},
	DestinationServiceName:       {Name: "destination.service.name", Kind: String, Doc: "destination service short name"},
	DestinationServiceNamespace:  {Name: "destination.service.namespace", Kind: String, Doc: "destination service namespace"},
	DestinationSubset:            {Name: "destination.subset", Kind: String, Doc: "the subset of the upstream cluster (DestinationRule subset)"},
	RequestID:                    {Name: "request.id", Kind: String, Doc: "x-request-id"},
	RequestMethod:                {Name: "request.method", Kind: String, Doc: "HTTP method"},
	RequestPath:                  {Name: "request.path", Kind: String, Doc: "HTTP path including the query"},
	RequestURLPath:               {Name: "request.url_path", Kind: String, Doc: "HTTP path without the query"},
	RequestHost:                  {Name: "request.host", Kind: String, Doc: "HTTP authority"},
	RequestScheme:                {Name: "request.scheme", Kind: String, Doc: "URL scheme"},
	RequestUserAgent:             {Name: "request.useragent", Kind: String, Doc: "user-agent header"},
	RequestReferer:               {Name: "request.referer", Kind: String, Doc: "referer header"},
	RequestHTTPVersion:           {Name: "request.http_version", Kind: String, Doc: "HTTP/1.0, HTTP/1.1, HTTP/2 or HTTP/3"},
	ResponseCodeDetails:          {Name: "response.code_details", Kind: String, Doc: "Envoy's response code details"},
	ResponseFlags:                {Name: "response.flags", Kind: String, Doc: "Envoy's %RESPONSE_FLAGS%, \"-\" when none"},
	ResponseGRPCStatus:           {Name: "response.grpc_status", Kind: String, Doc: "the grpc-status trailer or header, empty when absent"},
	ContextProtocol:              {Name: "context.protocol", Kind: String, Doc: "http, grpc or tcp"},
	ContextReporterKind:          {Name: "context.reporter.kind", Kind: String, Doc: "inbound (the proxy is the server) or outbound (the proxy is the client)"},
	ContextReporterRole:          {Name: "context.reporter.role", Kind: String, Doc: "destination for inbound reports, source for outbound ones (Istio's reporter label)"},
	ContextReporterUID:           {Name: "context.reporter.uid", Kind: String, Doc: "the reporting proxy's node ID"},
	ContextLogName:               {Name: "context.log_name", Kind: String, Doc: "the access log's configured log_name"},
	ConnectionID:                 {Name: "connection.id", Kind: String, Doc: "Envoy's stream or connection ID"},
	ConnectionEvent:              {Name: "connection.event", Kind: String, Doc: "TCP only: open, continue, close, or complete (one entry for a whole connection)"},
	ConnectionSecurityPolicy:     {Name: "connection.security_policy", Kind: String, Doc: "mutual_tls, none or unknown, as Istio reports it"},
	ConnectionRequestedServerName: {Name: "connection.requested_server_name", Kind: String,
		Doc: "TLS SNI of the downstream connection"},
	ConnectionTLSVersion:    {Name: "connection.tls.version", Kind: String, Doc: "TLS version of the downstream connection"},
	UpstreamCluster:         {Name: "upstream.cluster", Kind: String, Doc: "Envoy's upstream cluster name"},
	UpstreamAddress:         {Name: "upstream.address", Kind: String, Doc: "upstream host address (IP:port)"},
	UpstreamFailureReason:   {Name: "upstream.failure_reason", Kind: String, Doc: "upstream transport failure reason"},
	RouteName:               {Name: "route.name", Kind: String, Doc: "Envoy route name"},
	SourcePort:              {Name: "source.port", Kind: Int64, Doc: "source port"},
	DestinationPort:         {Name: "destination.port", Kind: Int64, Doc: "destination port"},
	RequestSize:             {Name: "request.size", Kind: Int64, Doc: "request body bytes"},
	RequestTotalSize:        {Name: "request.total_size", Kind: Int64, Doc: "request header and body bytes"},
	RequestTime:             {Name: "request.time", Kind: Timestamp, Doc: "start of the request"},
	ResponseCode:            {Name: "response.code", Kind: Int64, Doc: "HTTP status code"},
	ResponseSize:            {Name: "response.size", Kind: Int64, Doc: "response body bytes"},
	ResponseTotalSize:       {Name: "response.total_size", Kind: Int64, Doc: "response header and body bytes"},
	ResponseDuration:        {Name: "response.duration", Kind: Duration, Doc: "time from the first request byte to the last response byte"},
	ResponseTime:            {Name: "response.time", Kind: Timestamp, Doc: "end of the response"},
	ConnectionSentBytes:     {Name: "connection.sent.bytes", Kind: Int64, Doc: "TCP bytes sent to the downstream since the previous entry of this connection"},
	ConnectionReceivedBytes: {Name: "connection.received.bytes", Kind: Int64, Doc: "TCP bytes received from the downstream since the previous entry of this connection"},
	ConnectionMTLS:          {Name: "connection.mtls", Kind: Bool, Doc: "the downstream connection presented a peer certificate"},
	ConnectionDuration:      {Name: "connection.duration", Kind: Duration, Doc: "connection duration"},
	ContextTime:             {Name: "context.time", Kind: Timestamp, Doc: "when the entry was received"},
	ContextIntermediate:     {Name: "context.intermediate", Kind: Bool, Doc: "an intermediate entry of a request still in progress (Envoy's periodic or start-of-stream logs)"},
	RequestHeaders:          {Name: "request.headers", Kind: Map, Doc: "logged request headers (lower-case names)"},
	ResponseHeaders:         {Name: "response.headers", Kind: Map, Doc: "logged response headers"},
	ResponseTrailers:        {Name: "response.trailers", Kind: Map, Doc: "logged response trailers"},
	SourceLabels:            {Name: "source.labels", Kind: Map, Doc: "the source workload's labels"},
	DestinationLabels:       {Name: "destination.labels", Kind: Map, Doc: "the destination workload's labels"},
	ContextExtensions:       {Name: "context.extensions", Kind: Map, Doc: "ext_authz context extensions of the route"},
}

// Vocabulary is the read-only table of attributes; its index is the ID.
type Vocabulary struct {
	byName map[string]ID
}

// NewVocabulary returns the vocabulary with a name index.
func NewVocabulary() *Vocabulary {
	v := &Vocabulary{byName: make(map[string]ID, Count)}
	for i := range vocabulary {
		v.byName[vocabulary[i].Name] = ID(i)
	}
	return v
}

// Lookup returns the ID of the named attribute.
func (v *Vocabulary) Lookup(name string) (ID, bool) {
	id, ok := v.byName[name]
	return id, ok
}

// Defs returns every attribute definition, in ID order.
func (v *Vocabulary) Defs() []Def {
	out := make([]Def, Count)
	for i := range vocabulary {
		out[i] = vocabulary[i]
		out[i].ID = ID(i)
	}
	return out
}

// Def returns the definition of id.
func (id ID) Def() Def {
	d := vocabulary[id]
	d.ID = id
	return d
}

// Name returns the attribute's dotted name.
func (id ID) Name() string { return vocabulary[id].Name }

// Kind returns the attribute's kind.
func (id ID) Kind() Kind { return vocabulary[id].Kind }
