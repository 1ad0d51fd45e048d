package check_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemesh/sluice/adapters/all"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/check"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/dispatch"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/mixer/registry"
)

// inProcess is a check server and its dispatcher in this process, with no
// listener, for tests that apply configs themselves and call its methods.
type inProcess struct {
	comp        *expr.Compiler
	disp        *dispatch.Dispatcher
	server      *check.Server
	metrics     *prometheus.Registry // the check server's
	dispMetrics *prometheus.Registry // the dispatcher's and its handlers'
}

// newInProcess starts a dispatcher, with no config applied, and a check server
// on it; the dispatcher closes with tb.
func newInProcess(tb testing.TB) *inProcess {
	tb.Helper()
	comp, err := expr.NewCompiler(attribute.NewVocabulary())
	if err != nil {
		tb.Fatal(err)
	}
	reg := registry.New("cluster.local")
	dispMetrics := prometheus.NewRegistry()
	disp, err := dispatch.New(dispatch.Options{Registry: reg, TrustDomain: reg.TrustDomain(), Compiler: comp, Metrics: dispMetrics})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = disp.Close(context.Background()) })
	metrics := prometheus.NewRegistry()
	s, err := check.New(check.Options{Dispatcher: disp, Registry: reg, Compiler: comp, Metrics: metrics})
	if err != nil {
		tb.Fatal(err)
	}
	return &inProcess{comp: comp, disp: disp, server: s, metrics: metrics, dispMetrics: dispMetrics}
}

// load loads cfg, one config file, as a snapshot.
func (p *inProcess) load(tb testing.TB, cfg []byte) *config.Snapshot {
	tb.Helper()
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), cfg, 0o644); err != nil {
		tb.Fatal(err)
	}
	snap, err := (&config.Loader{Dir: dir, Adapters: all.Registry(), Compiler: p.comp}).Load()
	if err != nil {
		tb.Fatal(err)
	}
	return snap
}

// apply makes snap the running config.
func (p *inProcess) apply(tb testing.TB, snap *config.Snapshot) {
	tb.Helper()
	if err := p.disp.Apply(context.Background(), snap); err != nil {
		tb.Fatal(err)
	}
}
