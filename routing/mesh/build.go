package mesh

import (
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	networking "istio.io/api/networking/v1"

	"github.com/sluicemesh/sluice/mixer/config"
)

// Options tune how names are qualified.
type Options struct {
	// DomainSuffix qualifies short host names: reviews in namespace default becomes
	// reviews.default.svc.DomainSuffix. Default cluster.local.
	DomainSuffix string
}

// Validator rejects mesh objects that Sluice cannot route as written. It implements
// config.Validator.
type Validator struct{ Options Options }

// Validate implements config.Validator.
func (v Validator) Validate(s *config.Snapshot) error {
	_, err := Build(s, v.Options)
	return err
}

// Build checks the mesh objects of a snapshot and returns their routing model. The
// error is a config.ErrorList with every problem, each at its file and line.
func Build(s *config.Snapshot, opts Options) (*Mesh, error) {
	if opts.DomainSuffix == "" {
		opts.DomainSuffix = DefaultDomainSuffix
	}
	b := &builder{opts: opts, m: &Mesh{byHost: map[string]*Service{}}, vips: map[string]*config.Object{}, fields: supportedFields(), deprecated: replacements()}
	for _, o := range s.ByKind(config.KindWorkloadEntry) {
		b.workloadEntry(o)
	}
	for _, o := range s.ByKind(config.KindServiceEntry) {
		b.serviceEntry(o)
	}
	// A host written explicitly wins over another host's alias of the same name,
	// whichever was read first: two virtual hosts may not share a domain.
	for _, svc := range b.m.Services {
		kept := svc.Aliases[:0]
		for _, a := range svc.Aliases {
			if _, clash := b.m.byHost[a]; !clash {
				kept = append(kept, a)
			}
		}
		svc.Aliases = kept
	}
	for _, o := range s.ByKind(config.KindDestinationRule) {
		b.destinationRule(o)
	}
	// Routes are read once every service knows its subsets.
	for _, o := range s.ByKind(config.KindVirtualService) {
		b.virtualService(o)
	}
	sort.Slice(b.m.Services, func(i, j int) bool { return b.m.Services[i].Host < b.m.Services[j].Host })
	if err := b.c.err(); err != nil {
		b.c.errs = sortErrors(b.c.errs)
		return nil, b.c.errs
	}
	return b.m, nil
}

func sortErrors(l config.ErrorList) config.ErrorList {
	sort.SliceStable(l, func(i, j int) bool {
		if l[i].Pos.File != l[j].Pos.File {
			return l[i].Pos.File < l[j].Pos.File
		}
		return l[i].Pos.Line < l[j].Pos.Line
	})
	return l
}

type builder struct {
	opts       Options
	m          *Mesh
	c          collector
	vips       map[string]*config.Object
	fields     map[string]map[string]bool
	deprecated map[string]string
}

// qualify turns a host as written in namespace ns into the service host it names.
func (b *builder) qualify(host, ns string) string {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if !strings.Contains(host, ".") {
		return host + "." + ns + ".svc." + b.opts.DomainSuffix
	}
	return host
}

// aliases returns the shorter names of a Kubernetes-style host.
func (b *builder) aliases(host string) []string {
	suffix := ".svc." + b.opts.DomainSuffix
	if !strings.HasSuffix(host, suffix) {
		return nil
	}
	short := strings.TrimSuffix(host, suffix) // name.namespace
	if strings.Count(short, ".") != 1 {
		return nil
	}
	return []string{short, short + ".svc"}
}

var hostLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func validHost(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if len(l) > 63 || !hostLabel.MatchString(l) {
			return false
		}
	}
	return true
}

func (b *builder) workloadEntry(o *config.Object) {
	we, ok := o.Spec.(*networking.WorkloadEntry)
	if !ok {
		return
	}
	b.checkFields(o, we)
	if _, err := netip.ParseAddr(we.GetAddress()); err != nil {
		b.c.add(o.PosOf("address"), "WorkloadEntry address %q is not an IP address (Sluice routes to IP endpoints only)", we.GetAddress())
	}
	if we.GetWeight() > 1<<24 {
		b.c.add(o.PosOf("weight"), "weight %d is too large (at most %d)", we.GetWeight(), 1<<24)
	}
	for name, p := range we.GetPorts() {
		if p == 0 || p > 65535 {
			b.c.add(o.PosOf("ports."+name), "port %s: %d is not a port number", name, p)
		}
	}
}

func (b *builder) serviceEntry(o *config.Object) {
	se, ok := o.Spec.(*networking.ServiceEntry)
	if !ok {
		return
	}
	before := len(b.c.errs)
	b.checkFields(o, se)
	checkExportTo(&b.c, o, se.GetExportTo())
	if se.GetResolution() != networking.ServiceEntry_STATIC {
		b.c.add(o.PosOf("resolution"), "resolution %s is not supported: Sluice routes ServiceEntries with resolution: STATIC (endpoints from workloadSelector, WorkloadEntries or inline endpoints)", se.GetResolution())
	}
	if len(se.GetHosts()) == 0 {
		b.c.add(o.Pos, "ServiceEntry %s/%s has no hosts", o.Namespace, o.Name)
	}
	if len(se.GetPorts()) == 0 {
		b.c.add(o.Pos, "ServiceEntry %s/%s has no ports", o.Namespace, o.Name)
	}
	if se.GetWorkloadSelector() != nil && len(se.GetEndpoints()) > 0 {
		b.c.add(o.PosOf("endpoints"), "a ServiceEntry has either workloadSelector or endpoints, not both")
	}
	var ports []Port
	seenPort := map[uint32]bool{}
	seenName := map[string]bool{}
	for i, p := range se.GetPorts() {
		path := fmt.Sprintf("ports[%d]", i)
		if p.GetNumber() == 0 || p.GetNumber() > 65535 {
			b.c.add(o.PosOf(path+".number"), "port number %d is not between 1 and 65535", p.GetNumber())
			continue
		}
		if reservedPort(p.GetNumber()) {
			b.c.add(o.PosOf(path+".number"), "port %d is reserved for the sidecar (Istio's 15000-15090 ports): choose another", p.GetNumber())
			continue
		}
		if seenPort[p.GetNumber()] {
			b.c.add(o.PosOf(path+".number"), "port %d is listed twice", p.GetNumber())
		}
		seenPort[p.GetNumber()] = true
		if p.GetName() != "" {
			if seenName[p.GetName()] {
				b.c.add(o.PosOf(path+".name"), "port name %q is used twice", p.GetName())
			}
			seenName[p.GetName()] = true
		}
		proto, ok := portProtocol(p.GetProtocol(), p.GetName())
		if !ok {
			b.c.add(o.PosOf(path), "port %d: protocol %q is not supported (Sluice routes HTTP, HTTP2 and GRPC; give protocol or a name like http-*, grpc-*)", p.GetNumber(), first(p.GetProtocol(), p.GetName()))
			continue
		}
		target := p.GetTargetPort()
		if target > 65535 {
			b.c.add(o.PosOf(path+".targetPort"), "targetPort %d is not a port number", target)
		}
		if target == 0 {
			target = p.GetNumber()
		}
		ports = append(ports, Port{Number: p.GetNumber(), Name: p.GetName(), Protocol: proto, TargetPort: target})
	}
	var endpoints []StaticEndpoint
	for i, e := range se.GetEndpoints() {
		path := fmt.Sprintf("endpoints[%d]", i)
		if _, err := netip.ParseAddr(e.GetAddress()); err != nil {
			b.c.add(o.PosOf(path+".address"), "endpoint address %q is not an IP address (Sluice routes to IP endpoints only)", e.GetAddress())
			continue
		}
		if e.GetWeight() > 1<<24 {
			b.c.add(o.PosOf(path+".weight"), "weight %d is too large (at most %d)", e.GetWeight(), 1<<24)
		}
		endpoints = append(endpoints, StaticEndpoint{
			Address: e.GetAddress(), Labels: e.GetLabels(), Ports: e.GetPorts(), Weight: e.GetWeight(), Locality: e.GetLocality(),
		})
	}
	var addresses []string
	for i, a := range se.GetAddresses() {
		if _, err := netip.ParseAddr(a); err != nil {
			b.c.add(o.PosOf(fmt.Sprintf("addresses[%d]", i)), "address %q is not an IP address", a)
			continue
		}
		if prev, dup := b.vips[a]; dup {
			b.c.add(o.PosOf(fmt.Sprintf("addresses[%d]", i)), "address %s is already used by ServiceEntry %s/%s at %s", a, prev.Namespace, prev.Name, prev.Pos)
			continue
		}
		b.vips[a] = o
		addresses = append(addresses, a)
	}
	var selector map[string]string
	if ws := se.GetWorkloadSelector(); ws != nil {
		selector = ws.GetLabels()
		if len(selector) == 0 {
			b.c.add(o.PosOf("workloadSelector"), "workloadSelector has no labels")
		}
	}
	if len(b.c.errs) > before {
		return // positions of later errors would only repeat these
	}
	for i, h := range se.GetHosts() {
		path := fmt.Sprintf("hosts[%d]", i)
		if strings.Contains(h, "*") {
			b.c.add(o.PosOf(path), "wildcard host %q is not supported", h)
			continue
		}
		host := b.qualify(h, o.Namespace)
		if !validHost(host) {
			b.c.add(o.PosOf(path), "host %q is not a valid DNS name", h)
			continue
		}
		if prev, dup := b.m.byHost[host]; dup {
			b.c.add(o.PosOf(path), "host %s is already defined by ServiceEntry %s/%s at %s", host, prev.Entry.Namespace, prev.Entry.Name, prev.Entry.Pos)
			continue
		}
		s := &Service{
			Host: host, Aliases: b.aliases(host), Namespace: o.Namespace, Addresses: addresses,
			Ports: ports, Selector: selector, Endpoints: endpoints, Entry: o,
		}
		b.m.byHost[host] = s
		b.m.Services = append(b.m.Services, s)
	}
}

// reservedPort reports the ports Istio's sidecars use themselves: the virtual
// listeners (15001, 15006) and Envoy's admin, health and stats ports.
func reservedPort(p uint32) bool {
	switch p {
	case 15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090:
		return true
	}
	return false
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// portProtocol returns the protocol of a port, inferred from its name like Istio does
// when the protocol is not given.
func portProtocol(protocol, name string) (Protocol, bool) {
	p := strings.ToUpper(protocol)
	if p == "" {
		p, _, _ = strings.Cut(strings.ToUpper(name), "-")
	}
	switch p {
	case "HTTP":
		return ProtocolHTTP, true
	case "HTTP2":
		return ProtocolHTTP2, true
	case "GRPC":
		return ProtocolGRPC, true
	}
	return "", false
}

func checkExportTo(c *collector, o *config.Object, exportTo []string) {
	for i, e := range exportTo {
		if e != "*" {
			c.add(o.PosOf(fmt.Sprintf("exportTo[%d]", i)), "exportTo %q is not supported: Sluice exports every object to every namespace (use \"*\" or remove exportTo)", e)
		}
	}
}

// service resolves a host written in an object of namespace ns.
func (b *builder) service(host, ns string) (*Service, string) {
	q := b.qualify(host, ns)
	if s, ok := b.m.byHost[q]; ok {
		return s, q
	}
	// Aliases are accepted where Istio users write them (reviews.default).
	for _, s := range b.m.Services {
		for _, a := range s.Aliases {
			if a == q {
				return s, s.Host
			}
		}
	}
	return nil, q
}

func (b *builder) unknownHost(pos config.Position, host, q string) {
	b.c.add(pos, "unknown host %q (%s is not a host of any ServiceEntry)", host, q)
}

func (b *builder) destinationRule(o *config.Object) {
	dr, ok := o.Spec.(*networking.DestinationRule)
	if !ok {
		return
	}
	b.checkFields(o, dr)
	checkExportTo(&b.c, o, dr.GetExportTo())
	s, q := b.service(dr.GetHost(), o.Namespace)
	if s == nil {
		b.unknownHost(o.PosOf("host"), dr.GetHost(), q)
		return
	}
	if s.Rule != nil {
		b.c.add(o.PosOf("host"), "host %s already has DestinationRule %s/%s at %s", s.Host, s.Rule.Namespace, s.Rule.Name, s.Rule.Pos)
		return
	}
	s.Rule = o
	s.Policy = b.policy(o, "trafficPolicy", dr.GetTrafficPolicy(), Policy{})
	seen := map[string]int{}
	for i, ss := range dr.GetSubsets() {
		path := fmt.Sprintf("subsets[%d]", i)
		if ss.GetName() == "" {
			b.c.add(o.PosOf(path), "subset %d has no name", i)
			continue
		}
		if !hostLabel.MatchString(ss.GetName()) {
			b.c.add(o.PosOf(path+".name"), "subset name %q must be a lower-case DNS label (it becomes part of cluster names)", ss.GetName())
			continue
		}
		if j, dup := seen[ss.GetName()]; dup {
			b.c.add(o.PosOf(path+".name"), "subset %q is already defined at subsets[%d]", ss.GetName(), j)
			continue
		}
		seen[ss.GetName()] = i
		if len(ss.GetLabels()) == 0 {
			b.c.add(o.PosOf(path), "subset %q has no labels", ss.GetName())
		}
		s.Subsets = append(s.Subsets, &Subset{
			Name: ss.GetName(), Labels: ss.GetLabels(),
			Policy: b.policy(o, path+".trafficPolicy", ss.GetTrafficPolicy(), s.Policy),
		})
	}
	sort.Slice(s.Subsets, func(i, j int) bool { return s.Subsets[i].Name < s.Subsets[j].Name })
}

// policy reads a traffic policy; each of its settings groups replaces base's.
func (b *builder) policy(o *config.Object, path string, tp *networking.TrafficPolicy, base Policy) Policy {
	p := base
	if tp == nil {
		return p
	}
	if lb := tp.GetLoadBalancer(); lb != nil {
		p.LB, p.HashHeader, p.MinRingSize = "", "", 0
		lbPath := path + ".loadBalancer"
		if ch := lb.GetConsistentHash(); ch != nil {
			p.LB = LBRingHash
			p.HashHeader = strings.ToLower(ch.GetHttpHeaderName())
			if p.HashHeader == "" {
				b.c.add(o.PosOf(lbPath+".consistentHash"), "consistentHash needs httpHeaderName (the hash key Sluice implements)")
			}
			p.MinRingSize = ch.GetRingHash().GetMinimumRingSize()
			if p.MinRingSize > 8<<20 {
				b.c.add(o.PosOf(lbPath+".consistentHash"), "minimumRingSize %d is larger than 8388608", p.MinRingSize)
			}
		} else {
			switch lb.GetSimple() {
			case networking.LoadBalancerSettings_UNSPECIFIED, networking.LoadBalancerSettings_ROUND_ROBIN:
				p.LB = LBRoundRobin
			case networking.LoadBalancerSettings_LEAST_REQUEST, networking.LoadBalancerSettings_LEAST_CONN:
				p.LB = LBLeastRequest
			default:
				b.c.add(o.PosOf(lbPath+".simple"), "load balancer %s is not supported (ROUND_ROBIN, LEAST_REQUEST, or consistentHash for RING_HASH)", lb.GetSimple())
			}
		}
	}
	if cp := tp.GetConnectionPool(); cp != nil {
		p.MaxConnections, p.ConnectTimeout = 0, 0
		p.MaxPendingRequests, p.MaxRequests, p.MaxRequestsPerConnection, p.MaxRetries = 0, 0, 0, 0
		cpPath := path + ".connectionPool"
		p.MaxConnections = b.positive(o, cpPath+".tcp.maxConnections", cp.GetTcp().GetMaxConnections())
		p.ConnectTimeout = b.duration(o, cpPath+".tcp.connectTimeout", cp.GetTcp().GetConnectTimeout())
		p.MaxPendingRequests = b.positive(o, cpPath+".http.http1MaxPendingRequests", cp.GetHttp().GetHttp1MaxPendingRequests())
		p.MaxRequests = b.positive(o, cpPath+".http.http2MaxRequests", cp.GetHttp().GetHttp2MaxRequests())
		p.MaxRequestsPerConnection = b.positive(o, cpPath+".http.maxRequestsPerConnection", cp.GetHttp().GetMaxRequestsPerConnection())
		p.MaxRetries = b.positive(o, cpPath+".http.maxRetries", cp.GetHttp().GetMaxRetries())
	}
	if od := tp.GetOutlierDetection(); od != nil {
		odPath := path + ".outlierDetection"
		out := &Outlier{}
		if v := od.GetConsecutive_5XxErrors(); v != nil {
			out.Consecutive5xx, out.Has5xx = v.GetValue(), true
		}
		if v := od.GetConsecutiveGatewayErrors(); v != nil {
			out.ConsecutiveGateway, out.HasGateway = v.GetValue(), true
		}
		out.Interval = b.duration(o, odPath+".interval", od.GetInterval())
		out.BaseEjectionTime = b.duration(o, odPath+".baseEjectionTime", od.GetBaseEjectionTime())
		if v := od.GetMaxEjectionPercent(); v != 0 {
			if v < 0 || v > 100 {
				b.c.add(o.PosOf(odPath+".maxEjectionPercent"), "maxEjectionPercent %d is not between 0 and 100", v)
			}
			out.MaxEjectionPercent, out.HasMaxEjectionPercent = uint32(v), true
		}
		if v := od.GetMinHealthPercent(); v != 0 {
			if v < 0 || v > 100 {
				b.c.add(o.PosOf(odPath+".minHealthPercent"), "minHealthPercent %d is not between 0 and 100", v)
			}
			out.MinHealthPercent = uint32(v)
		}
		p.Outlier = out
	}
	return p
}

func (b *builder) positive(o *config.Object, path string, v int32) uint32 {
	if v < 0 {
		b.c.add(o.PosOf(path), "%s must not be negative", lastSegment(path))
		return 0
	}
	return uint32(v)
}

// duration reads a duration that must be positive when given.
func (b *builder) duration(o *config.Object, path string, d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	if err := d.CheckValid(); err != nil || d.AsDuration() <= 0 {
		b.c.add(o.PosOf(path), "%s must be a positive duration", lastSegment(path))
		return 0
	}
	if d.AsDuration() < time.Millisecond {
		b.c.add(o.PosOf(path), "%s must be at least 1ms", lastSegment(path))
		return 0
	}
	return d.AsDuration()
}

func lastSegment(path string) string {
	if i := strings.LastIndex(path, "."); i >= 0 {
		return path[i+1:]
	}
	return path
}

func (b *builder) virtualService(o *config.Object) {
	vs, ok := o.Spec.(*networking.VirtualService)
	if !ok {
		return
	}
	before := len(b.c.errs)
	b.checkFields(o, vs)
	checkExportTo(&b.c, o, vs.GetExportTo())
	for i, g := range vs.GetGateways() {
		if g != "mesh" {
			b.c.add(o.PosOf(fmt.Sprintf("gateways[%d]", i)), "gateway %q is not supported: Sluice configures sidecars and proxyless clients (the \"mesh\" gateway) only", g)
		}
	}
	if len(vs.GetHosts()) == 0 {
		b.c.add(o.Pos, "VirtualService %s/%s has no hosts", o.Namespace, o.Name)
	}
	if len(vs.GetHttp()) == 0 {
		b.c.add(o.Pos, "VirtualService %s/%s has no http routes", o.Namespace, o.Name)
	}
	var services []*Service
	for i, h := range vs.GetHosts() {
		path := fmt.Sprintf("hosts[%d]", i)
		if strings.Contains(h, "*") {
			b.c.add(o.PosOf(path), "wildcard host %q is not supported", h)
			continue
		}
		s, q := b.service(h, o.Namespace)
		if s == nil {
			b.unknownHost(o.PosOf(path), h, q)
			continue
		}
		if s.Virtual != nil {
			b.c.add(o.PosOf(path), "host %s is already routed by VirtualService %s/%s at %s (one VirtualService per host)", s.Host, s.Virtual.Namespace, s.Virtual.Name, s.Virtual.Pos)
			continue
		}
		services = append(services, s)
	}
	var routes []*Route
	keys := map[string]int{}
	catchAll := -1
	for i, hr := range vs.GetHttp() {
		r := b.route(o, i, hr, services)
		if r == nil {
			continue
		}
		path := fmt.Sprintf("http[%d]", i)
		if catchAll >= 0 {
			b.c.add(o.PosOf(path), "http[%d] can never match: http[%d] at %s matches every request", i, catchAll, o.PosOf(fmt.Sprintf("http[%d]", catchAll)))
		}
		if len(r.Matches) == 0 {
			catchAll = i
		}
		for j, m := range r.Matches {
			k := m.key()
			if prev, dup := keys[k]; dup {
				b.c.add(o.PosOf(fmt.Sprintf("%s.match[%d]", path, j)), "duplicate route: http[%d] has the same match at %s", prev, o.PosOf(fmt.Sprintf("http[%d]", prev)))
				continue
			}
			keys[k] = i
		}
		routes = append(routes, r)
	}
	if len(b.c.errs) > before {
		return
	}
	for _, s := range services {
		s.Virtual = o
		s.Routes = routes
	}
}

func (b *builder) route(o *config.Object, i int, hr *networking.HTTPRoute, services []*Service) *Route {
	path := fmt.Sprintf("http[%d]", i)
	before := len(b.c.errs)
	r := &Route{Name: hr.GetName(), Source: o, Index: i}
	for j, m := range hr.GetMatch() {
		mp := fmt.Sprintf("%s.match[%d]", path, j)
		match := Match{Name: m.GetName(), IgnoreCase: m.GetIgnoreUriCase()}
		match.URI = b.stringMatch(o, mp+".uri", m.GetUri())
		if match.URI != nil && match.URI.Kind != MatchRegex && !strings.HasPrefix(match.URI.Value, "/") {
			b.c.add(o.PosOf(mp+".uri"), "uri %q must start with /", match.URI.Value)
		}
		match.Method = b.stringMatch(o, mp+".method", m.GetMethod())
		names := make([]string, 0, len(m.GetHeaders()))
		for n := range m.GetHeaders() {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			hp := mp + ".headers." + n
			if n == "" || strings.ContainsAny(n, " :\t") {
				b.c.add(o.PosOf(hp), "header name %q is not valid", n)
				continue
			}
			if m.GetHeaders()[n].GetMatchType() == nil {
				b.c.add(o.PosOf(hp), "header %q needs exact, prefix or regex", n)
				continue
			}
			sm := b.stringMatch(o, hp, m.GetHeaders()[n])
			if sm == nil {
				continue
			}
			match.Headers = append(match.Headers, HeaderMatch{Name: strings.ToLower(n), Match: *sm})
		}
		r.Matches = append(r.Matches, match)
	}
	badMatch := len(b.c.errs) > before
	// One match without conditions matches everything, like no match at all.
	if len(r.Matches) == 1 && r.Matches[0].URI == nil && r.Matches[0].Method == nil && len(r.Matches[0].Headers) == 0 {
		r.Matches = nil
	}
	if len(hr.GetRoute()) == 0 {
		b.c.add(o.PosOf(path), "http[%d] has no route destinations", i)
		return nil
	}
	var total uint64
	for j, rd := range hr.GetRoute() {
		dp := fmt.Sprintf("%s.route[%d]", path, j)
		if rd.GetWeight() < 0 {
			b.c.add(o.PosOf(dp+".weight"), "weight %d is negative", rd.GetWeight())
			return nil
		}
		d, ok := b.destination(o, dp+".destination", rd.GetDestination(), services)
		if !ok {
			continue
		}
		d.Weight = uint32(rd.GetWeight())
		if len(hr.GetRoute()) == 1 && d.Weight == 0 {
			d.Weight = 100
		}
		total += uint64(d.Weight)
		r.Destinations = append(r.Destinations, d)
	}
	if len(r.Destinations) == len(hr.GetRoute()) && total != 100 {
		b.c.add(o.PosOf(path+".route"), "weights of http[%d] add up to %d, not 100", i, total)
	}
	if t := hr.GetTimeout(); t != nil {
		r.Timeout = b.duration(o, path+".timeout", t)
	}
	if rt := hr.GetRetries(); rt != nil {
		r.Retries = b.retries(o, path+".retries", rt)
	}
	if f := hr.GetFault(); f != nil {
		r.Fault = b.fault(o, path+".fault", f)
	}
	if m := hr.GetMirror(); m != nil {
		d, ok := b.destination(o, path+".mirror", m, services)
		if ok {
			r.Mirror = &d
			r.MirrorPercent = 100
			if mp := hr.GetMirrorPercentage(); mp != nil {
				r.MirrorPercent = b.percent(o, path+".mirrorPercentage.value", mp.GetValue())
			}
		}
	} else if hr.GetMirrorPercentage() != nil {
		b.c.add(o.PosOf(path+".mirrorPercentage"), "mirrorPercentage without mirror")
	}
	if badMatch {
		return nil // a broken match would be mistaken for a catch-all
	}
	return r
}

func (b *builder) stringMatch(o *config.Object, path string, m *networking.StringMatch) *StringMatch {
	if m == nil {
		return nil
	}
	switch v := m.GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		return &StringMatch{Kind: MatchExact, Value: v.Exact}
	case *networking.StringMatch_Prefix:
		return &StringMatch{Kind: MatchPrefix, Value: v.Prefix}
	case *networking.StringMatch_Regex:
		if v.Regex == "" {
			b.c.add(o.PosOf(path+".regex"), "empty regex")
			return nil
		}
		if _, err := regexp.Compile(v.Regex); err != nil {
			b.c.add(o.PosOf(path+".regex"), "invalid regex %q: %v", v.Regex, regexCause(err))
			return nil
		}
		if len(v.Regex) > 1024 {
			b.c.add(o.PosOf(path+".regex"), "regex is longer than 1024 characters")
			return nil
		}
		return &StringMatch{Kind: MatchRegex, Value: v.Regex}
	}
	return nil
}

func regexCause(err error) string {
	return strings.TrimPrefix(err.Error(), "error parsing regexp: ")
}

func (b *builder) destination(o *config.Object, path string, d *networking.Destination, from []*Service) (Destination, bool) {
	if d == nil || d.GetHost() == "" {
		b.c.add(o.PosOf(path), "destination has no host")
		return Destination{}, false
	}
	s, q := b.service(d.GetHost(), o.Namespace)
	if s == nil {
		b.unknownHost(o.PosOf(path+".host"), d.GetHost(), q)
		return Destination{}, false
	}
	out := Destination{Host: s.Host, Subset: d.GetSubset(), Port: d.GetPort().GetNumber()}
	if out.Subset != "" {
		if _, ok := s.Subset(out.Subset); !ok {
			where := "it has no DestinationRule"
			if s.Rule != nil {
				names := make([]string, len(s.Subsets))
				for i, ss := range s.Subsets {
					names[i] = ss.Name
				}
				where = fmt.Sprintf("DestinationRule %s/%s at %s defines %s", s.Rule.Namespace, s.Rule.Name, s.Rule.Pos, quoteOrNone(names))
			}
			b.c.add(o.PosOf(path+".subset"), "unknown subset %q of host %s (%s)", out.Subset, s.Host, where)
			return Destination{}, false
		}
	}
	if out.Port != 0 {
		if _, ok := s.Port(out.Port); !ok {
			b.c.add(o.PosOf(path+".port.number"), "host %s has no port %d", s.Host, out.Port)
			return Destination{}, false
		}
		return out, true
	}
	// Without a port the route applies on every port of the routed hosts: each must
	// name a port of the destination.
	for _, from := range from {
		for _, p := range from.Ports {
			if _, ok := out.ResolvePort(b.m, p.Number); !ok {
				b.c.add(o.PosOf(path), "destination %s has several ports and none is %d (the port of %s): give destination.port.number", s.Host, p.Number, from.Host)
				return Destination{}, false
			}
		}
	}
	return out, true
}

func quoteOrNone(names []string) string {
	if len(names) == 0 {
		return "no subsets"
	}
	return "subsets " + quote(names)
}

func (b *builder) percent(o *config.Object, path string, v float64) float64 {
	if math.IsNaN(v) || v < 0 || v > 100 {
		b.c.add(o.PosOf(path), "percentage %v is not between 0 and 100", v)
		return 0
	}
	return v
}

func (b *builder) retries(o *config.Object, path string, rt *networking.HTTPRetry) *Retries {
	if rt.GetAttempts() < 0 {
		b.c.add(o.PosOf(path+".attempts"), "attempts must not be negative")
		return nil
	}
	if rt.GetAttempts() > 100 {
		b.c.add(o.PosOf(path+".attempts"), "attempts %d is more than 100", rt.GetAttempts())
		return nil
	}
	out := &Retries{Attempts: uint32(rt.GetAttempts())}
	out.PerTry = b.duration(o, path+".perTryTimeout", rt.GetPerTryTimeout())
	on := rt.GetRetryOn()
	if on == "" {
		// Istio's default conditions.
		on = "connect-failure,refused-stream,unavailable,cancelled,503"
	}
	for _, cond := range strings.Split(on, ",") {
		cond = strings.TrimSpace(cond)
		if cond == "" {
			continue
		}
		if code, err := strconv.Atoi(cond); err == nil {
			if code < 100 || code > 599 {
				b.c.add(o.PosOf(path+".retryOn"), "retryOn status %d is not an HTTP status", code)
				continue
			}
			out.StatusCode = append(out.StatusCode, uint32(code))
			continue
		}
		if !envoyRetryOn(cond) {
			b.c.add(o.PosOf(path+".retryOn"), "unknown retryOn condition %q", cond)
			continue
		}
		out.RetryOn = append(out.RetryOn, cond)
	}
	if len(out.StatusCode) > 0 {
		out.RetryOn = append(out.RetryOn, "retriable-status-codes")
	}
	return out
}

func (b *builder) fault(o *config.Object, path string, f *networking.HTTPFaultInjection) *Fault {
	out := &Fault{}
	if d := f.GetDelay(); d != nil {
		dp := path + ".delay"
		out.HasDelay = true
		if d.GetFixedDelay() == nil {
			b.c.add(o.PosOf(dp), "delay needs fixedDelay")
		}
		out.Delay = b.duration(o, dp+".fixedDelay", d.GetFixedDelay())
		// Without a percentage no request is delayed, as in Istio.
		out.DelayPercent = b.percent(o, dp+".percentage.value", d.GetPercentage().GetValue())
	}
	if a := f.GetAbort(); a != nil {
		ap := path + ".abort"
		out.HasAbort = true
		switch a.GetErrorType().(type) {
		case *networking.HTTPFaultInjection_Abort_HttpStatus:
			if a.GetHttpStatus() < 200 || a.GetHttpStatus() > 599 {
				b.c.add(o.PosOf(ap+".httpStatus"), "httpStatus %d is not between 200 and 599", a.GetHttpStatus())
			}
			out.AbortHTTP = uint32(a.GetHttpStatus())
		case *networking.HTTPFaultInjection_Abort_GrpcStatus:
			c, ok := grpcCode(a.GetGrpcStatus())
			if !ok || c == codes.OK {
				b.c.add(o.PosOf(ap+".grpcStatus"), "grpcStatus %q is not a gRPC error status name (like UNAVAILABLE)", a.GetGrpcStatus())
			}
			out.AbortGRPC = &c
		default:
			b.c.add(o.PosOf(ap), "abort needs httpStatus or grpcStatus")
		}
		out.AbortPercent = b.percent(o, ap+".percentage.value", a.GetPercentage().GetValue())
	}
	return out
}
