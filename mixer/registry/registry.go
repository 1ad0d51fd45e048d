// Package registry maps IP addresses to workloads (name, namespace, labels, service
// account), fed by WorkloadEntry objects and, in a cluster, Kubernetes EndpointSlices.
package registry

import (
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"

	networking "istio.io/api/networking/v1"
)

// Istio's label keys for workload identity.
const (
	LabelWorkloadName      = "service.istio.io/workload-name"
	LabelCanonicalName     = "service.istio.io/canonical-name"
	LabelCanonicalRevision = "service.istio.io/canonical-revision"
	LabelCluster           = "topology.istio.io/cluster"
	LabelApp               = "app"
	LabelVersion           = "version"
	labelK8sName           = "app.kubernetes.io/name"
	labelK8sVersion        = "app.kubernetes.io/version"
)

// Unknown is the value of identity fields that are not known, as in Istio.
const Unknown = "unknown"

// Workload is one addressable workload instance. It is immutable once registered.
type Workload struct {
	// Name is the workload name (not the pod name).
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Instance is the instance name (pod or WorkloadEntry name).
	Instance string            `json:"instance,omitempty"`
	Address  netip.Addr        `json:"address"`
	Labels   map[string]string `json:"labels,omitempty"`
	// Ports are named ports (port name to number).
	Ports             map[string]uint32 `json:"ports,omitempty"`
	ServiceAccount    string            `json:"serviceAccount,omitempty"`
	Network           string            `json:"network,omitempty"`
	Locality          string            `json:"locality,omitempty"`
	Weight            uint32            `json:"weight,omitempty"`
	ClusterID         string            `json:"cluster,omitempty"`
	App               string            `json:"app"`
	Version           string            `json:"version"`
	CanonicalService  string            `json:"canonicalService"`
	CanonicalRevision string            `json:"canonicalRevision"`
	// Principal is the SPIFFE identity derived from the service account, or Unknown.
	Principal string `json:"principal"`
	// UID is kubernetes://INSTANCE.NAMESPACE, or Unknown.
	UID string `json:"uid"`
	// Source says where the workload came from (a config file and line, or a cluster).
	Source string `json:"source,omitempty"`
}

// Derive fills App, Version, the canonical service and revision, the cluster and the
// principal from the labels with Istio's defaults.
func (w *Workload) Derive(trustDomain string) {
	l := w.Labels
	w.App = first(l[LabelApp], Unknown)
	w.Version = first(l[LabelVersion], Unknown)
	w.CanonicalService = first(l[LabelCanonicalName], l[labelK8sName], l[LabelApp], w.Name, Unknown)
	w.CanonicalRevision = first(l[LabelCanonicalRevision], l[labelK8sVersion], l[LabelVersion], "latest")
	w.ClusterID = first(w.ClusterID, l[LabelCluster], Unknown)
	w.UID = Unknown
	if w.Instance != "" && w.Instance != Unknown {
		w.UID = "kubernetes://" + w.Instance + "." + w.Namespace
	}
	w.Principal = Unknown
	if w.ServiceAccount != "" {
		w.Principal = SPIFFE(trustDomain, w.Namespace, w.ServiceAccount)
	}
}

// SPIFFE returns the SPIFFE identity of a service account.
func SPIFFE(trustDomain, ns, sa string) string {
	if trustDomain == "" {
		trustDomain = "cluster.local"
	}
	return "spiffe://" + trustDomain + "/ns/" + ns + "/sa/" + sa
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// FromWorkloadEntry builds a workload from an Istio WorkloadEntry object. The workload
// name is the label service.istio.io/workload-name where set (on the entry's labels,
// else on the object's), else the object's name. It returns false when the address is
// not an IP (a hostname or Unix socket entry cannot be looked up by peer address).
func FromWorkloadEntry(name, namespace string, objectLabels map[string]string, we *networking.WorkloadEntry, source string) (*Workload, bool) {
	addr, err := netip.ParseAddr(we.GetAddress())
	if err != nil {
		return nil, false
	}
	w := &Workload{
		Name:           first(we.GetLabels()[LabelWorkloadName], objectLabels[LabelWorkloadName], name),
		Namespace:      namespace,
		Instance:       name,
		Address:        addr.Unmap(),
		Labels:         we.GetLabels(),
		Ports:          we.GetPorts(),
		ServiceAccount: we.GetServiceAccount(),
		Network:        we.GetNetwork(),
		Locality:       we.GetLocality(),
		Weight:         we.GetWeight(),
		Source:         source,
	}
	return w, true
}

// Snapshot is an immutable view of the registry.
type Snapshot struct {
	version uint64
	byIP    map[netip.Addr]*Workload
	all     []*Workload
	changed chan struct{}
}

// Lookup returns the workload at ip.
func (s *Snapshot) Lookup(ip netip.Addr) (*Workload, bool) {
	w, ok := s.byIP[ip.Unmap()]
	return w, ok
}

// Workloads returns every workload, sorted by namespace, name and address.
func (s *Snapshot) Workloads() []*Workload { return s.all }

// Version increases with every change.
func (s *Snapshot) Version() uint64 { return s.version }

// Changed is closed when a newer snapshot replaces this one.
func (s *Snapshot) Changed() <-chan struct{} { return s.changed }

// Registry merges named sources of workloads into snapshots. Readers take a Snapshot
// (one atomic load) and keep it for a batch; writers replace a whole source.
type Registry struct {
	trustDomain string

	mu      sync.Mutex // serialises writers
	sources map[string][]*Workload
	current atomic.Pointer[Snapshot]
}

// New returns an empty registry; principals use trustDomain (default cluster.local).
func New(trustDomain string) *Registry {
	if trustDomain == "" {
		trustDomain = "cluster.local"
	}
	r := &Registry{trustDomain: trustDomain, sources: map[string][]*Workload{}}
	r.current.Store(&Snapshot{byIP: map[netip.Addr]*Workload{}, changed: make(chan struct{})})
	return r
}

// TrustDomain returns the SPIFFE trust domain.
func (r *Registry) TrustDomain() string { return r.trustDomain }

// Snapshot returns the current view.
func (r *Registry) Snapshot() *Snapshot { return r.current.Load() }

// SetSource replaces the workloads of one source ("config", "kubernetes/…"). When two
// sources claim an address, the source whose name sorts first wins.
func (r *Registry) SetSource(name string, ws []*Workload) {
	for _, w := range ws {
		w.Derive(r.trustDomain)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(ws) == 0 {
		delete(r.sources, name)
	} else {
		r.sources[name] = ws
	}
	names := make([]string, 0, len(r.sources))
	for n := range r.sources {
		names = append(names, n)
	}
	sort.Strings(names)
	prev := r.current.Load()
	next := &Snapshot{version: prev.version + 1, byIP: map[netip.Addr]*Workload{}, changed: make(chan struct{})}
	for _, n := range names {
		for _, w := range r.sources[n] {
			if _, taken := next.byIP[w.Address]; !taken {
				next.byIP[w.Address] = w
			}
			next.all = append(next.all, w)
		}
	}
	sort.Slice(next.all, func(i, j int) bool {
		a, b := next.all[i], next.all[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.Address.Less(b.Address)
	})
	r.current.Store(next)
	close(prev.changed)
}
