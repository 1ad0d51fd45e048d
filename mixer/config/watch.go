package config

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// ApplyFunc makes a snapshot the running config; an error rejects it.
type ApplyFunc func(ctx context.Context, s *Snapshot) error

// Watcher loads the config, applies it, and reloads it when the directory changes.
// A bad reload is logged and counted, and the last good config keeps serving. While
// the last load failed, every poll retries it even if the directory did not change:
// the cause may lie outside it (a list file not synced yet), and fixing that must
// apply the config without another edit.
type Watcher struct {
	loader *Loader
	apply  ApplyFunc
	log    *slog.Logger
	// Debounce groups the events of one edit (editors write in several steps).
	Debounce time.Duration
	// Poll re-checks the directory's listing, sizes and times, for file systems
	// that do not deliver events, and retries a rejected config (at most once per
	// Poll after any load).
	Poll time.Duration

	mu      sync.Mutex
	current *Snapshot
	lastErr error
	// loggedErr is the text of the rejection last logged at error level; the same
	// rejection again (a retry, an edit that fixes nothing) is logged at debug level.
	loggedErr string
	version   uint64
	stamp     uint64

	versionGauge prometheus.Gauge
	reloads      *prometheus.CounterVec
	lastSuccess  prometheus.Gauge
	lastErrors   prometheus.Gauge
	watchErrors  prometheus.Counter
}

// NewWatcher returns a watcher; reg receives the sluice_config_* metrics.
func NewWatcher(l *Loader, apply ApplyFunc, log *slog.Logger, reg prometheus.Registerer) (*Watcher, error) {
	w := &Watcher{
		loader: l, apply: apply, log: log,
		Debounce: 200 * time.Millisecond, Poll: 10 * time.Second,
		versionGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_config_version", Help: "Version of the running config; it increases by one per applied reload.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_config_reloads_total", Help: "Config loads, by result (success, failure); each retry of a rejected config counts.",
		}, []string{"result"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_config_last_reload_success_timestamp_seconds", Help: "When a config was last applied.",
		}),
		lastErrors: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_config_errors", Help: "Errors found by the last config load (0 when it was applied).",
		}),
		watchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_config_watch_errors_total",
			Help: "Errors watching the config directory (inotify); the directory is still polled, so changes are seen later, not lost.",
		}),
	}
	w.reloads.WithLabelValues("success")
	w.reloads.WithLabelValues("failure")
	if reg != nil {
		for _, c := range []prometheus.Collector{w.versionGauge, w.reloads, w.lastSuccess, w.lastErrors, w.watchErrors} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register config metrics: %w", err)
			}
		}
	}
	return w, nil
}

// Current returns the running config.
func (w *Watcher) Current() *Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// maxLoggedErrors is how many errors of one rejected load are logged, one line
// each: a generated file wrong throughout would otherwise write thousands of lines
// at every retry. The sluice_config_errors gauge still counts them all.
const maxLoggedErrors = 50

// LastError returns the error of the last failed reload, nil after a success.
func (w *Watcher) LastError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

// Reload loads and applies the config now.
func (w *Watcher) Reload(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stamp = dirStamp(w.loader.Dir)
	s, err := w.loader.Load()
	if err == nil && w.current != nil && s.Hash == w.current.Hash {
		// An event without a change, or a bad edit reverted. The latter is a load
		// that succeeded: say so, or an operator sees the rejection last.
		if w.lastErr != nil {
			w.reloads.WithLabelValues("success").Inc()
			w.log.Info("config errors resolved; the running config is unchanged", "version", w.current.Version, "hash", w.current.Hash)
		}
		w.lastErr = nil
		w.loggedErr = ""
		w.lastErrors.Set(0)
		return nil
	}
	if err == nil {
		s.Version = w.version + 1
		err = w.apply(ctx, s)
	}
	if err != nil {
		n := len(Errors(err))
		w.reloads.WithLabelValues("failure").Inc()
		w.lastErrors.Set(float64(n))
		w.lastErr = err
		level := slog.LevelError
		if msg := err.Error(); msg == w.loggedErr {
			level = slog.LevelDebug // the same rejection again: logged once at error level
		} else {
			w.loggedErr = msg
		}
		msg := "config rejected; the last good config keeps serving"
		if w.current == nil {
			msg = "config rejected" // at start: there is no good config yet
		}
		errs := Errors(err)
		for _, e := range errs[:min(len(errs), maxLoggedErrors)] {
			w.log.Log(ctx, level, msg, "error", e.Error())
		}
		if more := len(errs) - maxLoggedErrors; more > 0 {
			w.log.Log(ctx, level, msg, "more_errors", more, "hint", "sluice validate --config DIR lists them all")
		}
		return err
	}
	w.version = s.Version
	w.current = s
	w.lastErr = nil
	w.loggedErr = ""
	w.reloads.WithLabelValues("success").Inc()
	w.versionGauge.Set(float64(s.Version))
	w.lastSuccess.SetToCurrentTime()
	w.lastErrors.Set(0)
	w.log.Info("config applied", "version", s.Version, "hash", s.Hash, "objects", len(s.Objects))
	return nil
}

// Run watches the directory until ctx ends. Without a directory it only waits.
func (w *Watcher) Run(ctx context.Context) error {
	if w.loader.Dir == "" {
		<-ctx.Done()
		return nil
	}
	// Without a watch (inotify's limits are per user and often reached on busy
	// nodes) the poll below still sees every change, only later; each poll tries
	// to watch again.
	var fw *fsnotify.Watcher
	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	defer func() {
		if fw != nil {
			fw.Close()
		}
	}()
	startWatch := func(first bool) {
		var err error
		if fw, err = w.watch(); err != nil {
			w.watchErrors.Inc()
			if first {
				w.log.Warn("cannot watch the config directory; polling it instead until it can be", "dir", w.loader.Dir, "every", w.Poll, "err", err)
			}
			return
		}
		events, watchErrs = fw.Events, fw.Errors
		if !first {
			w.log.Info("watching the config directory again", "dir", w.loader.Dir)
		}
	}
	startWatch(true)
	poll := time.NewTicker(w.Poll)
	defer poll.Stop()
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			name := filepath.Base(ev.Name)
			if IsConfigFile(name) || name == "..data" {
				debounce = time.After(w.Debounce)
			}
		case err, ok := <-watchErrs:
			if !ok {
				watchErrs = nil
				continue
			}
			w.watchErrors.Inc()
			w.log.Warn("config watch error; polling continues", "dir", w.loader.Dir, "err", err)
		case <-poll.C:
			if fw == nil {
				startWatch(false)
			}
			w.mu.Lock()
			changed := dirStamp(w.loader.Dir) != w.stamp
			// A rejected config is retried even with the directory unchanged: what
			// rejected it may have been outside the directory (a list file).
			retry := w.lastErr != nil
			w.mu.Unlock()
			if changed || (retry && debounce == nil) {
				debounce = time.After(0)
			}
		case <-debounce:
			debounce = nil
			_ = w.Reload(ctx) // logged and counted by Reload
			// The next poll, and so the next retry of a rejected config, comes a full
			// Poll after this load.
			poll.Reset(w.Poll)
		}
	}
}

// watch starts watching the config directory.
func (w *Watcher) watch() (*fsnotify.Watcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch config: %w", err)
	}
	if err := fw.Add(w.loader.Dir); err != nil {
		fw.Close()
		return nil, fmt.Errorf("watch %s: %w", w.loader.Dir, err)
	}
	return fw, nil
}

// dirStamp summarises the names, sizes and times of a directory's config files.
func dirStamp(dir string) uint64 {
	h := fnv.New64a()
	entries, err := os.ReadDir(dir)
	if err != nil {
		fmt.Fprint(h, err.Error())
		return h.Sum64()
	}
	for _, e := range entries {
		if !IsConfigFile(e.Name()) {
			continue
		}
		st, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		fmt.Fprintf(h, "%s|%d|%d\n", e.Name(), st.Size(), st.ModTime().UnixNano())
	}
	return h.Sum64()
}
