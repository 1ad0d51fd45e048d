package registry

import (
	networking "istio.io/api/networking/v1"

	"github.com/sluicemesh/sluice/mixer/config"
)

// ConfigSource is the registry source name of WorkloadEntry objects.
const ConfigSource = "config"

// FromSnapshot returns the workloads of a config's WorkloadEntry objects that have an
// IP address.
func FromSnapshot(s *config.Snapshot) []*Workload {
	var out []*Workload
	for _, o := range s.ByKind(config.KindWorkloadEntry) {
		we, ok := o.Spec.(*networking.WorkloadEntry)
		if !ok {
			continue
		}
		if w, ok := FromWorkloadEntry(o.Name, o.Namespace, o.Labels, we, o.Pos.String()); ok {
			out = append(out, w)
		}
	}
	return out
}
