// Package templates defines the data shapes rules produce and adapters consume: each
// template names its expression-valued parameters; subpackages hold the instance types.
package templates

// Template names, as written in an Instance's spec.template.
const (
	Metric        = "metric"
	LogEntry      = "logentry"
	Edge          = "edge"
	Authorization = "authorization"
	Quota         = "quota"
)

// ValueType constrains what an expression parameter may evaluate to.
type ValueType uint8

// Value types accepted by template parameters.
const (
	// Any scalar; formatted as a string where a string is needed.
	Any ValueType = iota
	// Numeric is an int, double, duration (in milliseconds) or bool (0 or 1).
	Numeric
	// String only.
	String
	// Timestamp only.
	Timestamp
)

func (v ValueType) String() string {
	return [...]string{"any scalar", "a number or duration", "a string", "a timestamp"}[v]
}

// Param describes one parameter of a template: a single expression, or a map from
// names to expressions (dimensions, variables).
type Param struct {
	Name     string
	Map      bool
	Required bool
	Type     ValueType
	// Default is the expression used when the parameter is absent.
	Default string
	Doc     string
}

// Descriptor describes a template.
type Descriptor struct {
	Name   string
	Doc    string
	Params []Param
}

// Param returns the named parameter.
func (d Descriptor) Param(name string) (Param, bool) {
	for _, p := range d.Params {
		if p.Name == name {
			return p, true
		}
	}
	return Param{}, false
}

// Descriptors returns the templates this build supports.
func Descriptors() []Descriptor {
	return []Descriptor{
		{
			Name: Metric,
			Doc:  "a measurement with dimensions, aggregated per series by the core",
			Params: []Param{
				{Name: "value", Required: true, Type: Numeric, Doc: "the observed value; durations count in milliseconds"},
				{Name: "dimensions", Map: true, Type: Any, Doc: "label name to expression"},
			},
		},
		{
			Name: LogEntry,
			Doc:  "one structured log record per matching request",
			Params: []Param{
				{Name: "severity", Type: String, Default: `"info"`, Doc: "severity name"},
				{Name: "timestamp", Type: Timestamp, Default: "context.time", Doc: "time of the record"},
				{Name: "variables", Map: true, Type: Any, Doc: "field name to expression"},
			},
		},
		{
			Name: Authorization,
			Doc:  "what a policy handler checks for one request (ext_authz)",
			Params: []Param{
				{Name: "value", Type: Any, Doc: "the value a list handler checks: a principal, an IP, a header"},
				{Name: "properties", Map: true, Type: Any, Doc: "further named values for handlers"},
			},
		},
		{
			Name: Quota,
			Doc:  "one unit (or more) of a quota per request (ext_authz); the dimensions select the quota's overrides and key",
			Params: []Param{
				{Name: "dimensions", Map: true, Type: Any, Doc: "dimension name to expression"},
			},
		},
	}
}
