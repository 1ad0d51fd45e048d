package mixer_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/sluicemesh/sluice/adapters/all"
	"github.com/sluicemesh/sluice/loadtest"
	"github.com/sluicemesh/sluice/mixer"
	"github.com/sluicemesh/sluice/mixer/config"
)

func bookinfoCalls(n int, seed uint64) []loadtest.Call {
	tr := loadtest.NewTraffic(loadtest.Bookinfo(), seed)
	calls := make([]loadtest.Call, n)
	for i := range calls {
		calls[i] = tr.Next()
	}
	return calls
}

func send(t *testing.T, h *harness, calls []loadtest.Call) {
	t.Helper()
	fleet := loadtest.NewFleet(h.conn())
	if err := fleet.Send(context.Background(), calls); err != nil {
		t.Fatal(err)
	}
	if err := fleet.Close(); err != nil {
		t.Fatal(err)
	}
}

const pathMetric = `
apiVersion: sluice.dev/v1alpha1
kind: Instance
metadata: {name: pathcount}
spec:
  template: metric
  params:
    value: "1"
    dimensions:
      path: request.url_path
---
apiVersion: sluice.dev/v1alpha1
kind: Handler
metadata: {name: prom}
spec:
  adapter: prometheus
  params:
    metrics:
    - {instance: pathcount, name: requests_by_path_total, kind: COUNTER, maxSeries: MAXSERIES}
---
apiVersion: sluice.dev/v1alpha1
kind: Rule
metadata: {name: paths}
spec:
  match: context.protocol == "http"
  actions: [{handler: prom, instances: [pathcount]}]
`

func TestReload(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, nil)
	send(t, h, bookinfoCalls(50, 1))
	f := h.waitProcessed(100)
	before := f.Sum("istio_requests_total", nil)

	// A new file adds a metric; the Istio counters survive the reload.
	writeFile(t, dir, "paths.yaml", strings.ReplaceAll(pathMetric, "MAXSERIES", "1000"))
	h.waitMetric("config version 2", func(f loadtest.Families) bool { return f.Sum("sluice_config_version", nil) == 2 })
	send(t, h, bookinfoCalls(50, 2))
	f = h.waitProcessed(200)
	if got := f.Sum("istio_requests_total", nil); got <= before {
		t.Errorf("istio_requests_total went from %v to %v across a reload", before, got)
	}
	if f.Sum("requests_by_path_total", nil) == 0 {
		t.Error("the reloaded metric counts nothing")
	}

	// A bad edit is rejected, counted, and the last good config keeps serving.
	writeFile(t, dir, "broken.yaml", "apiVersion: sluice.dev/v1alpha1\nkind: Rule\nmetadata: {name: bad}\nspec:\n  match: request.nope == 1\n  actions: [{handler: prom, instances: [pathcount]}]\n")
	h.waitMetric("a failed reload", func(f loadtest.Families) bool {
		return f.Sum("sluice_config_reloads_total", map[string]string{"result": "failure"}) == 1
	})
	send(t, h, bookinfoCalls(50, 3))
	f = h.waitProcessed(300)
	if v := f.Sum("sluice_config_version", nil); v != 2 {
		t.Errorf("config version %v after a bad edit, want 2", v)
	}
	if f.Sum("sluice_config_errors", nil) != 1 {
		t.Errorf("sluice_config_errors = %v, want 1", f.Sum("sluice_config_errors", nil))
	}
	body := get(t, h.url+"/api/config")
	if !strings.Contains(body, "broken.yaml:5: match: ") {
		t.Errorf("/api/config does not show the error with file:line:\n%.2000s", body)
	}

	// Removing the bad file restores a clean state; a file renamed into the
	// directory is picked up like a written one.
	if err := os.Remove(filepath.Join(dir, "broken.yaml")); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "wl.yaml")
	if err := os.WriteFile(other, []byte(loadtest.Bookinfo().WorkloadEntries()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, filepath.Join(dir, "wl.yaml")); err != nil {
		t.Fatal(err)
	}
	h.waitMetric("config version 3", func(f loadtest.Families) bool { return f.Sum("sluice_config_version", nil) == 3 })
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestBadConfigAtStartup(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "bad.yaml", "apiVersion: sluice.dev/v1alpha1\nkind: Instance\nmetadata: {name: x}\nspec:\n  template: metric\n  params: {value: request.path}\n")
	_, err := mixer.New(context.Background(), mixer.Options{ConfigDir: dir, GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		Adapters: all.Registry(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil {
		t.Fatal("started on a bad config")
	}
	errs := config.Errors(err)
	if len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), filepath.Join(dir, "bad.yaml")+":6: value:") {
		t.Errorf("errors = %v", err)
	}
}

// TestShutdownFlushes stops the server right after the streams close: every entry it
// accepted must be exported (written by stdio) or counted as dropped.
func TestShutdownFlushes(t *testing.T) {
	dir := t.TempDir()
	logFile := filepath.Join(t.TempDir(), "access.jsonl")
	writeFile(t, dir, "telemetry.yaml", strings.ReplaceAll(telemetryConfig, "LOGFILE", logFile))
	h := start(t, dir, func(o *mixer.Options) { o.QueueSize = 4096 })
	calls := bookinfoCalls(3000, 7)
	httpEntries := 0
	for _, c := range calls {
		if c.Protocol != "tcp" {
			httpEntries += 2
		}
	}
	send(t, h, calls)
	f := h.scrape()
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	lines := readJSONLines(t, logFile)
	dropped := f.Sum("sluice_entries_dropped_total", nil) + f.Sum("sluice_instances_dropped_total", nil)
	if dropped != 0 || len(lines) != httpEntries {
		t.Errorf("%d lines written and %v dropped (seen before stop), want all %d written", len(lines), dropped, httpEntries)
	}
}

func TestBadInputOverTheWire(t *testing.T) {
	h := start(t, t.TempDir(), func(o *mixer.Options) { o.MaxRecvMsgSize = 64 << 10 })
	conn := h.conn()
	ctx := context.Background()
	good, err := loadtest.Encode(bookinfoCalls(20, 3), 100)
	if err != nil {
		t.Fatal(err)
	}
	var first []byte
	for _, msgs := range good {
		first = msgs[0]
		break
	}
	withoutIdentifier := func() []byte {
		var m alsv3.StreamAccessLogsMessage
		if err := proto.Unmarshal(first, &m); err != nil {
			t.Fatal(err)
		}
		m.Identifier = nil
		b, _ := proto.Marshal(&m)
		return b
	}()
	huge := func() []byte {
		m := &alsv3.StreamAccessLogsMessage{
			Identifier: loadtest.Identifier(loadtest.Bookinfo().Workloads[0]),
			LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{
				LogEntry: []*alsdata.HTTPAccessLogEntry{{Request: &alsdata.HTTPRequestProperties{Path: strings.Repeat("x", 100<<10)}}},
			}},
		}
		b, _ := proto.Marshal(m)
		return b
	}()
	tests := []struct {
		name   string
		msgs   [][]byte
		code   codes.Code
		reason string
	}{
		{"garbage", [][]byte{{0xff, 0xff, 0xff}}, codes.InvalidArgument, "malformed"},
		{"truncated", [][]byte{first[:len(first)-3]}, codes.InvalidArgument, "malformed"},
		{"no identifier", [][]byte{withoutIdentifier}, codes.InvalidArgument, "no_identifier"},
		{"too large", [][]byte{huge}, codes.ResourceExhausted, "too_large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := loadtest.SendRaw(ctx, conn, tt.msgs)
			if status.Code(err) != tt.code {
				t.Errorf("stream ended with %v, want %v", err, tt.code)
			}
			h.waitMetric("rejection counted", func(f loadtest.Families) bool {
				return f.Sum("sluice_messages_rejected_total", map[string]string{"reason": tt.reason}) >= 1
			})
		})
	}
	// Other streams are unaffected, before and after.
	send(t, h, bookinfoCalls(20, 4))
	f := h.waitMetric("good traffic", func(f loadtest.Families) bool { return f.Sum("sluice_entries_processed_total", nil) >= 40 })
	if f.Sum("sluice_entries_dropped_total", map[string]string{"reason": "no_identifier"}) == 0 {
		t.Error("the entries of the message without identifier are not counted as dropped")
	}
}

// TestCardinalityBound sends 100,000 distinct paths in one go: the path metric keeps
// its bound, folds the rest into one overflow series, counts what it folded, and
// the Istio metrics (a different label group) are not affected.
func TestCardinalityBound(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "paths.yaml", strings.ReplaceAll(pathMetric, "MAXSERIES", "1000"))
	h := start(t, dir, nil)
	const n = 100_000
	msgs := distinctPathMessages(t, n, 1000)
	if err := loadtest.SendRaw(context.Background(), h.conn(), msgs); err != nil {
		t.Fatal(err)
	}
	f := h.waitProcessed(n)
	series := f.Series("requests_by_path_total", nil)
	if len(series) > 1001 {
		t.Errorf("%d series, want at most 1000 and the overflow series", len(series))
	}
	over := f.Series("requests_by_path_total", map[string]string{"path": "overflow"})
	if len(over) != 1 {
		t.Fatalf("no overflow series among %d", len(series))
	}
	folded := f.Sum("sluice_series_overflow_total", map[string]string{"metric": "requests_by_path_total"})
	if folded == 0 || folded != over[0].GetCounter().GetValue() {
		t.Errorf("overflow series holds %v, sluice_series_overflow_total says %v", over[0].GetCounter().GetValue(), folded)
	}
	if got := f.Sum("requests_by_path_total", nil); got != n {
		t.Errorf("path counter sums to %v, want every entry (%d): nothing may be lost", got, n)
	}
	if f.Sum("sluice_series", map[string]string{"metric": "requests_by_path_total"}) > 1000 {
		t.Errorf("sluice_series = %v", f.Sum("sluice_series", map[string]string{"metric": "requests_by_path_total"}))
	}
	if f.Sum("sluice_series_overflow_total", map[string]string{"metric": "istio_requests_total"}) != 0 {
		t.Error("the Istio metrics overflowed")
	}
}

// distinctPathMessages encodes n entries of one sidecar, each with its own path, in
// messages of batch entries. It patches the path into one encoded template: encoding
// each entry would cost the test more than the server spends on it.
func distinctPathMessages(t *testing.T, n, batch int) [][]byte {
	t.Helper()
	mesh := loadtest.Bookinfo()
	c := bookinfoCalls(1, 1)[0]
	c.Protocol, c.Route = "http", &mesh.Routes[0]
	c.Source, c.Dest = mesh.Routes[0].From, mesh.Routes[0].To[0]
	c.Path = "/item/000000000"
	entry, err := proto.Marshal(c.HTTPEntry(true))
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(entry, []byte("/item/000000000")) + len("/item/")
	ident, err := proto.Marshal(loadtest.Identifier(c.Source))
	if err != nil {
		t.Fatal(err)
	}
	var msgs [][]byte
	for i := 0; i < n; i += batch {
		var entries []byte
		for j := i; j < i+batch && j < n; j++ {
			copy(entry[at:], fmt.Sprintf("%09d", j))
			entries = protowire.AppendTag(entries, 1, protowire.BytesType)
			entries = protowire.AppendBytes(entries, entry)
		}
		var m []byte
		if i == 0 {
			m = protowire.AppendTag(m, 1, protowire.BytesType)
			m = protowire.AppendBytes(m, ident)
		}
		m = protowire.AppendTag(m, 2, protowire.BytesType)
		m = protowire.AppendBytes(m, entries)
		msgs = append(msgs, m)
	}
	return msgs
}

// TestInvalidUTF8 sends a path that is not UTF-8, as Envoy's C++ encoder can: the
// entry is counted, its label sanitised, and the scrape keeps working.
func TestInvalidUTF8(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "paths.yaml", strings.ReplaceAll(pathMetric, "MAXSERIES", "1000"))
	h := start(t, dir, nil)
	w := loadtest.Bookinfo().Workloads[0]
	m := &alsv3.StreamAccessLogsMessage{
		Identifier: loadtest.Identifier(w),
		LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{
			LogEntry: []*alsdata.HTTPAccessLogEntry{{
				CommonProperties: &alsdata.AccessLogCommon{UpstreamCluster: "outbound|80||x.default.svc.cluster.local"},
				Request:          &alsdata.HTTPRequestProperties{Path: "/bad-PLACEHOLDER"},
			}},
		}},
	}
	raw, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	raw = bytes.Replace(raw, []byte("PLACEHOLDER"), []byte("\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5"), 1)
	if err := loadtest.SendRaw(context.Background(), h.conn(), [][]byte{raw}); err != nil {
		t.Fatal(err)
	}
	f := h.waitProcessed(1)
	if f.Sum("sluice_labels_sanitized_total", nil) != 1 {
		t.Errorf("sluice_labels_sanitized_total = %v, want 1", f.Sum("sluice_labels_sanitized_total", nil))
	}
	if got := f.Series("requests_by_path_total", map[string]string{"path": "/bad-\uFFFD"}); len(got) != 1 {
		t.Errorf("sanitised series not found: %v", f["requests_by_path_total"])
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t)
	serverCert, serverKey := issue(t, ca, caKey, "sluice", true)
	clientCert, clientKey := issue(t, ca, caKey, "envoy", false)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", pemCert(ca.Raw))
	h := start(t, "", func(o *mixer.Options) {
		o.GRPCTLS.Cert, o.GRPCTLS.Key, o.GRPCTLS.ClientCA = write("s.pem", serverCert), write("s.key", serverKey), caFile
		o.AdminTLS.Cert, o.AdminTLS.Key = o.GRPCTLS.Cert, o.GRPCTLS.Key
	})
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	pair, err := tls.X509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(certs []tls.Certificate) error {
		conn, err := grpc.NewClient(h.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: pool, ServerName: "sluice", Certificates: certs,
		})))
		if err != nil {
			return err
		}
		defer conn.Close()
		fleet := loadtest.NewFleet(conn)
		if err := fleet.Send(context.Background(), bookinfoCalls(5, 9)); err != nil {
			return err
		}
		return fleet.Close()
	}
	if err := dial([]tls.Certificate{pair}); err != nil {
		t.Errorf("a client with a certificate was refused: %v", err)
	}
	if err := dial(nil); err == nil {
		t.Error("a client without a certificate was accepted")
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "sluice"}}}
	resp, err := client.Get("https://" + h.AdminAddr().String() + "/healthz")
	if err != nil {
		t.Fatalf("admin over TLS: %v", err)
	}
	resp.Body.Close()
	if resp, err := http.Get("http://" + h.AdminAddr().String() + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("the admin port answered plain HTTP")
		}
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}

func issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{name},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemCert(der), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
