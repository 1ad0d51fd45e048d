package list

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicemesh/sluice/adapters"
)

// recorder is the Env's Stats and log output, safe for the watch goroutine.
type recorder struct {
	mu     sync.Mutex
	errors map[string]int
	log    bytes.Buffer
}

func newRecorder() *recorder { return &recorder{errors: map[string]int{}} }

func (r *recorder) Error(reason string) { r.mu.Lock(); r.errors[reason]++; r.mu.Unlock() }
func (r *recorder) Dropped(int, string) {}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.Write(p)
}

func (r *recorder) count(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.errors[reason]
}

func (r *recorder) logText() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.String()
}

func (r *recorder) env() adapters.Env {
	return adapters.Env{Name: "ns/fromfile", Stats: r, Logger: slog.New(slog.NewTextHandler(r, nil))}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replaceFile writes content next to path and renames it into place, as editors and
// deployment tools do.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func fileList(t *testing.T, env adapters.Env, path string, edit func(*Params)) *Handler {
	t.Helper()
	p := defaults()
	p.File = path
	p.RefreshInterval = 0 // changes must arrive through fsnotify unless a test says otherwise
	if edit != nil {
		edit(p)
	}
	h, err := New(context.Background(), env, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return h
}

// eventually polls cond, since reloads happen on the watch goroutine.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func allowed(t *testing.T, h *Handler, v any) bool {
	t.Helper()
	return check(t, h, v).Allowed()
}

func TestFileFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "principals.txt")
	writeFile(t, path, "\xef\xbb\xbf# allowed callers\r\n\r\n  alice  \r\nbob # not a comment\n\t# indented comment\ncarol")
	h := fileList(t, adapters.Env{}, path, func(p *Params) { p.Overrides = []string{"dave"} })
	for v, want := range map[string]bool{
		"alice": true, "bob # not a comment": true, "bob": false, "carol": true, "dave": true,
		"# allowed callers": false, "": false, "\ufeff# allowed callers": false,
	} {
		if got := allowed(t, h, v); got != want {
			t.Errorf("%q: allowed=%v, want %v", v, got, want)
		}
	}
	if h.Entries() != 4 {
		t.Errorf("%d entries, want 4", h.Entries())
	}
}

func TestFileErrorsAtStart(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, typ, content string
		want               []string
	}{
		{"bad IP", "IP_ADDRESSES", "10.0.0.0/8\n# comment\n10.0.0.300\n", []string{"list.txt:3:", `"10.0.0.300"`}},
		{"bad regex", "REGEX", "ok.*\n\n(unclosed\n", []string{"list.txt:3:", "(unclosed"}},
		{"many bad", "IP_ADDRESSES", strings.Repeat("nope\n", 15), []string{"list.txt:1:", "list.txt:10:", "5 more bad entries"}},
		{"missing file", "STRINGS", "", []string{"no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name, "list.txt")
			if tt.content != "" {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				writeFile(t, path, tt.content)
			}
			p := defaults()
			p.EntryType, p.File = tt.typ, path
			_, err := New(context.Background(), adapters.Env{}, p)
			if err == nil {
				t.Fatal("New accepted a bad file")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if tt.name == "bad IP" {
				var le *LineError
				if !errors.As(err, &le) || le.Line != 3 || le.File != path {
					t.Errorf("error %v is not a LineError at %s:3", err, path)
				}
			}
		})
	}
}

func TestFileReload(t *testing.T) {
	tests := []struct {
		name   string
		update func(t *testing.T, path string, content string)
	}{
		{"written in place", func(t *testing.T, path, content string) { writeFile(t, path, content) }},
		{"renamed into place", replaceFile},
		{"removed and created again", func(t *testing.T, path, content string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			writeFile(t, path, content)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "list.txt")
			writeFile(t, path, "10.0.0.0/8\n")
			rec := newRecorder()
			h := fileList(t, rec.env(), path, func(p *Params) { p.EntryType = "IP_ADDRESSES"; p.Blacklist = true })
			if allowed(t, h, "10.1.1.1") || !allowed(t, h, "192.168.0.1") {
				t.Fatal("initial list not in force")
			}
			tt.update(t, path, "192.168.0.0/16\n")
			eventually(t, "the new list is in force", func() bool {
				return allowed(t, h, "10.1.1.1") && !allowed(t, h, "192.168.0.1")
			})
			if n := rec.count("list_file_invalid"); n != 0 {
				t.Errorf("%d invalid versions counted", n)
			}
		})
	}
}

// TestConfigMapSwap updates the file the way the kubelet updates a mounted ConfigMap:
// list.txt is a symlink to ..data/list.txt, and ..data is a symlink to a timestamped
// directory that is replaced by renaming a new symlink over it.
func TestConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(n int, content string) string {
		d := fmt.Sprintf("..2026_01_0%d", n)
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, d, "list.txt"), content)
		return d
	}
	v1 := version(1, "frontend\n")
	must(t, os.Symlink(v1, filepath.Join(dir, "..data")))
	must(t, os.Symlink(filepath.Join("..data", "list.txt"), filepath.Join(dir, "list.txt")))

	h := fileList(t, adapters.Env{}, filepath.Join(dir, "list.txt"), nil)
	if !allowed(t, h, "frontend") || allowed(t, h, "backend") {
		t.Fatal("initial list not in force")
	}
	v2 := version(2, "backend\n")
	must(t, os.Symlink(v2, filepath.Join(dir, "..data_tmp")))
	must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	must(t, os.RemoveAll(filepath.Join(dir, v1)))
	eventually(t, "the swapped list is in force", func() bool {
		return allowed(t, h, "backend") && !allowed(t, h, "frontend")
	})
}

func TestBadVersionKeepsLastGoodList(t *testing.T) {
	path := filepath.Join(t.TempDir(), "list.txt")
	writeFile(t, path, "^/api/.*\n")
	rec := newRecorder()
	h := fileList(t, rec.env(), path, func(p *Params) { p.EntryType = "REGEX" })

	replaceFile(t, path, "^/api/.*\n^/admin/.*\n# comment\n(bad\n")
	eventually(t, "the bad version is counted", func() bool { return rec.count("list_file_invalid") == 1 })
	if !allowed(t, h, "/api/x") || allowed(t, h, "/admin/x") {
		t.Error("the last good list is not in force after a bad version")
	}
	if log := rec.logText(); !strings.Contains(log, path+":4:") || !strings.Contains(log, "keeping the last good list") {
		t.Errorf("log does not name the bad entry by file:line:\n%s", log)
	}

	// The same bad version seen again (another event, a poll) is not counted again.
	must(t, os.Chtimes(path, time.Now(), time.Now()))
	time.Sleep(3 * debounce)
	if n := rec.count("list_file_invalid"); n != 1 {
		t.Errorf("the same bad version was counted %d times", n)
	}

	replaceFile(t, path, "^/api/.*\n^/admin/.*\n")
	eventually(t, "the fixed version is in force", func() bool { return allowed(t, h, "/admin/x") })
}

func TestRemovedFileKeepsList(t *testing.T) {
	path := filepath.Join(t.TempDir(), "list.txt")
	writeFile(t, path, "a\n")
	rec := newRecorder()
	h := fileList(t, rec.env(), path, nil)
	must(t, os.Remove(path))
	eventually(t, "the failed read is counted", func() bool { return rec.count("list_file_read") > 0 })
	if !allowed(t, h, "a") || allowed(t, h, "b") {
		t.Error("the list changed when its file disappeared")
	}
	writeFile(t, path, "b\n")
	eventually(t, "the new file is in force", func() bool { return allowed(t, h, "b") && !allowed(t, h, "a") })
}

// TestPolling changes a file that fsnotify cannot see change: the list file is a
// symlink into another directory, and the target is rewritten there.
func TestPolling(t *testing.T) {
	target, h := polledList(t, adapters.Env{})
	writeFile(t, target, "b\n")
	eventually(t, "polling finds the change", func() bool { return allowed(t, h, "b") })
}

// polledList starts a list whose file, holding "a", only polling sees change: the
// list file is a symlink into another directory, and target, which the test
// rewrites, is there.
func polledList(t *testing.T, env adapters.Env) (target string, h *Handler) {
	t.Helper()
	watched, elsewhere := t.TempDir(), t.TempDir()
	target = filepath.Join(elsewhere, "real.txt")
	writeFile(t, target, "a\n")
	link := filepath.Join(watched, "list.txt")
	must(t, os.Symlink(target, link))
	return target, fileList(t, env, link, func(p *Params) { p.RefreshInterval = 100 * time.Millisecond })
}

func TestCloseStopsWatching(t *testing.T) {
	path := filepath.Join(t.TempDir(), "list.txt")
	writeFile(t, path, "a\n")
	p := defaults()
	p.File = path
	h, err := New(context.Background(), adapters.Env{}, p)
	if err != nil {
		t.Fatal(err)
	}
	must(t, h.Close(context.Background()))
	must(t, h.Close(context.Background())) // twice is harmless
	writeFile(t, path, "b\n")
	time.Sleep(3 * debounce)
	if allowed(t, h, "b") {
		t.Error("a closed list still reloads")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestTornFileNotSwappedIn catches the file between two writes of a writer that is not
// atomic, with the watch goroutine stopped so that the test decides when each read
// happens: a prefix of the new list that parses must not be taken for the list.
func TestTornFileNotSwappedIn(t *testing.T) {
	const old, next = "10.0.0.0/24\n", "10.0.0.0/24\n10.9.0.0/16\n"
	tests := []struct {
		name      string
		blacklist bool
		torn      func(t *testing.T, path string)
	}{
		// 10.0.0.0/2 is 0.0.0.0/2: the allow-list would admit a quarter of IPv4.
		{"prefix cut short", false, func(t *testing.T, path string) { writeFile(t, path, "10.0.0.0/2") }},
		// An empty deny-list denies nothing.
		{"emptied", true, func(t *testing.T, path string) { writeFile(t, path, "") }},
		// The same bytes in both reads, but written again in between: the writer is
		// not done.
		{"rewritten between reads", false, func(t *testing.T, path string) {
			writeFile(t, path, next)
			must(t, os.Chtimes(path, time.Now(), time.Unix(1_000_000_000, 0)))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "list.txt")
			writeFile(t, path, old)
			rec := newRecorder()
			h := fileList(t, rec.env(), path, func(p *Params) {
				p.EntryType, p.Blacklist = "IP_ADDRESSES", tt.blacklist
				p.RefreshInterval = time.Hour
			})
			must(t, h.Close(context.Background()))
			st := reloadState{digest: sha256.Sum256([]byte(old))}
			listed := func(v string) bool { return allowed(t, h, v) != tt.blacklist }
			oldInForce := func() bool { return listed("10.0.0.1") && !listed("10.200.0.1") && !listed("10.9.1.1") }

			tt.torn(t, path)
			h.reload(&st) // the poll or the debounced event finds the torn file
			if !oldInForce() {
				t.Fatal("a torn file was swapped in")
			}
			writeFile(t, path, next) // the writer finishes
			h.reload(&st)
			if !oldInForce() {
				t.Fatal("a file read once was swapped in")
			}
			if n := rec.count("list_file_unsettled"); n != 1 {
				t.Errorf("list_file_unsettled counted %d times, want 1", n)
			}
			h.reload(&st) // a settle interval later, the file has not changed
			if !listed("10.0.0.1") || !listed("10.9.1.1") || listed("10.200.0.1") {
				t.Fatal("the settled file is not in force")
			}
			h.reload(&st)
			if n := rec.count("list_file_unsettled") + rec.count("list_file_invalid") + rec.count("list_file_read"); n != 1 {
				t.Errorf("%d failures counted, want the one unsettled read", n)
			}
		})
	}
}

// TestFileKeepsChanging rewrites a polled file (a symlink into a directory that is not
// watched, so no event debounces the writes) until a re-read is seen to differ, then
// stops: the failed settling is counted and the final version is taken once it rests.
func TestFileKeepsChanging(t *testing.T) {
	rec := newRecorder()
	target, h := polledList(t, rec.env())

	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if err := os.WriteFile(target, fmt.Appendf(nil, "b%d\n", i), 0o644); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	stopWriter := sync.OnceFunc(func() { close(stop); <-done })
	defer stopWriter() // before t.TempDir's cleanup, also when eventually fails
	eventually(t, "a file still changing is counted", func() bool { return rec.count("list_file_unsettled") > 0 })
	stopWriter()
	writeFile(t, target, "c\n")
	eventually(t, "the file at rest is in force", func() bool { return allowed(t, h, "c") && !allowed(t, h, "a") })
	if log := rec.logText(); !strings.Contains(log, "still being written") {
		t.Errorf("a file that kept changing was not logged:\n%s", log)
	}
}
