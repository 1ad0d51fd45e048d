package mixer_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/sluicemesh/sluice/mixer"
)

// lockedBuffer is a log sink the server's goroutines may write concurrently.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRedisAddrReplacedWarns: a config may replace the quota handler --redis-addr
// makes (it is a default), but then rate limits stop being shared through Redis,
// so each config applied says so; with the flag's handler in force nothing is said.
func TestRedisAddrReplacedWarns(t *testing.T) {
	const warning = "the config replaces the quota handler --redis-addr made"
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string // in the warning; "" for none
	}{
		{name: "flag's handler in force"},
		{name: "replaced by memquota", files: map[string]string{"quota.yaml": `apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: quota, namespace: sluice-system}
spec: {adapter: memquota, params: {}}
`}, want: "adapter=memquota source="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, body := range tc.files {
				writeFile(t, dir, name, body)
			}
			logs := &lockedBuffer{}
			h := start(t, dir, func(o *mixer.Options) {
				// Never dialled: no check is made.
				o.RedisAddr = "127.0.0.1:1"
				o.Logger = slog.New(slog.NewTextHandler(logs, nil))
			})
			defer h.stop()
			got := logs.String()
			switch {
			case tc.want == "" && strings.Contains(got, warning):
				t.Errorf("warned with the flag's handler in force:\n%s", got)
			case tc.want != "" && !strings.Contains(got, warning):
				t.Errorf("no warning; logged:\n%s", got)
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Errorf("the warning does not say %q:\n%s", tc.want, got)
			}
		})
	}
}
