// Package mesh turns the Istio networking objects of a config snapshot into a checked
// routing model (services, subsets, policies, HTTP routes), rejecting what Sluice cannot honour.
package mesh

import (
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/sluicemesh/sluice/mixer/config"
)

// DefaultDomainSuffix is the cluster domain that short host names are qualified with.
const DefaultDomainSuffix = "cluster.local"

// Mesh is the routing model of one config snapshot. It is immutable once built.
type Mesh struct {
	// Services are sorted by host; a ServiceEntry with several hosts gives one
	// Service per host.
	Services []*Service
	byHost   map[string]*Service
}

// Service returns the service of an exact (qualified) host name.
func (m *Mesh) Service(host string) (*Service, bool) {
	s, ok := m.byHost[host]
	return s, ok
}

// Protocol is the application protocol of a service port.
type Protocol string

// Protocols Sluice routes.
const (
	ProtocolHTTP  Protocol = "HTTP"
	ProtocolHTTP2 Protocol = "HTTP2"
	ProtocolGRPC  Protocol = "GRPC"
)

// IsHTTP2 reports whether upstream connections must speak HTTP/2.
func (p Protocol) IsHTTP2() bool { return p == ProtocolHTTP2 || p == ProtocolGRPC }

// Port is one port of a service.
type Port struct {
	Number   uint32
	Name     string
	Protocol Protocol
	// TargetPort is the port workloads listen on (the port number when unset).
	TargetPort uint32
}

// Service is one host of a ServiceEntry with its policies and routes.
type Service struct {
	// Host is the qualified host name (reviews.default.svc.cluster.local).
	Host string
	// Aliases are other names clients use for the host (reviews.default,
	// reviews.default.svc), for Kubernetes-style hosts only.
	Aliases   []string
	Namespace string
	// Addresses are the virtual IPs of the ServiceEntry.
	Addresses []string
	Ports     []Port
	// Selector selects registry workloads of Namespace by labels; nil selects none.
	Selector map[string]string
	// Endpoints are the ServiceEntry's inline endpoints.
	Endpoints []StaticEndpoint
	// Policy is the DestinationRule's traffic policy (the zero Policy without one).
	Policy Policy
	// Subsets are the DestinationRule's subsets, sorted by name.
	Subsets []*Subset
	// Routes are the VirtualService's HTTP routes in order; empty means one default
	// route to the service itself.
	Routes []*Route
	// Entry is the ServiceEntry; Rule and Virtual the DestinationRule and
	// VirtualService that apply, or nil.
	Entry, Rule, Virtual *config.Object
}

// Port returns the service port with a number.
func (s *Service) Port(n uint32) (Port, bool) {
	for _, p := range s.Ports {
		if p.Number == n {
			return p, true
		}
	}
	return Port{}, false
}

// Subset returns the subset of a name.
func (s *Service) Subset(name string) (*Subset, bool) {
	for _, ss := range s.Subsets {
		if ss.Name == name {
			return ss, true
		}
	}
	return nil, false
}

// PolicyFor returns the traffic policy of a subset ("" for the whole service).
func (s *Service) PolicyFor(subset string) Policy {
	if ss, ok := s.Subset(subset); ok {
		return ss.Policy
	}
	return s.Policy
}

// StaticEndpoint is an endpoint written inline in a ServiceEntry.
type StaticEndpoint struct {
	Address  string
	Labels   map[string]string
	Ports    map[string]uint32
	Weight   uint32
	Locality string
}

// Subset is a named group of a service's endpoints.
type Subset struct {
	Name   string
	Labels map[string]string
	// Policy is the service policy with the subset's own settings applied over it.
	Policy Policy
}

// LBPolicy is a load-balancing algorithm.
type LBPolicy string

// Load balancers Sluice configures.
const (
	LBRoundRobin   LBPolicy = "ROUND_ROBIN"
	LBLeastRequest LBPolicy = "LEAST_REQUEST"
	LBRingHash     LBPolicy = "RING_HASH"
)

// Policy is a DestinationRule traffic policy. Zero fields mean the proxy's default.
type Policy struct {
	LB LBPolicy
	// HashHeader is the request header hashed by RING_HASH.
	HashHeader  string
	MinRingSize uint64

	MaxConnections           uint32
	MaxPendingRequests       uint32
	MaxRequests              uint32
	MaxRequestsPerConnection uint32
	MaxRetries               uint32
	ConnectTimeout           time.Duration

	Outlier *Outlier
}

// Outlier is passive health checking: eject endpoints that keep failing.
type Outlier struct {
	Consecutive5xx        uint32
	ConsecutiveGateway    uint32
	Has5xx, HasGateway    bool
	Interval              time.Duration
	BaseEjectionTime      time.Duration
	MaxEjectionPercent    uint32
	HasMaxEjectionPercent bool
	MinHealthPercent      uint32
}

// Route is one HTTP route of a VirtualService.
type Route struct {
	// Name is the route's name, or "" when the VirtualService gave none.
	Name string
	// Matches are alternatives (any matches); empty matches every request.
	Matches      []Match
	Destinations []Destination
	// Timeout is the whole-request timeout; 0 disables it.
	Timeout time.Duration
	Retries *Retries
	Fault   *Fault
	Mirror  *Destination
	// MirrorPercent is the share of requests mirrored, 0 to 100.
	MirrorPercent float64
	// Source is the VirtualService and the index of the route in it.
	Source *config.Object
	Index  int
}

// Match is one alternative of a route's match.
type Match struct {
	Name       string
	URI        *StringMatch
	Method     *StringMatch
	Headers    []HeaderMatch
	IgnoreCase bool
}

// MatchKind says how a StringMatch compares.
type MatchKind int

// Match kinds.
const (
	MatchExact MatchKind = iota + 1
	MatchPrefix
	MatchRegex
)

// StringMatch is an exact, prefix or (RE2, whole-string) regex match.
type StringMatch struct {
	Kind  MatchKind
	Value string
}

func (m *StringMatch) String() string {
	if m == nil {
		return "*"
	}
	return [...]string{"", "exact", "prefix", "regex"}[m.Kind] + ":" + m.Value
}

// HeaderMatch matches one request header (names are lower case).
type HeaderMatch struct {
	Name  string
	Match StringMatch
}

// key renders a match canonically, to find duplicate routes.
func (m Match) key() string {
	var b strings.Builder
	b.WriteString("uri=" + m.URI.String() + "|method=" + m.Method.String())
	hs := make([]string, len(m.Headers))
	for i, h := range m.Headers {
		hs[i] = h.Name + "=" + h.Match.String()
	}
	sort.Strings(hs)
	b.WriteString("|headers=" + strings.Join(hs, ","))
	if m.IgnoreCase {
		b.WriteString("|icase")
	}
	return b.String()
}

// Destination is a weighted target of a route.
type Destination struct {
	Host   string
	Subset string
	// Port is the destination port; 0 means the port the request came in on (or the
	// service's only port).
	Port   uint32
	Weight uint32
}

// ResolvePort returns the destination port for a request arriving on port in.
func (d Destination) ResolvePort(m *Mesh, in uint32) (uint32, bool) {
	s, ok := m.Service(d.Host)
	if !ok {
		return 0, false
	}
	if d.Port != 0 {
		_, ok := s.Port(d.Port)
		return d.Port, ok
	}
	if _, ok := s.Port(in); ok {
		return in, true
	}
	if len(s.Ports) == 1 {
		return s.Ports[0].Number, true
	}
	return 0, false
}

// Retries is a route's retry policy.
type Retries struct {
	Attempts   uint32
	PerTry     time.Duration
	RetryOn    []string
	StatusCode []uint32
}

// Fault injects delays and aborts into a share of requests.
type Fault struct {
	Delay        time.Duration
	DelayPercent float64
	// AbortHTTP or AbortGRPC is set when requests are aborted.
	AbortHTTP    uint32
	AbortGRPC    *codes.Code
	AbortPercent float64
	HasDelay     bool
	HasAbort     bool
}

// grpcCode returns the gRPC status code of a name as Istio writes it (UNAVAILABLE,
// DEADLINE_EXCEEDED) or of its number.
func grpcCode(name string) (codes.Code, bool) {
	if n, err := strconv.Atoi(name); err == nil {
		if n < 0 || n > int(codes.Unauthenticated) {
			return 0, false
		}
		return codes.Code(n), true
	}
	// codes.Code's text form is the protobuf enum name, which Istio uses.
	var c codes.Code
	if err := c.UnmarshalJSON([]byte(strconv.Quote(strings.ToUpper(name)))); err != nil {
		return 0, false
	}
	return c, true
}

// envoyRetryOn reports whether Envoy knows a retry condition.
func envoyRetryOn(cond string) bool {
	switch cond {
	case "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
		"retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
		"http3-post-connect-failure":
		return true
	}
	return GRPCRetryOn(cond)
}

// GRPCRetryOn reports whether a retry condition is a gRPC status grpc-go retries on.
func GRPCRetryOn(cond string) bool {
	switch cond {
	case "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable":
		return true
	}
	return false
}
