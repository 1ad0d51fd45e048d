package attribute

import (
	"fmt"
	"time"
)

// Set stores a Go value (string, int64, int, bool, time.Duration, time.Time,
// map[string]string) under id, checking that it fits the attribute's kind.
func (b *Bag) Set(id ID, v any) error {
	switch id.Kind() {
	case String:
		if s, ok := v.(string); ok {
			b.SetString(id, s)
			return nil
		}
	case Int64:
		switch n := v.(type) {
		case int64:
			b.SetInt(id, n)
			return nil
		case int:
			b.SetInt(id, int64(n))
			return nil
		}
	case Bool:
		if x, ok := v.(bool); ok {
			b.SetBool(id, x)
			return nil
		}
	case Duration:
		if d, ok := v.(time.Duration); ok {
			b.SetDuration(id, d)
			return nil
		}
	case Timestamp:
		if t, ok := v.(time.Time); ok {
			b.SetTime(id, t)
			return nil
		}
	case Map:
		if m, ok := v.(map[string]string); ok {
			b.SetMap(id, MapOf(m))
			return nil
		}
	}
	return fmt.Errorf("attribute %s is %s, not %T", id.Name(), id.Kind(), v)
}
