package envoy

import (
	"fmt"
	"strings"
	"time"

	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/registry"
)

// Field numbers of AccessLogCommon, HTTPRequestProperties and HTTPResponseProperties.
const (
	commonDownstreamRemote    = 2
	commonDownstreamLocal     = 3
	commonTLS                 = 4
	commonStartTime           = 5
	commonLastDownstreamTx    = 12
	commonUpstreamRemote      = 13
	commonResponseFlags       = 16
	commonUpstreamFailure     = 18
	commonRouteName           = 19
	commonDuration            = 23
	commonStreamID            = 26
	commonIntermediate        = 27
	reqMethod                 = 1
	reqScheme                 = 2
	reqAuthority              = 3
	reqPath                   = 5
	reqUserAgent              = 6
	reqReferer                = 7
	reqRequestID              = 9
	reqHeadersBytes           = 11
	reqBodyBytes              = 12
	reqHeaders                = 13
	respCode                  = 1
	respHeadersBytes          = 2
	respBodyBytes             = 3
	respHeaders               = 4
	respTrailers              = 5
	respCodeDetails           = 6
	connReceivedBytes         = 1
	connSentBytes             = 2
	unauthorizedResponseFlags = 13 // a message, not a bool
	numResponseFlags          = 28
)

// Envoy's AccessLogType values Sluice distinguishes.
const (
	logTypeNotSet               = 0
	logTypeTCPUpstreamConnected = 1
	logTypeTCPPeriodic          = 2
	logTypeTCPConnectionEnd     = 3
	logTypeDownstreamStart      = 4
	logTypeDownstreamPeriodic   = 5
	logTypeUpstreamPoolReady    = 7
	logTypeUpstreamPeriodic     = 8
	logTypeTunnelEstablished    = 10
	logTypeTCPConnectionStart   = 14
)

// IsOpenEvent reports whether a TCP entry's access-log type marks a connection opening.
func IsOpenEvent(logType uint32) bool {
	return logType == logTypeTCPUpstreamConnected || logType == logTypeTCPConnectionStart
}

// responseFlagCodes are Envoy's %RESPONSE_FLAGS% short names, by ResponseFlags field number.
var responseFlagCodes = [numResponseFlags + 1]string{
	1: "LH", 2: "UH", 3: "UT", 4: "LR", 5: "UR", 6: "UF", 7: "UC", 8: "UO", 9: "NR", 10: "DI",
	11: "FI", 12: "RL", 13: "UAEX", 14: "RLSE", 15: "DC", 16: "URX", 17: "SI", 18: "IH", 19: "DPE",
	20: "UMSDR", 21: "RFCF", 22: "NFCF", 23: "DT", 24: "UPE", 25: "NC", 26: "OM", 27: "DF", 28: "DRR",
}

var httpMethods = [...]string{"", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

var httpVersions = [...]string{"", "HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/3"}

// Headers Sluice reads from the logged headers.
const (
	headerPeerMetadata = "x-envoy-peer-metadata"
	headerContentType  = "content-type"
	headerGRPCStatus   = "grpc-status"
)

// Stats counts what a Decoder met that did not stop it. Owned by one shard.
type Stats struct {
	UnknownEnum     uint64
	BadPeerMetadata uint64
	ConnTrackFull   uint64
}

// Decoder decodes access-log entries into bags. One per shard; not safe for
// concurrent use. Its caches hold only copies, never receive-buffer memory.
type Decoder struct {
	trustDomain string
	reg         *registry.Snapshot
	now         time.Time
	unknown     *registry.Workload
	peers       map[string]*registry.Workload
	hosts       map[hostKey]string
	flags       map[uint32]string
	conns       connTracker
	// needs are the attributes the running config reads: the decoder skips work
	// that only produces others (headers nobody reads, endpoints, timestamps).
	needs attribute.Set
	Stats Stats
}

type hostKey struct {
	ns, host string
}

// Cache bounds: when a cache reaches its bound it is emptied, which bounds memory
// under hostile input at the cost of re-decoding.
const (
	maxPeerCache = 4096
	maxHostCache = 16384
	maxConns     = 200000
	connTTL      = 10 * time.Minute
)

// NewDecoder returns a decoder; principals use trustDomain.
func NewDecoder(trustDomain string) *Decoder {
	unknown := &registry.Workload{Name: registry.Unknown, Namespace: registry.Unknown, Instance: registry.Unknown}
	unknown.Derive(trustDomain)
	unknown.CanonicalService = registry.Unknown
	unknown.CanonicalRevision = registry.Unknown
	return &Decoder{
		trustDomain: trustDomain,
		unknown:     unknown,
		peers:       map[string]*registry.Workload{},
		hosts:       map[hostKey]string{},
		flags:       map[uint32]string{0: "-"},
		conns:       newConnTracker(),
		needs:       attribute.AllAttributes(),
	}
}

// Begin prepares the decoder for a batch: the registry view and the receive time.
func (d *Decoder) Begin(reg *registry.Snapshot, now time.Time) {
	d.reg = reg
	d.now = now
	d.conns.rotate(now)
}

// Need sets the attributes the running config reads; AllAttributes decodes everything.
func (d *Decoder) Need(needs attribute.Set) { d.needs = needs }

// common holds the AccessLogCommon fields Sluice reads.
type common struct {
	// Addresses are parsed when something needs them: a registry lookup or an
	// endpoint attribute.
	downRemote, downLocal, upRemote []byte
	tls                             tlsInfo
	start                           int64
	lastDownTx, duration            time.Duration
	hasLastDownTx, hasDuration      bool
	cluster, route, streamID        string
	upFailure                       string
	flags                           uint32
	logType                         uint32
	intermediate                    bool
}

func (d *Decoder) parseCommon(b []byte, c *common) error {
	it := fieldIter{b: b}
	var err error
	for it.next() {
		if it.typ == 2 { // length-delimited
			switch it.num {
			case commonDownstreamRemote:
				c.downRemote = it.bytes
			case commonDownstreamLocal:
				c.downLocal = it.bytes
			case commonUpstreamRemote:
				c.upRemote = it.bytes
			case commonTLS:
				c.tls, err = parseTLS(it.bytes)
			case commonStartTime:
				if d.needs.Has(attribute.RequestTime) || d.needs.Has(attribute.ResponseTime) {
					c.start, err = parseTimestamp(it.bytes)
				}
			case commonLastDownstreamTx:
				c.lastDownTx, err = parseDuration(it.bytes)
				c.hasLastDownTx = true
			case commonDuration:
				c.duration, err = parseDuration(it.bytes)
				c.hasDuration = true
			case commonUpstreamCluster:
				c.cluster = str(it.bytes)
			case commonRouteName:
				c.route = str(it.bytes)
			case commonStreamID:
				c.streamID = str(it.bytes)
			case commonUpstreamFailure:
				c.upFailure = str(it.bytes)
			case commonResponseFlags:
				c.flags, err = parseResponseFlags(it.bytes)
			}
		} else if it.typ == 0 { // varint
			switch it.num {
			case commonAccessLogType:
				c.logType = uint32(it.u64)
			case commonIntermediate:
				c.intermediate = it.u64 != 0
			}
		}
		if err != nil {
			return err
		}
	}
	return it.err
}

// parseResponseFlags returns a bit per set flag, bit i for field number i.
func parseResponseFlags(b []byte) (uint32, error) {
	var bits uint32
	it := fieldIter{b: b}
	for it.next() {
		if it.num < 1 || it.num > numResponseFlags {
			continue
		}
		switch {
		case it.num == unauthorizedResponseFlags && it.typ == 2:
			bits |= 1 << it.num
		case it.typ == 0 && it.u64 != 0:
			bits |= 1 << it.num
		}
	}
	return bits, it.err
}

// flagString formats flags as Envoy's %RESPONSE_FLAGS%; formatted sets are cached.
func (d *Decoder) flagString(bits uint32) string {
	if s, ok := d.flags[bits]; ok {
		return s
	}
	var parts []string
	for i := 1; i <= numResponseFlags; i++ {
		if bits&(1<<i) != 0 {
			parts = append(parts, responseFlagCodes[i])
		}
	}
	s := strings.Join(parts, ",")
	if len(d.flags) < 4096 {
		d.flags[bits] = s
	}
	return s
}

// DecodeHTTP decodes an HTTPAccessLogEntry reported by node into bag. Like the
// standard decoder, it merges repeated occurrences of a message field.
func (d *Decoder) DecodeHTTP(raw []byte, node *Node, bag *attribute.Bag) error {
	var c common
	var proto uint64
	var req request
	var resp response
	it := fieldIter{b: raw}
	for it.next() {
		var err error
		switch {
		case it.isBytes(entryCommon):
			err = d.parseCommon(it.bytes, &c)
		case it.isVarint(httpProtocolVersion):
			proto = it.u64
		case it.isBytes(httpRequest):
			err = d.parseRequest(it.bytes, bag, &req)
		case it.isBytes(httpResponse):
			err = d.parseResponse(it.bytes, bag, &resp)
		}
		if err != nil {
			return err
		}
	}
	if it.err != nil {
		return it.err
	}
	host := req.authority
	if req.present {
		bag.SetInt(attribute.RequestSize, int64(req.bodyBytes))
		bag.SetInt(attribute.RequestTotalSize, int64(req.hdrBytes+req.bodyBytes))
	}
	if !bag.Has(attribute.ResponseCode) {
		bag.SetInt(attribute.ResponseCode, 0) // Envoy logs 0 when no response was sent
	}
	bag.SetInt(attribute.ResponseSize, int64(resp.bodyBytes))
	bag.SetInt(attribute.ResponseTotalSize, int64(resp.hdrBytes+resp.bodyBytes))
	if proto < uint64(len(httpVersions)) {
		if proto != 0 {
			bag.SetString(attribute.RequestHTTPVersion, httpVersions[proto])
		}
	} else {
		d.Stats.UnknownEnum++
	}

	protocol := "http"
	if ct, ok := header(bag, attribute.RequestHeaders, headerContentType); ok && strings.HasPrefix(ct, "application/grpc") {
		protocol = "grpc"
	}
	status, ok := header(bag, attribute.ResponseTrailers, headerGRPCStatus)
	if !ok {
		status, ok = header(bag, attribute.ResponseHeaders, headerGRPCStatus)
	}
	if ok {
		protocol = "grpc"
	}
	bag.SetString(attribute.ResponseGRPCStatus, status)
	bag.SetString(attribute.ContextProtocol, protocol)
	bag.SetBool(attribute.ContextIntermediate, c.intermediate || isIntermediateHTTP(c.logType))

	switch {
	case c.hasLastDownTx:
		bag.SetDuration(attribute.ResponseDuration, c.lastDownTx)
	case c.hasDuration:
		bag.SetDuration(attribute.ResponseDuration, c.duration)
	}
	if c.start != 0 {
		bag.SetTimeNanos(attribute.RequestTime, c.start)
		if dur, ok := bag.Int(attribute.ResponseDuration); ok {
			bag.SetTimeNanos(attribute.ResponseTime, c.start+dur)
		}
	}
	var srcPeer, dstPeer string
	if v, ok := header(bag, attribute.RequestHeaders, headerPeerMetadata); ok {
		srcPeer = v
	}
	if v, ok := header(bag, attribute.ResponseHeaders, headerPeerMetadata); ok {
		dstPeer = v
	}
	d.identity(bag, node, &c, host, srcPeer, dstPeer)
	return nil
}

func isIntermediateHTTP(t uint32) bool {
	switch t {
	case logTypeDownstreamStart, logTypeDownstreamPeriodic, logTypeUpstreamPoolReady,
		logTypeUpstreamPeriodic, logTypeTunnelEstablished:
		return true
	}
	return false
}

func header(bag *attribute.Bag, id attribute.ID, name string) (string, bool) {
	m, ok := bag.Map(id)
	if !ok {
		return "", false
	}
	return m.Get(name)
}

// request accumulates what HTTPRequestProperties says across occurrences.
type request struct {
	present             bool
	authority           string
	hdrBytes, bodyBytes uint64
}

// parseRequest fills the request attributes.
func (d *Decoder) parseRequest(b []byte, bag *attribute.Bag, r *request) error {
	r.present = true
	it := fieldIter{b: b}
	for it.next() {
		if it.typ == 0 {
			switch it.num {
			case reqMethod:
				if it.u64 < uint64(len(httpMethods)) {
					if it.u64 != 0 {
						bag.SetString(attribute.RequestMethod, httpMethods[it.u64])
					}
				} else {
					d.Stats.UnknownEnum++
				}
			case reqHeadersBytes:
				r.hdrBytes = it.u64
			case reqBodyBytes:
				r.bodyBytes = it.u64
			}
			continue
		}
		if it.typ != 2 {
			continue
		}
		switch it.num {
		case reqScheme:
			bag.SetString(attribute.RequestScheme, str(it.bytes))
		case reqAuthority:
			r.authority = str(it.bytes)
			bag.SetString(attribute.RequestHost, r.authority)
		case reqPath:
			p := str(it.bytes)
			bag.SetString(attribute.RequestPath, p)
			if i := strings.IndexByte(p, '?'); i >= 0 {
				p = p[:i]
			}
			bag.SetString(attribute.RequestURLPath, p)
		case reqUserAgent:
			bag.SetString(attribute.RequestUserAgent, str(it.bytes))
		case reqReferer:
			bag.SetString(attribute.RequestReferer, str(it.bytes))
		case reqRequestID:
			bag.SetString(attribute.RequestID, str(it.bytes))
		case reqHeaders:
			if err := d.addHeader(bag, attribute.RequestHeaders, it.bytes, headerPeerMetadata, headerContentType); err != nil {
				return err
			}
		}
	}
	return it.err
}

// response accumulates the sizes of HTTPResponseProperties across occurrences.
type response struct {
	hdrBytes, bodyBytes uint64
}

func (d *Decoder) parseResponse(b []byte, bag *attribute.Bag, r *response) error {
	it := fieldIter{b: b}
	for it.next() {
		if it.typ == 0 {
			switch it.num {
			case respHeadersBytes:
				r.hdrBytes = it.u64
			case respBodyBytes:
				r.bodyBytes = it.u64
			}
			continue
		}
		if it.typ != 2 {
			continue
		}
		var err error
		switch it.num {
		case respCode:
			var code uint32
			code, err = parseUInt32Value(it.bytes)
			bag.SetInt(attribute.ResponseCode, int64(code))
		case respHeaders:
			err = d.addHeader(bag, attribute.ResponseHeaders, it.bytes, headerPeerMetadata, headerGRPCStatus)
		case respTrailers:
			err = d.addHeader(bag, attribute.ResponseTrailers, it.bytes, headerGRPCStatus, "")
		case respCodeDetails:
			bag.SetString(attribute.ResponseCodeDetails, str(it.bytes))
		}
		if err != nil {
			return err
		}
	}
	return it.err
}

// addHeader adds one map entry to a header map: every entry when the config reads
// the map, else only the headers the decoder itself reads (identity, protocol).
func (d *Decoder) addHeader(bag *attribute.Bag, id attribute.ID, b []byte, keep1, keep2 string) error {
	if d.needs.Has(id) {
		return addMapEntry(bag, id, b)
	}
	if len(b) >= 2 && b[0] == 0x0a && b[1] < 0x80 && int(b[1])+2 <= len(b) {
		if k := str(b[2 : 2+int(b[1])]); k != keep1 && k != keep2 {
			return nil
		}
	}
	return addMapEntry(bag, id, b)
}

// addMapEntry decodes one map<string, string> entry into a header map.
func addMapEntry(bag *attribute.Bag, id attribute.ID, b []byte) error {
	// Encoders write a map entry as key then value, with short lengths: read that
	// shape directly and leave anything else to the generic loop.
	if len(b) >= 4 && b[0] == 0x0a && b[1] < 0x80 {
		kl := int(b[1])
		if rest := b[2:]; kl+2 <= len(rest) && rest[kl] == 0x12 && rest[kl+1] < 0x80 && kl+2+int(rest[kl+1]) == len(rest) {
			bag.AddHeader(id, str(rest[:kl]), str(rest[kl+2:]))
			return nil
		}
	}
	var k, v string
	it := fieldIter{b: b}
	for it.next() {
		switch {
		case it.isBytes(1):
			k = str(it.bytes)
		case it.isBytes(2):
			v = str(it.bytes)
		}
	}
	if it.err != nil {
		return it.err
	}
	bag.AddHeader(id, k, v)
	return nil
}

// DecodeTCP decodes a TCPAccessLogEntry. opensSeen tells whether the stream has
// reported connection openings, which decides whether a closing entry also stands
// for the opening ("complete") or not ("close").
func (d *Decoder) DecodeTCP(raw []byte, node *Node, opensSeen bool, bag *attribute.Bag) error {
	var c common
	var sent, received uint64
	it := fieldIter{b: raw}
	for it.next() {
		switch {
		case it.isBytes(entryCommon):
			if err := d.parseCommon(it.bytes, &c); err != nil {
				return err
			}
		case it.isBytes(tcpConnectionProperties):
			p := fieldIter{b: it.bytes}
			for p.next() {
				switch {
				case p.isVarint(connReceivedBytes):
					received = p.u64
				case p.isVarint(connSentBytes):
					sent = p.u64
				}
			}
			if p.err != nil {
				return p.err
			}
		}
	}
	if it.err != nil {
		return it.err
	}
	event := "complete"
	switch c.logType {
	case logTypeTCPUpstreamConnected, logTypeTCPConnectionStart:
		event = "open"
	case logTypeTCPPeriodic:
		event = "continue"
	case logTypeTCPConnectionEnd:
		if opensSeen {
			event = "close"
		}
	}
	sent, received = d.conns.delta(node, c.streamID, event, sent, received, &d.Stats)
	bag.SetString(attribute.ContextProtocol, "tcp")
	bag.SetString(attribute.ConnectionEvent, event)
	bag.SetInt(attribute.ConnectionSentBytes, int64(sent))
	bag.SetInt(attribute.ConnectionReceivedBytes, int64(received))
	if c.hasDuration {
		bag.SetDuration(attribute.ConnectionDuration, c.duration)
	}
	if c.start != 0 {
		bag.SetTimeNanos(attribute.RequestTime, c.start)
	}
	d.identity(bag, node, &c, "", "", "")
	return nil
}

// Direction of the reporting proxy, from the upstream cluster name.
const (
	dirUnknown = iota
	dirInbound
	dirOutbound
)

// parseCluster splits Istio's DIRECTION|PORT|SUBSET|FQDN cluster names.
func parseCluster(name string) (dir int, subset, fqdn string) {
	switch name {
	case "PassthroughCluster", "BlackHoleCluster":
		return dirOutbound, "", ""
	case "InboundPassthroughClusterIpv4", "InboundPassthroughClusterIpv6", "InboundPassthroughCluster":
		return dirInbound, "", ""
	}
	d, rest, ok := strings.Cut(name, "|")
	if !ok {
		return dirUnknown, "", ""
	}
	_, rest, _ = strings.Cut(rest, "|") // port
	subset, fqdn, _ = strings.Cut(rest, "|")
	switch d {
	case "outbound":
		return dirOutbound, subset, fqdn
	case "inbound", "inbound-vip":
		return dirInbound, subset, fqdn
	}
	return dirUnknown, subset, fqdn
}

// identity applies DESIGN.md §4: who reported, who called whom, and the destination service.
func (d *Decoder) identity(bag *attribute.Bag, node *Node, c *common, authority, srcPeer, dstPeer string) {
	bag.SetString(attribute.ContextReporterUID, node.ID)
	if node.LogName != "" {
		bag.SetString(attribute.ContextLogName, node.LogName)
	}
	bag.SetTimeNanos(attribute.ContextTime, d.now.UnixNano())
	bag.SetString(attribute.UpstreamCluster, c.cluster)
	if c.route != "" {
		bag.SetString(attribute.RouteName, c.route)
	}
	if c.streamID != "" {
		bag.SetString(attribute.ConnectionID, c.streamID)
	}
	if c.upFailure != "" {
		bag.SetString(attribute.UpstreamFailureReason, c.upFailure)
	}
	if d.needs.Has(attribute.UpstreamAddress) {
		if a := lazyAddress(c.upRemote); a.ip != "" {
			bag.SetString(attribute.UpstreamAddress, a.ip)
		}
	}
	bag.SetString(attribute.ResponseFlags, d.flagString(c.flags))
	if c.tls.hasProperties {
		if c.tls.sni != "" {
			bag.SetString(attribute.ConnectionRequestedServerName, c.tls.sni)
		}
		if c.tls.version < uint64(len(tlsVersions)) {
			bag.SetString(attribute.ConnectionTLSVersion, tlsVersions[c.tls.version])
		}
	}
	bag.SetBool(attribute.ConnectionMTLS, c.tls.hasPeerCert)

	dir, subset, fqdn := parseCluster(c.cluster)
	if subset != "" {
		bag.SetString(attribute.DestinationSubset, subset)
	}
	host := authorityHost(authority)
	var src, dst *registry.Workload
	srcPrincipal, dstPrincipal := registry.Unknown, registry.Unknown
	policy := registry.Unknown
	if dir == dirInbound {
		bag.SetString(attribute.ContextReporterKind, "inbound")
		bag.SetString(attribute.ContextReporterRole, "destination")
		dst = node.Workload
		if srcPeer != "" {
			src = d.peer(srcPeer)
		}
		if src == nil {
			src = d.lookup(lazyAddress(c.downRemote))
		}
		switch {
		case fqdn != "":
		case host != "":
			fqdn = d.qualify(host, node.Workload.Namespace)
		default:
			// TCP has no authority, but Istio's mTLS clients name the service in the
			// SNI: outbound_.PORT_.SUBSET_.FQDN.
			fqdn = sniService(c.tls.sni)
		}
		if c.tls.peerURI != "" {
			srcPrincipal = c.tls.peerURI
		}
		if c.tls.localURI != "" {
			dstPrincipal = c.tls.localURI
		}
		policy = "none"
		if c.tls.hasPeerCert {
			policy = "mutual_tls"
		}
		if d.needsEndpoints() {
			setEndpoint(bag, attribute.SourceIP, attribute.SourcePort, lazyAddress(c.downRemote))
			setEndpoint(bag, attribute.DestinationIP, attribute.DestinationPort, lazyAddress(c.downLocal))
		}
	} else {
		bag.SetString(attribute.ContextReporterKind, "outbound")
		bag.SetString(attribute.ContextReporterRole, "source")
		src = node.Workload
		if dstPeer != "" {
			dst = d.peer(dstPeer)
		}
		if dst == nil {
			dst = d.lookup(lazyAddress(c.upRemote))
		}
		if fqdn == "" {
			fqdn = host
		}
		if d.needsEndpoints() {
			setEndpoint(bag, attribute.SourceIP, attribute.SourcePort, lazyAddress(c.downRemote))
			setEndpoint(bag, attribute.DestinationIP, attribute.DestinationPort, lazyAddress(c.upRemote))
		}
	}
	setWorkload(bag, src, true)
	setWorkload(bag, dst, false)
	bag.SetString(attribute.SourcePrincipal, srcPrincipal)
	bag.SetString(attribute.DestinationPrincipal, dstPrincipal)
	bag.SetString(attribute.ConnectionSecurityPolicy, policy)

	name, ns := splitServiceHost(fqdn)
	switch c.cluster {
	case "PassthroughCluster", "BlackHoleCluster":
		name = c.cluster
	}
	if fqdn == "" {
		fqdn = registry.Unknown
	}
	bag.SetString(attribute.DestinationServiceHost, fqdn)
	bag.SetString(attribute.DestinationServiceName, name)
	bag.SetString(attribute.DestinationServiceNamespace, ns)
}

func (d *Decoder) needsEndpoints() bool {
	return d.needs.Has(attribute.SourceIP) || d.needs.Has(attribute.SourcePort) ||
		d.needs.Has(attribute.DestinationIP) || d.needs.Has(attribute.DestinationPort)
}

// lazyAddress parses an address kept raw; a malformed one is no address.
func lazyAddress(raw []byte) address {
	if raw == nil {
		return address{}
	}
	a, err := parseAddress(raw)
	if err != nil {
		return address{}
	}
	return a
}

func setEndpoint(bag *attribute.Bag, ipID, portID attribute.ID, a address) {
	if a.ip == "" {
		return
	}
	bag.SetString(ipID, a.ip)
	bag.SetInt(portID, int64(a.port))
}

// setWorkload writes one side's identity attributes.
func setWorkload(bag *attribute.Bag, w *registry.Workload, source bool) {
	ids := &destinationIDs
	if source {
		ids = &sourceIDs
	}
	bag.SetString(ids[0], w.Name)
	bag.SetString(ids[1], w.Namespace)
	bag.SetString(ids[2], w.Instance)
	bag.SetString(ids[3], w.Namespace)
	bag.SetString(ids[4], w.App)
	bag.SetString(ids[5], w.Version)
	bag.SetString(ids[6], w.CanonicalService)
	bag.SetString(ids[7], w.CanonicalRevision)
	bag.SetString(ids[8], w.ClusterID)
	if w.ServiceAccount != "" {
		bag.SetString(ids[9], w.ServiceAccount)
	}
	bag.SetString(ids[10], w.UID)
	if w.Labels != nil {
		bag.SetMap(ids[11], attribute.MapOf(w.Labels))
	}
}

var (
	sourceIDs = [...]attribute.ID{
		attribute.SourceWorkloadName, attribute.SourceWorkloadNamespace, attribute.SourceName,
		attribute.SourceNamespace, attribute.SourceApp, attribute.SourceVersion,
		attribute.SourceCanonicalService, attribute.SourceCanonicalRevision, attribute.SourceClusterID,
		attribute.SourceServiceAccount, attribute.SourceUID, attribute.SourceLabels,
	}
	destinationIDs = [...]attribute.ID{
		attribute.DestinationWorkloadName, attribute.DestinationWorkloadNamespace, attribute.DestinationName,
		attribute.DestinationNamespace, attribute.DestinationApp, attribute.DestinationVersion,
		attribute.DestinationCanonicalService, attribute.DestinationCanonicalRevision, attribute.DestinationClusterID,
		attribute.DestinationServiceAccount, attribute.DestinationUID, attribute.DestinationLabels,
	}
)

// lookup finds the workload at an address in the registry, or the unknown workload.
func (d *Decoder) lookup(a address) *registry.Workload {
	if a.ip == "" || d.reg == nil {
		return d.unknown
	}
	if w, ok := d.reg.Lookup(a.addr()); ok {
		return w
	}
	return d.unknown
}

// sniService returns the FQDN of an Istio SNI (outbound_.PORT_.SUBSET_.FQDN), or "".
func sniService(sni string) string {
	rest, ok := strings.CutPrefix(sni, "outbound_.")
	if !ok {
		return ""
	}
	_, rest, ok = strings.Cut(rest, "_.") // port
	if !ok {
		return ""
	}
	_, fqdn, ok := strings.Cut(rest, "_.") // subset
	if !ok {
		return ""
	}
	return fqdn
}

// authorityHost strips the port from an HTTP authority.
func authorityHost(a string) string {
	if a == "" {
		return ""
	}
	if a[0] == '[' { // [v6]:port
		if i := strings.IndexByte(a, ']'); i > 0 {
			return a[1:i]
		}
		return a
	}
	if i := strings.LastIndexByte(a, ':'); i >= 0 && strings.Count(a, ":") == 1 {
		return a[:i]
	}
	return a
}

// qualify turns a short host into NAME.NAMESPACE.svc.cluster.local; hosts with dots
// are taken as they are. Results are cached (they would otherwise allocate per entry).
func (d *Decoder) qualify(host, ns string) string {
	if strings.IndexByte(host, '.') >= 0 {
		return host
	}
	k := hostKey{ns: ns, host: host}
	if s, ok := d.hosts[k]; ok {
		return s
	}
	if len(d.hosts) >= maxHostCache {
		clear(d.hosts)
	}
	s := strings.Clone(host) + "." + ns + ".svc.cluster.local"
	d.hosts[hostKey{ns: ns, host: s[:len(host)]}] = s
	return s
}

// splitServiceHost returns the name and namespace of NAME.NAMESPACE.svc.DOMAIN hosts;
// other hosts are their own name, in an unknown namespace.
func splitServiceHost(host string) (name, ns string) {
	if host == "" {
		return registry.Unknown, registry.Unknown
	}
	if i := strings.Index(host, ".svc."); i > 0 {
		if name, ns, ok := strings.Cut(host[:i], "."); ok && strings.IndexByte(ns, '.') < 0 {
			return name, ns
		}
	}
	return host, registry.Unknown
}

// connTracker turns the cumulative byte counts of Envoy's periodic TCP entries into
// deltas. Two generations bound its memory: entries untouched for a TTL are dropped.
type connTracker struct {
	cur, prev map[connKey]connBytes
	rotated   time.Time
}

type connKey struct {
	node *Node
	id   string
}

type connBytes struct{ sent, received uint64 }

func newConnTracker() connTracker {
	return connTracker{cur: map[connKey]connBytes{}, prev: map[connKey]connBytes{}}
}

func (t *connTracker) rotate(now time.Time) {
	if t.rotated.IsZero() {
		t.rotated = now
	}
	if now.Sub(t.rotated) < connTTL/2 {
		return
	}
	t.prev, t.cur = t.cur, t.prev
	clear(t.cur)
	t.rotated = now
}

func (t *connTracker) delta(node *Node, id, event string, sent, received uint64, st *Stats) (uint64, uint64) {
	if id == "" || event == "complete" {
		return sent, received
	}
	k := connKey{node: node, id: id}
	last, ok := t.cur[k]
	if !ok {
		if last, ok = t.prev[k]; ok {
			delete(t.prev, k)
		}
	}
	ds, dr := sent, received
	if ok {
		if sent >= last.sent {
			ds = sent - last.sent
		}
		if received >= last.received {
			dr = received - last.received
		}
	}
	if event == "close" {
		delete(t.cur, k)
		return ds, dr
	}
	if !ok {
		if len(t.cur)+len(t.prev) >= maxConns {
			st.ConnTrackFull++
			return ds, dr
		}
		k.id = strings.Clone(id)
	}
	t.cur[k] = connBytes{sent: sent, received: received}
	return ds, dr
}

// peer decodes x-envoy-peer-metadata (base64 of a protobuf Struct of Istio's node
// metadata), caching by header value. A bad header is counted and yields nil.
func (d *Decoder) peer(h string) *registry.Workload {
	if w, ok := d.peers[h]; ok {
		return w
	}
	w, err := DecodePeerMetadata(h, d.trustDomain)
	if err != nil {
		d.Stats.BadPeerMetadata++
	}
	if len(h) > maxCachedPeerHeader {
		return w // decoded each time rather than held (see maxCachedPeerHeader)
	}
	if len(d.peers) >= maxPeerCache {
		clear(d.peers)
	}
	d.peers[strings.Clone(h)] = w
	return w
}

// maxCachedPeerHeader bounds the peer headers the cache keeps: Istio's are 1–3 KiB,
// and a client writing one as long as Envoy lets a header be would otherwise make
// each of maxPeerCache entries that long.
const maxCachedPeerHeader = 16 << 10

// errNoIdentity is returned for peer metadata without a workload or pod name.
var errNoIdentity = fmt.Errorf("peer metadata names no workload")
