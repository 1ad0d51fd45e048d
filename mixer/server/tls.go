package server

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"
)

// TLSFiles name a listener's certificate, key and, optionally, the CA bundle that
// client certificates must chain to (which makes client certificates required).
type TLSFiles struct {
	Cert, Key, ClientCA string
}

// Enabled reports whether a certificate is configured.
func (f TLSFiles) Enabled() bool { return f.Cert != "" || f.Key != "" }

// TLSConfig loads the files. The certificate is re-read when its files change, so
// that rotated certificates are served without a restart.
func (f TLSFiles) TLSConfig() (*tls.Config, error) {
	if f.Cert == "" || f.Key == "" {
		return nil, fmt.Errorf("TLS needs both a certificate and a key file")
	}
	r := &certReloader{certFile: f.Cert, keyFile: f.Key, checked: time.Now()}
	if _, err := r.load(); err != nil {
		return nil, err
	}
	if st, err := os.Stat(f.Cert); err == nil {
		r.modTime = st.ModTime()
	}
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.get() },
		NextProtos:     []string{"h2", "http/1.1"},
	}
	if f.ClientCA != "" {
		pem, err := os.ReadFile(f.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("read client CA %s: %w", f.ClientCA, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA %s holds no PEM certificate", f.ClientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

type certReloader struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	modTime time.Time
	checked time.Time
}

func (r *certReloader) load() (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair %s, %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert = &c
	return r.cert, nil
}

// get returns the certificate, re-reading the files at most every few seconds when
// their modification time changed. A failed re-read keeps serving the old one.
func (r *certReloader) get() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < 5*time.Second {
		return r.cert, nil
	}
	r.checked = time.Now()
	st, err := os.Stat(r.certFile)
	if err != nil || !st.ModTime().After(r.modTime) {
		return r.cert, nil
	}
	prev := r.cert
	if _, err := r.load(); err != nil {
		r.cert = prev
		return r.cert, nil
	}
	r.modTime = st.ModTime()
	return r.cert, nil
}
