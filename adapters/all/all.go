// Package all lists the adapters built into Sluice.
package all

import (
	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/adapters/denier"
	"github.com/sluicemesh/sluice/adapters/list"
	"github.com/sluicemesh/sluice/adapters/memquota"
	"github.com/sluicemesh/sluice/adapters/prometheus"
	"github.com/sluicemesh/sluice/adapters/rbac"
	"github.com/sluicemesh/sluice/adapters/redisquota"
	"github.com/sluicemesh/sluice/adapters/stdio"
)

// Registry returns a registry of every built-in adapter.
func Registry() *adapters.Registry {
	r, err := adapters.NewRegistry(
		memquota.Factory(),
		prometheus.Factory(),
		redisquota.Factory(),
		stdio.Factory(),
		denier.Factory(),
		list.Factory(),
		rbac.Factory(),
	)
	if err != nil {
		panic(err) // the list above is fixed at build time
	}
	return r
}
