// Package adaptertest is the adapter SDK's test kit: checks every adapter's tests
// share, so that each states its cases and not the checking.
package adaptertest

import (
	"errors"
	"testing"

	"github.com/sluicemesh/sluice/adapters"
)

// WantFieldError fails t unless err is nil when path is empty, or a FieldError at
// path (which the config loader turns into the file and line of that field).
func WantFieldError(t testing.TB, err error, path string) {
	t.Helper()
	if path == "" {
		if err != nil {
			t.Fatalf("unexpected error %v", err)
		}
		return
	}
	var fe *adapters.FieldError
	if !errors.As(err, &fe) || fe.Path != path {
		t.Errorf("error %v, want one at %s", err, path)
	}
}
