package config_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/dispatch"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/mixer/registry"
)

// logRecords keeps every record logged through it, at every level.
type logRecords struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

func (l *logRecords) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = nil
}

// rejections counts the "config rejected" records by level.
func (l *logRecords) rejections() map[slog.Level]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := map[slog.Level]int{}
	for _, r := range l.recs {
		if strings.HasPrefix(r.Message, "config rejected") {
			n[r.Level]++
		}
	}
	return n
}

func failures(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	return reloads(t, reg, "failure")
}

// reloads reads sluice_config_reloads_total{result}.
func reloads(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "sluice_config_reloads_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no sluice_config_reloads_total{result=%q}", result)
	return 0
}

// renameInto writes a file beside path and renames it into place, as config
// management tools do.
func renameInto(t *testing.T, path, body string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const callersList = `apiVersion: sluice.dev/v1alpha1
kind: Instance
metadata: {name: caller, namespace: shop}
spec: {template: authorization, params: {value: source.principal}}
---
apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: callers, namespace: shop}
spec:
  adapter: list
  params: {file: LISTFILE}
---
apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: callers-only, namespace: shop}
spec:
  match: destination.service.namespace == "shop"
  actions: [{handler: callers, instances: [caller]}]
`

// newFastWatcher returns a watcher of dir that applies configs to a dispatcher
// of its own, debounces for 5ms and polls every 20ms, with the config of dir
// loaded; reg holds its metrics.
func newFastWatcher(t *testing.T, dir string, log *slog.Logger) (w *config.Watcher, reg *prometheus.Registry) {
	t.Helper()
	comp, err := expr.NewCompiler(attribute.NewVocabulary())
	if err != nil {
		t.Fatal(err)
	}
	disp, err := dispatch.New(dispatch.Options{Shards: 1, Registry: registry.New(""), Logger: slog.New(slog.DiscardHandler), Compiler: comp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = disp.Close(context.Background()) })
	reg = prometheus.NewRegistry()
	if w, err = config.NewWatcher(loader(t, dir), disp.Apply, log, reg); err != nil {
		t.Fatal(err)
	}
	w.Debounce = 5 * time.Millisecond
	w.Poll = 20 * time.Millisecond
	if err := w.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	return w, reg
}

// runWatcher runs w until the test ends; done receives what Run returned, should
// it return before.
func runWatcher(t *testing.T, w *config.Watcher) (done <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	ran, exited := make(chan error, 1), make(chan struct{})
	go func() {
		ran <- w.Run(ctx)
		close(exited)
	}()
	t.Cleanup(func() { cancel(); <-exited })
	return ran
}

// TestWatchRetriesRejectedConfig: a config rejected for something outside the
// directory (here a list file not written yet, as when it comes from another
// ConfigMap) is retried on every poll, and applied once that thing is fixed, without
// another edit of the directory. The repeated rejection is logged once at error level,
// then at debug level, and every failed attempt is counted.
func TestWatchRetriesRejectedConfig(t *testing.T) {
	dir := t.TempDir()
	listFile := filepath.Join(t.TempDir(), "callers.txt")
	logs := &logRecords{}
	w, reg := newFastWatcher(t, dir, slog.New(logs))
	runWatcher(t, w)

	// A handler whose list file does not exist yet: rejected, retried on every poll.
	renameInto(t, filepath.Join(dir, "callers.yaml"), strings.ReplaceAll(callersList, "LISTFILE", listFile))
	waitFor(t, "the config to be rejected for the missing list file", func() bool {
		err := w.LastError()
		return err != nil && strings.Contains(err.Error(), "no such file")
	})
	waitFor(t, "the rejected config to be retried with the directory unchanged", func() bool { return failures(t, reg) >= 3 })
	if v := w.Current().Version; v != 1 {
		t.Fatalf("config version %d while the new config is rejected, want 1", v)
	}

	// The list file appears: the next poll applies the config.
	renameInto(t, listFile, "spiffe://cluster.local/ns/shop/sa/frontend\n")
	waitFor(t, "the config to be applied once its list file exists", func() bool {
		return w.Current().Version == 2 && w.LastError() == nil
	})
	failed := failures(t, reg)
	time.Sleep(5 * w.Poll) // a good config is not retried
	if got := failures(t, reg); got != failed {
		t.Errorf("%v more failed loads after the config was applied", got-failed)
	}

	byLevel := logs.rejections()
	if byLevel[slog.LevelError] != 1 {
		t.Errorf("the same rejection logged %d times at error level, want once", byLevel[slog.LevelError])
	}
	if got := float64(byLevel[slog.LevelError] + byLevel[slog.LevelDebug]); got != failed {
		t.Errorf("%v rejections logged for %v failed loads counted", got, failed)
	}
}

// TestReloadLogsEachNewRejection: a rejection is logged at error level when it
// differs from the one logged before, or follows an applied config, and at debug
// level when it repeats.
func TestReloadLogsEachNewRejection(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var next []error // what apply returns, in turn; nil applies
	apply := func(context.Context, *config.Snapshot) error {
		err := next[0]
		next = next[1:]
		return err
	}
	logs := &logRecords{}
	w, err := config.NewWatcher(loader(t, dir), apply, slog.New(logs), nil)
	if err != nil {
		t.Fatal(err)
	}
	next = []error{nil}
	if err := w.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	// A new object, so that every load below differs from the running config.
	renameInto(t, filepath.Join(dir, "caller.yaml"), strings.SplitN(callersList, "---", 2)[0])

	a, b := errors.New("redis: lookup redis.shop: no such host"), errors.New("list: open /etc/sluice/callers.txt: no such file or directory")
	steps := []struct {
		err  error
		want slog.Level
	}{{a, slog.LevelError}, {a, slog.LevelDebug}, {a, slog.LevelDebug}, {b, slog.LevelError}, {b, slog.LevelDebug}, {a, slog.LevelError},
		{nil, 0}, {a, slog.LevelError}}
	for i, s := range steps {
		next = []error{s.err}
		logs.reset()
		err := w.Reload(ctx)
		if (err != nil) != (s.err != nil) {
			t.Fatalf("step %d: Reload = %v, want %v", i, err, s.err)
		}
		if s.err == nil {
			// Rewrite the object so that the next load differs from the one just applied.
			renameInto(t, filepath.Join(dir, "caller.yaml"), strings.ReplaceAll(strings.SplitN(callersList, "---", 2)[0], "caller", "caller2"))
			continue
		}
		got := logs.rejections()
		if len(got) != 1 || got[s.want] != 1 {
			t.Errorf("step %d (%v): rejections logged by level %v, want one at %v", i, s.err, got, s.want)
		}
	}
}

// TestReloadReportsRecovery: a config rejected at start says nothing of a last
// good config (there is none), and a rejected edit undone is logged and counted as
// a load that succeeded, so that the rejection is not the last word an operator
// sees although the running config did not change.
func TestReloadReportsRecovery(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	renameInto(t, bad, "kind: NoSuchKind\n")
	logs := &logRecords{}
	reg := prometheus.NewRegistry()
	w, err := config.NewWatcher(loader(t, dir), func(context.Context, *config.Snapshot) error { return nil }, slog.New(logs), reg)
	if err != nil {
		t.Fatal(err)
	}
	messages := func() []string {
		logs.mu.Lock()
		defer logs.mu.Unlock()
		var m []string
		for _, r := range logs.recs {
			m = append(m, r.Message)
		}
		logs.recs = nil
		return m
	}
	if err := w.Reload(ctx); err == nil {
		t.Fatal("Reload of a bad config at start succeeded")
	}
	if got := messages(); len(got) != 1 || got[0] != "config rejected" {
		t.Errorf("at start, logged %q, want one \"config rejected\"", got)
	}
	if err := os.Remove(bad); err != nil {
		t.Fatal(err)
	}
	if err := w.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	renameInto(t, bad, "kind: NoSuchKind\n")
	if err := w.Reload(ctx); err == nil {
		t.Fatal("Reload of a bad edit succeeded")
	}
	if got := messages(); len(got) != 2 || got[0] != "config applied" || got[1] != "config rejected; the last good config keeps serving" {
		t.Errorf("after the first good config and a bad edit, logged %q", got)
	}
	ok := reloads(t, reg, "success")
	if err := os.Remove(bad); err != nil {
		t.Fatal(err)
	}
	if err := w.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if got := messages(); len(got) != 1 || got[0] != "config errors resolved; the running config is unchanged" {
		t.Errorf("after the bad edit was undone, logged %q", got)
	}
	if got := reloads(t, reg, "success") - ok; got != 1 {
		t.Errorf("reloads_total{result=success} rose by %v when the bad edit was undone, want 1", got)
	}
	// A load with nothing changed and nothing to resolve is neither logged nor counted.
	if err := w.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if got := messages(); len(got) != 0 {
		t.Errorf("a load without a change logged %q", got)
	}
	if got := reloads(t, reg, "success") - ok; got != 1 {
		t.Errorf("reloads_total{result=success} rose by %v after a load without a change, want 1", got)
	}
}

// TestWatchFallsBackToPolling: a directory that cannot be watched (here it is
// missing when the watch starts, as a volume mounted late; inotify's per-user
// limits fail the same way) is polled instead: each failed try to watch it is
// counted, the config written later is applied, and once the directory can be
// watched it is.
func TestWatchFallsBackToPolling(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "config")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	w, reg := newFastWatcher(t, dir, slog.New(slog.DiscardHandler))
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	done := runWatcher(t, w)
	// Each poll tries to watch again, and counts its failure.
	waitFor(t, "the failed watches to be counted", func() bool { return counter(t, reg, "sluice_config_watch_errors_total") >= 2 })

	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	renameInto(t, filepath.Join(dir, "callers.yaml"), strings.ReplaceAll(callersList, "LISTFILE", writeList(t)))
	waitFor(t, "the config written after the watch failed to be applied", func() bool {
		return w.Current().Version == 2 && w.LastError() == nil
	})
	// Watching again: no more failures are counted.
	failed := counter(t, reg, "sluice_config_watch_errors_total")
	time.Sleep(5 * w.Poll)
	if got := counter(t, reg, "sluice_config_watch_errors_total"); got != failed {
		t.Errorf("%v more watch failures counted once the directory exists", got-failed)
	}
	select {
	case err := <-done:
		t.Fatalf("watcher stopped: %v", err)
	default:
	}
}

// writeList writes a list file of one principal and returns its path.
func writeList(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "callers.txt")
	if err := os.WriteFile(p, []byte("spiffe://cluster.local/ns/shop/sa/frontend\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// counter reads an unlabelled counter.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no %s", name)
	return 0
}

// TestRejectionLogBounded: a load with thousands of errors logs a bounded number of
// lines and says how many more there are; the gauge counts them all.
func TestRejectionLogBounded(t *testing.T) {
	dir := t.TempDir()
	renameInto(t, filepath.Join(dir, "rl.yaml"), string(manyWrongValues(120)))
	logs := &logRecords{}
	reg := prometheus.NewRegistry()
	w, err := config.NewWatcher(loader(t, dir), func(context.Context, *config.Snapshot) error { return nil }, slog.New(logs), reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Reload(context.Background()); err == nil {
		t.Fatal("Reload of a bad config succeeded")
	}
	logs.mu.Lock()
	recs := logs.recs
	logs.mu.Unlock()
	var errs int
	var more int64
	for _, r := range recs {
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "error":
				errs++
			case "more_errors":
				more = a.Value.Int64()
			}
			return true
		})
	}
	if errs != 50 || more != 70 {
		t.Errorf("logged %d errors and more_errors=%d, want 50 and 70", errs, more)
	}
	want := "# HELP sluice_config_errors Errors found by the last config load (0 when it was applied).\n# TYPE sluice_config_errors gauge\nsluice_config_errors 120\n"
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "sluice_config_errors"); err != nil {
		t.Error(err)
	}
}
