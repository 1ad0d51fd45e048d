// Package quotakit is what the quota backends (memquota, redisquota) share: their quota
// params and overrides, rate-limit keys, the limit arithmetic, a local cache of denied keys and the failure policy.
package quotakit

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sluicemesh/sluice/adapters"
	"github.com/sluicemesh/sluice/templates/quota"
)

// Quota is one quota of a handler's params, in Mixer's shape:
//
//	quotas:
//	- name: requestcount            # the quota instance: NAME or NAMESPACE/NAME
//	  maxAmount: 100                # hits allowed per validDuration
//	  validDuration: 1s             # the window, a Go duration
//	  algorithm: sliding_window     # fixed_window (default), sliding_window, token_bucket
//	  overrides:
//	  - dimensions: {source: batch-job}
//	    maxAmount: 10
type Quota struct {
	// Name is the quota instance the quota applies to: NAME or NAMESPACE/NAME.
	Name string `yaml:"name"`
	// MaxAmount is the number of hits allowed per ValidDuration; at least 1.
	MaxAmount int64 `yaml:"maxAmount"`
	// ValidDuration is the window of the limit.
	ValidDuration time.Duration `yaml:"validDuration"`
	// Algorithm is fixed_window (the default), sliding_window or token_bucket.
	Algorithm string `yaml:"algorithm"`
	// Overrides give other limits to instances with particular dimension values.
	Overrides []Override `yaml:"overrides"`
}

// Override replaces a quota's limit for the instances whose dimensions hold all of
// Dimensions. When several overrides match, the one with the most dimensions wins,
// and among those the first listed.
type Override struct {
	Dimensions map[string]string `yaml:"dimensions"`
	// MaxAmount is the override's limit; absent means the quota's, and 0 denies
	// every request it matches.
	MaxAmount *int64 `yaml:"maxAmount"`
	// ValidDuration is the override's window; absent means the quota's.
	ValidDuration time.Duration `yaml:"validDuration"`
}

// MinWindow is the shortest window a backend enforces. Backends count time in
// microseconds and Redis expires keys in milliseconds.
const MinWindow = time.Millisecond

// ValidateQuotas checks the quotas of a handler's params; errors carry field paths
// such as "quotas[2].maxAmount". Every problem is reported at once (errors.Join),
// for sluice validate; a limit is checked whole only once its parts are valid.
func ValidateQuotas(qs []Quota) error {
	var errs []error
	names := map[string]int{}
	for i := range qs {
		errs = append(errs, validateQuota(&qs[i], fmt.Sprintf("quotas[%d]", i), i, names)...)
	}
	return errors.Join(errs...)
}

func validateQuota(q *Quota, path string, i int, names map[string]int) []error {
	var errs []error
	add := func(field, format string, a ...any) { errs = append(errs, adapters.Errorf(field, format, a...)) }
	if err := validName(q.Name); err != nil {
		add(path+".name", "%v", err)
	} else if j, dup := names[q.Name]; dup {
		add(path+".name", "quota %q is already defined by quotas[%d]", q.Name, j)
	} else {
		names[q.Name] = i
	}
	limitOK := true // amount, window and algorithm: what CheckLimit takes
	if q.MaxAmount < 1 {
		add(path+".maxAmount", "must be at least 1 (an override with maxAmount 0 denies chosen dimensions)")
		limitOK = false
	} else if q.MaxAmount > int64(MaxRequests) {
		add(path+".maxAmount", "must be at most %d", MaxRequests)
		limitOK = false
	}
	if err := validWindow(q.ValidDuration, true); err != nil {
		add(path+".validDuration", "%v", err)
		limitOK = false
	}
	alg, err := quota.ParseAlgorithm(q.Algorithm)
	if err != nil {
		add(path+".algorithm", "%v", err)
		limitOK = false
	}
	seen := map[string]int{}
	for j := range q.Overrides {
		o := &q.Overrides[j]
		opath := fmt.Sprintf("%s.overrides[%d]", path, j)
		if len(o.Dimensions) == 0 {
			add(opath+".dimensions", "an override needs at least one dimension to match")
		}
		if _, empty := o.Dimensions[""]; empty {
			add(opath+".dimensions", "a dimension name is empty")
		}
		sig := dimsSignature(o.Dimensions)
		if k, dup := seen[sig]; dup && len(o.Dimensions) > 0 {
			add(opath+".dimensions", "the same dimensions as overrides[%d]", k)
		} else {
			seen[sig] = j
		}
		overrideOK := limitOK
		if o.MaxAmount != nil && (*o.MaxAmount < 0 || *o.MaxAmount > int64(MaxRequests)) {
			add(opath+".maxAmount", "must be between 0 and %d", MaxRequests)
			overrideOK = false
		}
		if err := validWindow(o.ValidDuration, false); err != nil {
			add(opath+".validDuration", "%v", err)
			overrideOK = false
		}
		if overrideOK {
			if err := CheckLimit(overrideLimit(q, alg, o)); err != nil {
				add(opath, "%v", err)
			}
		}
	}
	if limitOK {
		if err := CheckLimit(quotaLimit(q, alg)); err != nil {
			add(path, "%v", err)
		}
	}
	return errs
}

func validName(name string) error {
	if name == "" {
		return fmt.Errorf("name is required")
	}
	ns, n, qualified := strings.Cut(name, "/")
	if qualified && (ns == "" || n == "" || strings.Contains(n, "/")) {
		return fmt.Errorf("%q is not NAME or NAMESPACE/NAME", name)
	}
	return nil
}

func validWindow(d time.Duration, required bool) error {
	switch {
	case d == 0 && required:
		return fmt.Errorf("is required (a Go duration such as 1s or 1m)")
	case d == 0:
		return nil
	case d < MinWindow:
		return fmt.Errorf("%v is shorter than %v", d, MinWindow)
	case d%time.Microsecond != 0:
		return fmt.Errorf("%v is not a whole number of microseconds", d)
	}
	return nil
}

// dimsSignature is a canonical string of a dimension set, to find duplicates.
func dimsSignature(dims map[string]string) string {
	return string(appendDims(nil, dims))
}

func quotaLimit(q *Quota, alg quota.Algorithm) quota.Limit {
	return quota.Limit{Requests: uint64(q.MaxAmount), Window: q.ValidDuration, Algorithm: alg}
}

func overrideLimit(q *Quota, alg quota.Algorithm, o *Override) quota.Limit {
	l := quotaLimit(q, alg)
	if o.MaxAmount != nil {
		l.Requests = uint64(*o.MaxAmount)
	}
	if o.ValidDuration != 0 {
		l.Window = o.ValidDuration
	}
	return l
}

// instanceMatches compares a params reference (NAME or NAMESPACE/NAME) with a
// qualified instance name, as adapters/prometheus does.
func instanceMatches(ref, qualified string) bool {
	if strings.Contains(ref, "/") {
		return ref == qualified
	}
	_, name, _ := strings.Cut(qualified, "/")
	return ref == name
}

// CheckOverrideDimensions reports an override that names a dimension which a
// quota instance it applies to does not have: the override could never match, and
// the instance would keep the quota's limit without a word. dims are the dimension
// names of the bound quota instances (adapters.Instances.QuotaDimensions).
func CheckOverrideDimensions(qs []Quota, dims map[string][]string) error {
	insts := make([]string, 0, len(dims))
	for inst := range dims {
		insts = append(insts, inst)
	}
	sort.Strings(insts)
	for i := range qs {
		for j, o := range qs[i].Overrides {
			names := make([]string, 0, len(o.Dimensions))
			for k := range o.Dimensions {
				names = append(names, k)
			}
			sort.Strings(names)
			for _, inst := range insts {
				if !instanceMatches(qs[i].Name, inst) {
					continue
				}
				for _, k := range names {
					if !slices.Contains(dims[inst], k) {
						has := "no dimensions"
						if len(dims[inst]) > 0 {
							has = strings.Join(dims[inst], ", ")
						}
						return adapters.Errorf(fmt.Sprintf("quotas[%d].overrides[%d].dimensions.%s", i, j, k),
							"quota instance %s has no dimension %q (it has %s): the override would never apply", inst, k, has)
					}
				}
			}
		}
	}
	return nil
}

// Table resolves quota instances to limits and keys. It is immutable once built.
type Table struct {
	quotas     []*compiledQuota
	byInstance map[string]*compiledQuota
}

type compiledQuota struct {
	ref       string
	limit     quota.Limit
	overrides []compiledOverride // most specific first
}

type compiledOverride struct {
	dims  []dim // sorted by name
	limit quota.Limit
}

type dim struct{ name, value string }

// NewTable compiles validated quotas for the quota instances bound to a handler
// (qualified names). Every bound instance must have exactly one quota, or the
// FieldError says which is missing or doubled.
func NewTable(qs []Quota, instances []string) (*Table, error) {
	t := &Table{byInstance: make(map[string]*compiledQuota, len(instances))}
	for i := range qs {
		q := &qs[i]
		alg, err := quota.ParseAlgorithm(q.Algorithm)
		if err != nil {
			return nil, adapters.Errorf(fmt.Sprintf("quotas[%d].algorithm", i), "%v", err)
		}
		cq := &compiledQuota{ref: q.Name, limit: quotaLimit(q, alg)}
		for j := range q.Overrides {
			o := &q.Overrides[j]
			co := compiledOverride{limit: overrideLimit(q, alg, o)}
			for k, v := range o.Dimensions {
				co.dims = append(co.dims, dim{k, v})
			}
			sort.Slice(co.dims, func(a, b int) bool { return co.dims[a].name < co.dims[b].name })
			cq.overrides = append(cq.overrides, co)
		}
		// Stable: among overrides of equal specificity the first listed wins.
		sort.SliceStable(cq.overrides, func(a, b int) bool { return len(cq.overrides[a].dims) > len(cq.overrides[b].dims) })
		t.quotas = append(t.quotas, cq)
	}
	for _, inst := range instances {
		idx := -1
		for i, cq := range t.quotas {
			if instanceMatches(cq.ref, inst) {
				if idx >= 0 {
					return nil, adapters.Errorf(fmt.Sprintf("quotas[%d].name", i), "quota instance %s is matched by quotas[%d] too", inst, idx)
				}
				idx = i
			}
		}
		if idx < 0 {
			return nil, adapters.Errorf("quotas", "a rule sends quota instance %s to this handler but params.quotas has no entry for it", inst)
		}
		t.byInstance[inst] = t.quotas[idx]
	}
	return t, nil
}

// Request builds the rate-limit request for hits against inst's quota: the limit of
// the most specific matching override (or the quota's), and the key of the
// instance's dimensions.
func (t *Table) Request(inst *quota.Instance, hits uint64) (quota.Request, error) {
	cq := t.byInstance[inst.Name]
	if cq == nil {
		// An instance the handler was not built for: a quota naming it exactly,
		// else the first naming it without a namespace.
		for _, q := range t.quotas {
			if q.ref == inst.Name {
				cq = q
				break
			}
			if cq == nil && instanceMatches(q.ref, inst.Name) {
				cq = q
			}
		}
		if cq == nil {
			return quota.Request{}, fmt.Errorf("no quota in params for instance %s", inst.Name)
		}
	}
	return quota.Request{Key: InstanceKey(inst.Name, inst.Dimensions), Limit: cq.limitFor(inst.Dimensions), Hits: hits}, nil
}

func (cq *compiledQuota) limitFor(dims map[string]string) quota.Limit {
next:
	for i := range cq.overrides {
		o := &cq.overrides[i]
		for _, d := range o.dims {
			if v, ok := dims[d.name]; !ok || v != d.value {
				continue next
			}
		}
		return o.limit
	}
	return cq.limit
}
