// Package logentry is the logentry template: one structured record per matching
// request, built on a shard and handed to log handlers at the end of each batch.
package logentry

import "time"

// Instance is a compiled logentry instance as a handler sees it.
type Instance struct {
	// Name is the instance's qualified name, NAMESPACE/NAME.
	Name string
	// Variables are the field names, in the order of Entry.Values.
	Variables []string
}

// Entry is one record. Its values own their memory (no reference to a receive buffer).
type Entry struct {
	Instance  *Instance
	Timestamp time.Time
	Severity  string
	// Values holds one value per Instance.Variables: string, int64, float64, bool,
	// time.Duration, time.Time, map[string]string, or nil when the expression had no value.
	Values []any
}
