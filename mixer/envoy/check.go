package envoy

import (
	"net/netip"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/registry"
)

// CheckDecoder turns ext_authz CheckRequests into bags. Unlike Decoder it is safe for
// concurrent use: checks arrive on many gRPC goroutines at once.
type CheckDecoder struct {
	trustDomain string
	reg         *registry.Registry
	unknown     *registry.Workload

	mu sync.RWMutex
	// principals are the workloads of peers known only by their certificates.
	principals map[string]*registry.Workload
}

// NewCheckDecoder returns a decoder that looks peers up in reg.
func NewCheckDecoder(reg *registry.Registry) *CheckDecoder {
	unknown := &registry.Workload{Name: registry.Unknown, Namespace: registry.Unknown, Instance: registry.Unknown}
	unknown.Derive(reg.TrustDomain())
	unknown.CanonicalService, unknown.CanonicalRevision = registry.Unknown, registry.Unknown
	return &CheckDecoder{trustDomain: reg.TrustDomain(), reg: reg, unknown: unknown, principals: map[string]*registry.Workload{}}
}

// Decode fills bag from the fields of a check. ext_authz runs at the server side of
// a request, so the proxy is the destination: the source comes from the peer's
// certificate and the registry, the destination from the registry or the peer
// labels Envoy sends. The bag's strings are f's.
//
// Unlike an access log's, a check's source is never taken from an
// x-envoy-peer-metadata header: a policy decides on it, and any client can write
// a request header (Istio's own proxies consume the header before ext_authz runs).
func (d *CheckDecoder) Decode(f *CheckFields, now time.Time, bag *attribute.Bag) {
	if len(f.headers.kv) == 0 && f.hasHeaderMap {
		f.headersFromMap()
	}
	headers := &f.headers
	bag.SetTimeNanos(attribute.ContextTime, now.UnixNano())
	bag.SetString(attribute.ContextReporterKind, "inbound")
	bag.SetString(attribute.ContextReporterRole, "destination")
	protocol := "http"
	if strings.HasPrefix(headers.get("content-type"), "application/grpc") {
		protocol = "grpc"
	}
	bag.SetString(attribute.ContextProtocol, protocol)
	if len(f.extensions.kv) > 0 {
		bag.SetMap(attribute.ContextExtensions, attribute.PairsOf(f.extensions.kv))
	}

	if f.hasHTTP {
		bag.SetString(attribute.RequestMethod, f.method)
		path := f.path
		bag.SetString(attribute.RequestPath, path)
		if i := strings.IndexByte(path, '?'); i >= 0 {
			path = path[:i]
		}
		bag.SetString(attribute.RequestURLPath, path)
		bag.SetString(attribute.RequestHost, f.host)
		if f.scheme != "" {
			bag.SetString(attribute.RequestScheme, f.scheme)
		}
		if f.id != "" {
			bag.SetString(attribute.RequestID, f.id)
		}
		if f.version != "" {
			bag.SetString(attribute.RequestHTTPVersion, f.version)
		}
		if ua := headers.get("user-agent"); ua != "" {
			bag.SetString(attribute.RequestUserAgent, ua)
		}
		if ref := headers.get("referer"); ref != "" {
			bag.SetString(attribute.RequestReferer, ref)
		}
		bag.SetInt(attribute.RequestSize, max(f.size, 0))
		bag.SetMap(attribute.RequestHeaders, attribute.PairsOf(headers.kv))
	}
	if f.hasTime {
		bag.SetTime(attribute.RequestTime, time.Unix(f.timeSecs, int64(f.timeNanos)))
	}

	src, dst := &f.source, &f.destination
	srcAddr, dstAddr := src.address(), dst.address()
	// A peer certificate's Istio identity is authenticated; a registry entry can be
	// stale. A workload the certificate contradicts is not the caller.
	srcNS, srcSA, certified := spiffeIdentity(src.principal)
	snap := d.reg.Snapshot()
	sw := d.lookup(snap, srcAddr.addr)
	onlyCert := certified && !ofIdentity(sw, srcNS, srcSA)
	if onlyCert {
		sw = d.certified(src.principal, srcNS, srcSA)
	}
	dw := d.lookup(snap, dstAddr.addr)
	labelled := dw == d.unknown && len(dst.labels.kv) > 0
	if labelled {
		dw = d.fromLabels(dst.labels.goMap())
	}
	// The destination principal is the proxy's own certificate, as Envoy knows it.
	if ns, sa, ok := spiffeIdentity(dst.principal); ok && !ofIdentity(dw, ns, sa) {
		if labelled {
			// The proxy's labels name the workload (dw is this check's own), its
			// certificate the namespace and service account.
			dw.Namespace, dw.ServiceAccount = ns, sa
			dw.Derive(d.trustDomain)
		} else {
			dw = d.certified(dst.principal, ns, sa)
		}
	}
	setWorkload(bag, sw, true)
	if certified && sw.ServiceAccount == "" {
		bag.SetString(attribute.SourceServiceAccount, srcSA)
	}
	setWorkload(bag, dw, false)
	if len(src.labels.kv) > 0 && (sw == d.unknown || onlyCert) {
		bag.SetMap(attribute.SourceLabels, attribute.PairsOf(src.labels.kv))
	}
	setAddr(bag, attribute.SourceIP, attribute.SourcePort, srcAddr)
	setAddr(bag, attribute.DestinationIP, attribute.DestinationPort, dstAddr)

	// Without a certificate a principal is absent, not "unknown": a policy then
	// sees a missing value (a match on it is false, an allow-list denies it), and
	// "unknown" in an allow-list, or a certificate that says it, lets no caller
	// without one through.
	if src.principal != "" {
		bag.SetString(attribute.SourcePrincipal, src.principal)
	}
	if dst.principal != "" {
		bag.SetString(attribute.DestinationPrincipal, dst.principal)
	}
	mtls := src.cert != "" || src.principal != ""
	bag.SetBool(attribute.ConnectionMTLS, mtls)
	policy := "none"
	if mtls {
		policy = "mutual_tls"
	}
	bag.SetString(attribute.ConnectionSecurityPolicy, policy)
	if f.sni != "" {
		bag.SetString(attribute.ConnectionRequestedServerName, f.sni)
	}

	// DNS names do not depend on case or on a final dot; a client could otherwise
	// step past a rule on the service by writing API.shop.svc.cluster.local.
	host := strings.ToLower(strings.TrimSuffix(authorityHost(f.host), "."))
	switch {
	case host == "":
		host = registry.Unknown
	case strings.IndexByte(host, '.') < 0 && strings.IndexByte(host, ':') < 0 && dw.Namespace != registry.Unknown:
		// A short name, qualified; an IPv6 address (like an IPv4 one) is none.
		host = host + "." + dw.Namespace + ".svc.cluster.local"
	}
	name, ns := splitServiceHost(host)
	if dw.Namespace != registry.Unknown && ns != dw.Namespace {
		// The request reached a workload of dw's namespace, whatever its Host says:
		// an inbound route takes any Host, so a Host naming another namespace, or
		// none, names no service of this workload, and must not move the request
		// out of the scope of rules on the destination's namespace.
		host, name, ns = registry.Unknown, registry.Unknown, dw.Namespace
	}
	bag.SetString(attribute.DestinationServiceHost, host)
	bag.SetString(attribute.DestinationServiceName, name)
	bag.SetString(attribute.DestinationServiceNamespace, ns)
}

type peerAddr struct {
	ip   string
	port uint32
	addr netip.Addr
}

// address is the peer's socket address, its IP parsed for registry lookups.
func (p *peerFields) address() peerAddr {
	if !p.hasSocket {
		return peerAddr{}
	}
	a := peerAddr{ip: p.ip, port: p.port}
	if ip, err := netip.ParseAddr(a.ip); err == nil {
		a.addr = ip
		if ip.Is4In6() {
			// An IPv4 peer on a dual-stack socket: the attribute is the IPv4
			// address, as the list adapter and the registry take it, and as CEL's
			// ip() parses it (it refuses the mapped form).
			a.addr = ip.Unmap()
			a.ip = a.addr.String()
		}
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

// spiffeIdentity returns the namespace and service account of an Istio identity,
// spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT, as Istio's policies read
// a namespace from it whatever the trust domain.
func spiffeIdentity(principal string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(principal, "spiffe://")
	if !ok {
		return "", "", false
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok || td == "" {
		return "", "", false
	}
	if path, ok = strings.CutPrefix(path, "ns/"); !ok {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(path, "/sa/")
	if !ok || ns == "" || sa == "" || strings.IndexByte(ns, '/') >= 0 || strings.IndexByte(sa, '/') >= 0 {
		return "", "", false
	}
	return ns, sa, true
}

// ofIdentity reports whether w can be the workload of namespace ns and service
// account sa: its namespace is ns, and its service account, where known, is sa.
func ofIdentity(w *registry.Workload, ns, sa string) bool {
	return w.Namespace == ns && (w.ServiceAccount == "" || w.ServiceAccount == sa)
}

// maxCachedPrincipal bounds the principals the certified cache keeps, as the cache
// holds maxPeerCache of them: a SPIFFE ID has at most 2048 bytes, and a longer
// principal, which only a client reaching the check port itself can send (up to
// the message bound), is decoded afresh each time.
const maxCachedPrincipal = 2048

// certified is the workload of a peer known only by its certificate's identity,
// through a bounded cache shared by all requests.
func (d *CheckDecoder) certified(principal, ns, sa string) *registry.Workload {
	d.mu.RLock()
	w, ok := d.principals[principal]
	d.mu.RUnlock()
	if ok {
		return w
	}
	w = &registry.Workload{Name: registry.Unknown, Namespace: strings.Clone(ns), Instance: registry.Unknown, ServiceAccount: strings.Clone(sa)}
	w.Derive(d.trustDomain)
	w.CanonicalService, w.CanonicalRevision = registry.Unknown, registry.Unknown
	if len(principal) > maxCachedPrincipal {
		return w
	}
	d.mu.Lock()
	if len(d.principals) >= maxPeerCache {
		clear(d.principals)
	}
	// The principal may view a request's buffer: the cache keeps a copy.
	d.principals[strings.Clone(principal)] = w
	d.mu.Unlock()
	return w
}

// Address builds an Envoy socket address, for simulated proxies and tests.
func Address(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}
