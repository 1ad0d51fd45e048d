package mixer_test

import (
	"os"
	"strings"
	"testing"

	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
	"github.com/sluicemesh/sluice/mixer/attribute"
)

// TestREADMEListsEverything keeps the README honest: every attribute of the vocabulary
// and every sluice_* metric this server exposes, with its labels, is documented.
func TestREADMEListsEverything(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, d := range attribute.NewVocabulary().Defs() {
		name := d.Name
		if strings.HasPrefix(name, "destination.") && !strings.HasPrefix(name, "destination.service.") && name != "destination.subset" {
			name = "source." + strings.TrimPrefix(name, "destination.") // documented once for both sides
		}
		if !strings.Contains(readme, "`"+name+"`") {
			t.Errorf("README does not list attribute %s", d.Name)
		}
	}
	// With the check listener on, so that its metrics are exposed too.
	h := start(t, t.TempDir(), func(o *mixer.Options) { o.CheckAddr = "127.0.0.1:0" })
	send(t, h, bookinfoCalls(20, 1))
	f := h.waitProcessed(40)
	for name, fam := range f {
		if !strings.HasPrefix(name, "sluice_") {
			continue
		}
		if !strings.Contains(readme, "`"+name+"`") {
			t.Errorf("README does not list metric %s", name)
			continue
		}
		for _, m := range fam.GetMetric() {
			for l := range loadtest.Labels(m) {
				if !strings.Contains(readme, "`"+l+"`") {
					t.Errorf("README does not list label %s of %s", l, name)
				}
			}
		}
	}
	for _, reason := range []string{"queue_full", "shutdown", "malformed", "no_identifier", "no_config", "bad_identifier", "too_large",
		"unknown_enum", "bad_peer_metadata", "connection_table_full", "no_value", "eval_error", "closed",
		"protocol_error", "unknown_method", "bad_request", "refused", "reset_by_client", "stream_error",
		"deadline_exceeded", "connection_closed", "write_timeout", "tls_handshake", "accept_error", "connection_limit",
		"script_missing", "list_watch"} {
		if !strings.Contains(readme, "`"+reason+"`") {
			t.Errorf("README does not list reason %s", reason)
		}
	}
}
