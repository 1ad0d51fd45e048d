// Package kube feeds the workload registry from a Kubernetes cluster: Pods give each
// IP its workload identity, EndpointSlices its readiness, zone and non-Pod endpoints.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	listersdiscoveryv1 "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sluicemesh/sluice/mixer/registry"
)

// SourceName is the registry source of the cluster's workloads. It sorts after
// "config", so a WorkloadEntry wins an address both claim.
const SourceName = "kubernetes"

// ErrNoCluster means neither a kubeconfig nor an in-cluster config is available.
var ErrNoCluster = errors.New("no kubeconfig given and not running in a cluster")

// Config returns the client config of a kubeconfig file, or the in-cluster config
// when kubeconfig is empty; ErrNoCluster when there is neither.
func Config(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("read kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return nil, ErrNoCluster
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config: %w", err)
	}
	return cfg, nil
}

// Options configure a Source.
type Options struct {
	Logger *slog.Logger
	// Debounce groups the events of one change (a rollout touches many objects).
	Debounce time.Duration
	// Resync is the informers' resync period (0: none).
	Resync time.Duration
	// Namespace limits the watch to one namespace ("": all).
	Namespace string
}

// Source keeps the registry's "kubernetes" source equal to the cluster's workloads.
type Source struct {
	client kubernetes.Interface
	reg    *registry.Registry
	opts   Options
}

// New returns a source that writes into reg.
func New(client kubernetes.Interface, reg *registry.Registry, opts Options) *Source {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	return &Source{client: client, reg: reg, opts: opts}
}

// NewForConfig returns a source talking to the cluster of cfg.
func NewForConfig(cfg *rest.Config, reg *registry.Registry, opts Options) (*Source, error) {
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return New(client, reg, opts), nil
}

// Run watches Pods and EndpointSlices until ctx ends, updating the registry after
// each burst of changes. The source is removed from the registry when Run returns.
func (s *Source) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(s.client, s.opts.Resync, informers.WithNamespace(s.opts.Namespace))
	pods := factory.Core().V1().Pods()
	slices := factory.Discovery().V1().EndpointSlices()
	changed := make(chan struct{}, 1)
	notify := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { signal(changed) },
		UpdateFunc: func(any, any) { signal(changed) },
		DeleteFunc: func(any) { signal(changed) },
	}
	if _, err := pods.Informer().AddEventHandler(notify); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	if _, err := slices.Informer().AddEventHandler(notify); err != nil {
		return fmt.Errorf("watch endpoint slices: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	defer s.reg.SetSource(SourceName, nil)
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("sync the %v cache with the cluster", typ)
		}
	}
	s.opts.Logger.Info("watching Kubernetes pods and endpoint slices", "namespace", first(s.opts.Namespace, "all"))
	for {
		ws, err := Workloads(pods.Lister(), slices.Lister())
		if err != nil {
			s.opts.Logger.Warn("cannot list Kubernetes workloads", "err", err)
		} else {
			s.reg.SetSource(SourceName, ws)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.opts.Debounce):
		}
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// endpointInfo is what EndpointSlices say about an address.
type endpointInfo struct {
	ready   bool
	zone    string
	service string
	ns      string
	ports   map[string]uint32
	// pod says the slice names a Pod for the address: without that Pod (deleted,
	// not yet synced) the address is stale, not a separate endpoint.
	pod bool
}

// Workloads computes the registry's view of the cluster: one workload per address of
// a running, ready Pod, and one per ready EndpointSlice address that is not a Pod's.
func Workloads(pods listerscorev1.PodLister, slices listersdiscoveryv1.EndpointSliceLister) ([]*registry.Workload, error) {
	sl, err := slices.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list endpoint slices: %w", err)
	}
	byAddr := map[netip.Addr]*endpointInfo{}
	for _, es := range sl {
		if es.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		ports := map[string]uint32{}
		for _, p := range es.Ports {
			if p.Name != nil && p.Port != nil && *p.Port > 0 {
				ports[*p.Name] = uint32(*p.Port)
			}
		}
		for _, ep := range es.Endpoints {
			for _, a := range ep.Addresses {
				addr, err := netip.ParseAddr(a)
				if err != nil {
					continue
				}
				info, ok := byAddr[addr]
				if !ok {
					info = &endpointInfo{ready: true, service: es.Labels[discoveryv1.LabelServiceName], ns: es.Namespace, ports: ports}
					byAddr[addr] = info
				}
				// An address not ready in any slice is not ready.
				if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
					info.ready = false
				}
				if ep.Zone != nil {
					info.zone = *ep.Zone
				}
				if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
					info.pod = true
				}
			}
		}
	}
	pl, err := pods.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var out []*registry.Workload
	seen := map[netip.Addr]bool{}
	for _, p := range pl {
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil || !podReady(p) || p.Spec.HostNetwork {
			continue // host-network pods share the node's address
		}
		for _, ip := range podIPs(p) {
			if seen[ip] {
				continue
			}
			seen[ip] = true
			w := &registry.Workload{
				Name: WorkloadName(p), Namespace: p.Namespace, Instance: p.Name, Address: ip,
				Labels: p.Labels, Ports: containerPorts(p), ServiceAccount: p.Spec.ServiceAccountName,
				Source: "kubernetes pod " + p.Namespace + "/" + p.Name,
			}
			if info := byAddr[ip]; info != nil {
				if !info.ready {
					continue
				}
				if info.zone != "" {
					w.Locality = "/" + info.zone // the region is the node's, which is not watched
				}
			}
			out = append(out, w)
		}
	}
	// Endpoints that are not Pods (a Service with hand-made slices, a VM).
	for addr, info := range byAddr {
		if seen[addr] || info.pod || !info.ready || info.service == "" {
			continue
		}
		w := &registry.Workload{
			Name: info.service, Namespace: info.ns, Address: addr, Ports: info.ports,
			Labels: map[string]string{}, Source: "kubernetes endpoint slice of " + info.ns + "/" + info.service,
		}
		if info.zone != "" {
			w.Locality = "/" + info.zone
		}
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Less(out[j].Address) })
	return out, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

func containerPorts(p *corev1.Pod) map[string]uint32 {
	out := map[string]uint32{}
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name != "" && port.ContainerPort > 0 {
				out[port.Name] = uint32(port.ContainerPort)
			}
		}
	}
	return out
}

// WorkloadName is the name Istio gives a Pod's workload: the label
// service.istio.io/workload-name, else its Deployment (the ReplicaSet's name without
// the template hash), else its owner, else the Pod's own name.
func WorkloadName(p *corev1.Pod) string {
	if n := p.Labels[registry.LabelWorkloadName]; n != "" {
		return n
	}
	for _, o := range p.OwnerReferences {
		if o.Controller == nil || !*o.Controller {
			continue
		}
		if o.Kind == "ReplicaSet" {
			if h := p.Labels["pod-template-hash"]; h != "" && strings.HasSuffix(o.Name, "-"+h) {
				return strings.TrimSuffix(o.Name, "-"+h)
			}
		}
		if o.Kind == "Job" {
			// A CronJob's Jobs are named CRONJOB-<scheduled time>.
			if i := strings.LastIndexByte(o.Name, '-'); i > 0 && isDigits(o.Name[i+1:]) {
				return o.Name[:i]
			}
		}
		return o.Name
	}
	return p.Name
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
