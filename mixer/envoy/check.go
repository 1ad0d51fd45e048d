package envoy

import (
	"net/netip"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/registry"
)

// CheckDecoder turns ext_authz CheckRequests into bags. Unlike Decoder it is safe for
// concurrent use: checks arrive on many gRPC goroutines at once.
type CheckDecoder struct {
	trustDomain string
	reg         *registry.Registry
	unknown     *registry.Workload

	mu    sync.RWMutex
	peers map[string]*registry.Workload
}

// NewCheckDecoder returns a decoder that looks peers up in reg.
func NewCheckDecoder(reg *registry.Registry) *CheckDecoder {
	unknown := &registry.Workload{Name: registry.Unknown, Namespace: registry.Unknown, Instance: registry.Unknown}
	unknown.Derive(reg.TrustDomain())
	unknown.CanonicalService, unknown.CanonicalRevision = registry.Unknown, registry.Unknown
	return &CheckDecoder{trustDomain: reg.TrustDomain(), reg: reg, unknown: unknown, peers: map[string]*registry.Workload{}}
}

// Decode fills bag from req. ext_authz runs at the server side of a request, so the
// proxy is the destination: the source comes from x-envoy-peer-metadata or the
// registry, the destination from the registry or the peer labels Envoy sends.
func (d *CheckDecoder) Decode(req *authv3.CheckRequest, now time.Time, bag *attribute.Bag) {
	ac := req.GetAttributes()
	http := ac.GetRequest().GetHttp()
	headers := http.GetHeaders()
	if len(headers) == 0 && http.GetHeaderMap() != nil {
		headers = make(map[string]string, len(http.GetHeaderMap().GetHeaders()))
		for _, h := range http.GetHeaderMap().GetHeaders() {
			v := h.GetValue()
			if v == "" {
				v = string(h.GetRawValue())
			}
			headers[strings.ToLower(h.GetKey())] = v
		}
	}
	bag.SetTimeNanos(attribute.ContextTime, now.UnixNano())
	bag.SetString(attribute.ContextReporterKind, "inbound")
	bag.SetString(attribute.ContextReporterRole, "destination")
	protocol := "http"
	if strings.HasPrefix(headers["content-type"], "application/grpc") {
		protocol = "grpc"
	}
	bag.SetString(attribute.ContextProtocol, protocol)
	if len(ac.GetContextExtensions()) > 0 {
		bag.SetMap(attribute.ContextExtensions, attribute.MapOf(ac.GetContextExtensions()))
	}

	if http != nil {
		bag.SetString(attribute.RequestMethod, http.GetMethod())
		path := http.GetPath()
		bag.SetString(attribute.RequestPath, path)
		if i := strings.IndexByte(path, '?'); i >= 0 {
			path = path[:i]
		}
		bag.SetString(attribute.RequestURLPath, path)
		bag.SetString(attribute.RequestHost, http.GetHost())
		if http.GetScheme() != "" {
			bag.SetString(attribute.RequestScheme, http.GetScheme())
		}
		if http.GetId() != "" {
			bag.SetString(attribute.RequestID, http.GetId())
		}
		if p := http.GetProtocol(); p != "" {
			bag.SetString(attribute.RequestHTTPVersion, p)
		}
		if ua := headers["user-agent"]; ua != "" {
			bag.SetString(attribute.RequestUserAgent, ua)
		}
		if ref := headers["referer"]; ref != "" {
			bag.SetString(attribute.RequestReferer, ref)
		}
		bag.SetInt(attribute.RequestSize, max(http.GetSize(), 0))
		bag.SetMap(attribute.RequestHeaders, attribute.MapOf(headers))
	}
	if t := ac.GetRequest().GetTime(); t != nil {
		bag.SetTime(attribute.RequestTime, t.AsTime())
	}

	src, dst := ac.GetSource(), ac.GetDestination()
	srcAddr, dstAddr := peerAddress(src), peerAddress(dst)
	var sw, dw *registry.Workload
	if h := headers[headerPeerMetadata]; h != "" {
		sw = d.peer(h)
	}
	snap := d.reg.Snapshot()
	if sw == nil {
		sw = d.lookup(snap, srcAddr.addr)
	}
	dw = d.lookup(snap, dstAddr.addr)
	if dw == d.unknown && len(dst.GetLabels()) > 0 {
		dw = d.fromLabels(dst.GetLabels())
	}
	setWorkload(bag, sw, true)
	setWorkload(bag, dw, false)
	if len(src.GetLabels()) > 0 && sw == d.unknown {
		bag.SetMap(attribute.SourceLabels, attribute.MapOf(src.GetLabels()))
	}
	setAddr(bag, attribute.SourceIP, attribute.SourcePort, srcAddr)
	setAddr(bag, attribute.DestinationIP, attribute.DestinationPort, dstAddr)

	srcPrincipal, dstPrincipal := orUnknown(src.GetPrincipal()), orUnknown(dst.GetPrincipal())
	bag.SetString(attribute.SourcePrincipal, srcPrincipal)
	bag.SetString(attribute.DestinationPrincipal, dstPrincipal)
	mtls := src.GetCertificate() != "" || src.GetPrincipal() != ""
	bag.SetBool(attribute.ConnectionMTLS, mtls)
	policy := "none"
	if mtls {
		policy = "mutual_tls"
	}
	bag.SetString(attribute.ConnectionSecurityPolicy, policy)
	if sni := ac.GetTlsSession().GetSni(); sni != "" {
		bag.SetString(attribute.ConnectionRequestedServerName, sni)
	}

	host := authorityHost(http.GetHost())
	switch {
	case host == "":
		host = registry.Unknown
	case strings.IndexByte(host, '.') < 0 && dw.Namespace != registry.Unknown:
		host = host + "." + dw.Namespace + ".svc.cluster.local"
	}
	name, ns := splitServiceHost(host)
	bag.SetString(attribute.DestinationServiceHost, host)
	bag.SetString(attribute.DestinationServiceName, name)
	bag.SetString(attribute.DestinationServiceNamespace, ns)
}

type peerAddr struct {
	ip   string
	port uint32
	addr netip.Addr
}

func peerAddress(p *authv3.AttributeContext_Peer) peerAddr {
	sa := p.GetAddress().GetSocketAddress()
	if sa == nil {
		return peerAddr{}
	}
	a := peerAddr{ip: sa.GetAddress(), port: sa.GetPortValue()}
	if ip, err := netip.ParseAddr(a.ip); err == nil {
		a.addr = ip
	}
	return a
}

func setAddr(bag *attribute.Bag, ipID, portID attribute.ID, a peerAddr) {
	if a.ip == "" {
		return
	}
	bag.SetString(ipID, a.ip)
	bag.SetInt(portID, int64(a.port))
}

func orUnknown(s string) string {
	if s == "" {
		return registry.Unknown
	}
	return s
}

func (d *CheckDecoder) lookup(snap *registry.Snapshot, ip netip.Addr) *registry.Workload {
	if !ip.IsValid() {
		return d.unknown
	}
	if w, ok := snap.Lookup(ip); ok {
		return w
	}
	return d.unknown
}

// fromLabels builds the destination from the labels Envoy attaches to the peer.
func (d *CheckDecoder) fromLabels(labels map[string]string) *registry.Workload {
	w := &registry.Workload{
		Name:      first(labels[registry.LabelWorkloadName], labels[registry.LabelApp], registry.Unknown),
		Namespace: registry.Unknown,
		Instance:  registry.Unknown,
		Labels:    labels,
	}
	w.Derive(d.trustDomain)
	return w
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// peer decodes x-envoy-peer-metadata through a bounded cache shared by all requests.
func (d *CheckDecoder) peer(h string) *registry.Workload {
	d.mu.RLock()
	w, ok := d.peers[h]
	d.mu.RUnlock()
	if ok {
		return w
	}
	w, err := DecodePeerMetadata(h, d.trustDomain)
	if err != nil {
		w = nil
	}
	d.mu.Lock()
	if len(d.peers) >= maxPeerCache {
		clear(d.peers)
	}
	d.peers[h] = w
	d.mu.Unlock()
	return w
}

// Address builds an Envoy socket address, for simulated proxies and tests.
func Address(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}
