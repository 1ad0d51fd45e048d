package kube_test

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/sluicemesh/sluice/mixer/registry"
	"github.com/sluicemesh/sluice/mixer/registry/kube"
)

func ptr[T any](v T) *T { return &v }

func pod(ns, name, ip string, lbls map[string]string, mods ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec: corev1.PodSpec{ServiceAccountName: "sa-" + name, Containers: []corev1.Container{{
			Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		}}},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	for _, m := range mods {
		m(p)
	}
	return p
}

func ownedBy(kind, name string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr(true)}}
	}
}

func TestWorkloadName(t *testing.T) {
	for _, tc := range []struct {
		pod  *corev1.Pod
		want string
	}{
		{pod("ns", "reviews-v1-5f9d8-abcde", "", map[string]string{"pod-template-hash": "5f9d8"}, ownedBy("ReplicaSet", "reviews-v1-5f9d8")), "reviews-v1"},
		{pod("ns", "db-0", "", nil, ownedBy("StatefulSet", "db")), "db"},
		{pod("ns", "backup-28391040-xyz", "", nil, ownedBy("Job", "backup-28391040")), "backup"},
		{pod("ns", "lonely", "", nil), "lonely"},
		{pod("ns", "x", "", map[string]string{registry.LabelWorkloadName: "named"}, ownedBy("ReplicaSet", "x-1")), "named"},
	} {
		if got := kube.WorkloadName(tc.pod); got != tc.want {
			t.Errorf("WorkloadName(%s) = %q, want %q", tc.pod.Name, got, tc.want)
		}
	}
}

// TestSource runs the real informers against a fake API server and follows the
// registry through changes.
func TestSource(t *testing.T) {
	client := fake.NewClientset(
		pod("default", "reviews-v1-5f9d8-abcde", "10.1.0.1", map[string]string{"app": "reviews", "version": "v1", "pod-template-hash": "5f9d8"},
			ownedBy("ReplicaSet", "reviews-v1-5f9d8")),
		pod("default", "reviews-v2-77c4d-fghij", "10.1.0.2", map[string]string{"app": "reviews", "version": "v2"}),
		pod("default", "starting", "10.1.0.3", nil, func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }),
		pod("default", "host", "192.168.0.1", nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		&discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "reviews-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "reviews"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.1.0.1"}, Zone: ptr("us-east1-b"), Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
					TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "reviews-v1-5f9d8-abcde"}},
				{Addresses: []string{"10.1.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)},
					TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "reviews-v2-77c4d-fghij"}},
				{Addresses: []string{"10.2.0.9"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}},
			},
		},
	)
	// The fake API server drops events that happen before an informer's watch is
	// open (it has no resource versions to resume from): learn when both are open.
	watching := make(chan string, 4)
	client.PrependWatchReactor("*", func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := client.Tracker().Watch(action.GetResource(), action.GetNamespace())
		if err != nil {
			return false, nil, err
		}
		watching <- action.GetResource().Resource
		return true, w, nil
	})
	reg := registry.New("cluster.local")
	src := kube.New(client, reg, kube.Options{Debounce: 10 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()

	wait := func(what string, ok func(*registry.Snapshot) bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			snap := reg.Snapshot()
			if ok(snap) {
				return
			}
			select {
			case <-snap.Changed():
			case <-time.After(time.Until(deadline)):
				t.Fatalf("%s: registry has %v", what, names(snap))
			}
		}
	}
	wait("initial sync", func(s *registry.Snapshot) bool { return len(s.Workloads()) == 2 })
	for range 2 {
		select {
		case <-watching:
		case <-time.After(10 * time.Second):
			t.Fatal("the informers did not open their watches")
		}
	}
	w, ok := reg.Snapshot().Lookup(netip.MustParseAddr("10.1.0.1"))
	if !ok || w.Name != "reviews-v1" || w.Instance != "reviews-v1-5f9d8-abcde" || w.Locality != "/us-east1-b" ||
		w.Principal != "spiffe://cluster.local/ns/default/sa/sa-reviews-v1-5f9d8-abcde" || w.Ports["http"] != 8080 || w.Version != "v1" {
		t.Errorf("reviews-v1 = %+v", w)
	}
	// 10.1.0.2 is a Pod its slice says is not ready; 10.1.0.3 is not ready; the host
	// network Pod has no address of its own.
	if _, ok := reg.Snapshot().Lookup(netip.MustParseAddr("10.1.0.2")); ok {
		t.Error("a not-ready endpoint is registered")
	}
	ext, ok := reg.Snapshot().Lookup(netip.MustParseAddr("10.2.0.9"))
	if !ok || ext.Name != "reviews" || ext.Namespace != "default" {
		t.Errorf("slice endpoint without a pod = %+v", ext)
	}

	if err := client.CoreV1().Pods("default").Delete(ctx, "reviews-v1-5f9d8-abcde", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("pod deleted", func(s *registry.Snapshot) bool {
		_, ok := s.Lookup(netip.MustParseAddr("10.1.0.1"))
		return !ok && len(s.Workloads()) == 1
	})
	if _, err := client.CoreV1().Pods("default").Create(ctx, pod("default", "new", "10.1.0.7", map[string]string{"app": "x"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("pod added", func(s *registry.Snapshot) bool { _, ok := s.Lookup(netip.MustParseAddr("10.1.0.7")); return ok })

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := len(reg.Snapshot().Workloads()); n != 0 {
		t.Errorf("%d workloads left after the source stopped", n)
	}
}

func names(s *registry.Snapshot) []string {
	var out []string
	for _, w := range s.Workloads() {
		out = append(out, w.Namespace+"/"+w.Name+"@"+w.Address.String())
	}
	return out
}

func TestConfigOutsideCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := kube.Config(""); err != kube.ErrNoCluster {
		t.Errorf("Config(\"\") = %v, want ErrNoCluster", err)
	}
	if _, err := kube.Config("/does/not/exist"); err == nil {
		t.Error("a missing kubeconfig was accepted")
	}
}
