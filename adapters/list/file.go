package list

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// maxFileSize bounds a list file, so that a wrong path (a device, a log file) cannot
// exhaust memory.
const maxFileSize = 64 << 20

// debounce is how long the watcher waits after a change before reading the file, so
// that the several events of one update cause one reload.
const debounce = 100 * time.Millisecond

// settle is how long a new version of the file must stay the same before it is taken.
// A writer that is not atomic (cat new > list.txt) leaves a prefix of the new list in
// the file for a while, and a prefix often parses: "10.0.0.0/2" of "10.0.0.0/24", or
// nothing at all, which empties a deny-list. It must not be shorter than debounce: the
// watch loop relies on any wake-up of its timer being at least settle after the read
// it confirms.
const settle = debounce

// maxSettleWait bounds the back-off of the re-reads while a writer keeps the file
// changing, so that a file that never settles costs a read every few seconds, not a
// read every settle.
const maxSettleWait = 5 * time.Second

// maxReported bounds how many bad entries of one file version are logged or returned.
const maxReported = 10

// fileEntry is one entry of a list file with its line number (1-based).
type fileEntry struct {
	line int
	text string
}

// LineError is a bad entry of a list file.
type LineError struct {
	File string
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err) }

func (e *LineError) Unwrap() error { return e.Err }

// splitFile splits a list file into entries: one per line, surrounding white space
// trimmed, blank lines and lines whose first non-blank character is '#' skipped. A
// '#' later in a line is part of the entry, because it can be part of a string or a
// regular expression. A UTF-8 byte order mark and CRLF line ends are accepted.
func splitFile(data []byte) []fileEntry {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var out []fileEntry
	for n := 1; len(data) > 0; n++ {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		out = append(out, fileEntry{line: n, text: string(line)})
	}
	return out
}

// parseFile checks every entry of a list file, returning the entries or the bad
// ones (at most maxReported, plus a count of the rest).
func parseFile(name string, data []byte, t EntryType) ([]string, []error) {
	lines := splitFile(data)
	entries := make([]string, 0, len(lines))
	var errs []error
	bad := 0
	for _, l := range lines {
		if err := checkEntry(t, l.text); err != nil {
			bad++
			if len(errs) < maxReported {
				errs = append(errs, &LineError{File: name, Line: l.line, Err: err})
			}
			continue
		}
		entries = append(entries, l.text)
	}
	if bad > len(errs) {
		errs = append(errs, fmt.Errorf("%s: %d more bad entries", name, bad-len(errs)))
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return entries, nil
}

// fileVersion tells two reads of the file apart. The digest alone would take a
// writer that truncated the file and wrote the same prefix again for a file at rest.
type fileVersion struct {
	sum   [32]byte
	size  int64
	mtime int64 // UnixNano, so that versions compare with ==
}

// readFile reads a list file, refusing one larger than maxFileSize. The size and
// mtime are of the file read (fstat), not of whatever the path names by now.
func readFile(path string) ([]byte, fileVersion, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fileVersion{}, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fileVersion{}, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fileVersion{}, fmt.Errorf("%s is larger than %d MiB", path, maxFileSize>>20)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fileVersion{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return data, fileVersion{sum: sha256.Sum256(data), size: fi.Size(), mtime: fi.ModTime().UnixNano()}, nil
}

// loadFile reads and checks the list file and builds the list from it and the
// overrides. It returns the file's digest too, so that reloads can skip a version
// they have already seen.
func (h *Handler) loadFile() (*matcher, [32]byte, error) {
	data, v, err := readFile(h.file)
	if err != nil {
		return nil, [32]byte{}, err
	}
	entries, errs := parseFile(h.file, data, h.typ)
	if len(errs) > 0 {
		return nil, v.sum, errors.Join(errs...)
	}
	m, err := newMatcher(h.typ, append(entries, h.overrides...))
	if err != nil {
		return nil, v.sum, fmt.Errorf("build list from %s: %w", h.file, err)
	}
	return m, v.sum, nil
}

// watch re-reads the file when fsnotify reports a change in its directory, and
// every poll interval in case an event was missed (network file systems, a symlink
// whose target lives in another directory, a directory that was replaced).
func (h *Handler) watch(w *fsnotify.Watcher, poll time.Duration, digest [32]byte) {
	defer close(h.done)
	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	if w != nil {
		defer w.Close()
		events, watchErrs = w.Events, w.Errors
	}
	var tick <-chan time.Time
	if poll > 0 {
		t := time.NewTicker(poll)
		defer t.Stop()
		tick = t.C
	}
	timer := time.NewTimer(debounce)
	timer.Stop()
	defer timer.Stop()
	st := reloadState{digest: digest}
	for {
		select {
		case <-h.stop:
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if h.concerns(ev.Name) {
				timer.Reset(debounce)
			}
		case err, ok := <-watchErrs:
			if !ok {
				watchErrs = nil
				continue
			}
			h.env.Stats.Error("list_watch")
			h.env.Logger.Warn("list file watch failed; relying on polling", "file", h.file, "err", err)
		case <-timer.C:
			h.reload(&st)
			if st.pending != nil {
				timer.Reset(st.wait)
			}
		case <-tick:
			if st.pending != nil {
				// The timer is armed for the confirming read; reading now could
				// confirm a version read a moment ago by a writer still at work.
				continue
			}
			h.reload(&st)
			if st.pending != nil {
				timer.Reset(st.wait)
			}
		}
	}
}

// concerns reports whether an event in the watched directory may change the file:
// the file itself, or one of the ".." entries through which Kubernetes swaps a
// mounted ConfigMap's files all at once.
func (h *Handler) concerns(name string) bool {
	base := filepath.Base(name)
	return base == filepath.Base(h.file) || strings.HasPrefix(base, "..")
}

// reloadState is what the watch goroutine remembers between reloads.
type reloadState struct {
	// digest is of the last version that settled, good or bad: it is not parsed
	// (or reported) again until it changes.
	digest [32]byte
	// readErr is the last read error logged, so that a missing file is logged once
	// per outage, not once per poll.
	readErr string
	// pending is a changed version read once; it is taken only if the next read,
	// at least settle later, finds the same version. The watch loop re-reads after
	// wait while it is set.
	pending *fileVersion
	wait    time.Duration
	// unsettledLogged keeps a writer that never stops from filling the log.
	unsettledLogged bool
}

func (st *reloadState) endSettling() {
	st.pending, st.wait, st.unsettledLogged = nil, 0, false
}

// reload reads the file and swaps the list in when the file changed, has stopped
// changing and is good. The caller spaces the reads: the one that confirms a pending
// version must come at least settle after it. A file still changing, or a bad version,
// is counted and logged, and the last good list keeps serving.
func (h *Handler) reload(st *reloadState) {
	data, v, err := readFile(h.file)
	if err != nil {
		// A file re-created later is a new version and must settle from scratch.
		st.endSettling()
		h.env.Stats.Error("list_file_read")
		if err.Error() != st.readErr {
			st.readErr = err.Error()
			h.env.Logger.Warn("cannot read list file; keeping the last good list", "file", h.file, "err", err)
		}
		return
	}
	st.readErr = ""
	if v.sum == st.digest {
		st.endSettling()
		return
	}
	if st.pending == nil {
		st.pending, st.wait = &v, settle
		return
	}
	if *st.pending != v {
		h.env.Stats.Error("list_file_unsettled")
		if !st.unsettledLogged {
			st.unsettledLogged = true
			h.env.Logger.Warn("list file is still being written; keeping the last good list until it stops changing", "file", h.file)
		}
		st.pending, st.wait = &v, min(2*st.wait, maxSettleWait)
		return
	}
	st.endSettling()
	st.digest = v.sum
	entries, errs := parseFile(h.file, data, h.typ)
	if len(errs) > 0 {
		h.env.Stats.Error("list_file_invalid")
		for _, e := range errs {
			h.env.Logger.Warn("bad list file entry; keeping the last good list", "err", e.Error())
		}
		return
	}
	m, err := newMatcher(h.typ, append(entries, h.overrides...))
	if err != nil {
		h.env.Stats.Error("list_file_invalid")
		h.env.Logger.Warn("cannot build list; keeping the last good list", "file", h.file, "err", err)
		return
	}
	h.cur.Store(m)
	h.env.Logger.Info("list file reloaded", "file", h.file, "entries", m.entries)
}
