//go:build integration

package mixer_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sluicemesh/sluice/loadtest"
)

// TestIntegrationPrometheusScrapes runs the real Prometheus server against Sluice and
// answers, with PromQL, the questions Istio's dashboards ask.
func TestIntegrationPrometheusScrapes(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is not installed: run `make deps` (Debian package prometheus)")
	}
	h := start(t, t.TempDir(), nil)
	send(t, h, fixedCalls(loadtest.Bookinfo()))
	h.waitProcessed(22)

	dir := t.TempDir()
	cfg := fmt.Sprintf("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n- job_name: sluice\n  static_configs: [{targets: [%q]}]\n",
		h.AdminAddr().String())
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr, "--log.level=warn")
	if testing.Verbose() {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})

	query := func(q string) (float64, bool) {
		resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		var r struct {
			Status string `json:"status"`
			Data   struct {
				Result []struct {
					Value [2]any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || r.Status != "success" || len(r.Data.Result) != 1 {
			return 0, false
		}
		s, _ := r.Data.Result[0].Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		return v, err == nil
	}
	// The first sample takes several seconds: poll, don't sleep.
	waitQuery := func(q string, want float64) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			v, ok := query(q)
			if ok && v == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s = %v (ok %v), want %v", q, v, ok, want)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	waitQuery(`up{job="sluice"}`, 1)
	waitQuery(`sum(istio_requests_total)`, 18)
	waitQuery(`sum(istio_requests_total{reporter="destination",destination_workload="details-v1",response_code="503"})`, 1)
	waitQuery(`sum(istio_request_duration_milliseconds_count{reporter="source"})`, 9)
	waitQuery(`sum(istio_request_duration_milliseconds_bucket{reporter="source",destination_workload="details-v1",le="25"})`, 4)
	waitQuery(`sum(istio_tcp_sent_bytes_total{reporter="destination"})`, 300)
	waitQuery(`count(count by (source_workload, destination_service) (istio_requests_total{connection_security_policy="mutual_tls"}))`, 2)
	waitQuery(`sluice_config_version`, 1)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
