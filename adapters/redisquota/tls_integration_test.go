//go:build integration

package redisquota

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/adapters/quotakit/quotatest"
	"github.com/sluicemesh/sluice/templates/quota"
)

// TestIntegrationTLS: a rediss:// URL's decisions go over TLS, to Redis's TLS
// port, with the URL's password and database.
func TestIntegrationTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeSelfSigned(t, dir)
	tlsAddr := freeAddr(t)
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)
	s := startRedis(t, "--requirepass", "s3cret", "--tls-port", tlsPort, "--tls-cert-file", cert,
		"--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no")
	h := newTestHandler(t, "", func(p *Params) {
		p.RedisServerURL = "rediss://:s3cret@" + tlsAddr + "/3?skip_verify=true"
		p.FailPolicy = "closed"
	})
	l := quota.Limit{Requests: 1, Window: time.Minute}
	now := quotatest.Base()
	if d := quotatest.AllowOne(t, h, now, quota.Request{Key: "tls", Limit: l, Hits: 1}); !d.Allowed || d.ByPolicy {
		t.Errorf("first hit over TLS: %+v", d)
	}
	if d := quotatest.AllowOne(t, h, now, quota.Request{Key: "tls", Limit: l, Hits: 1}); d.Allowed || d.ByPolicy {
		t.Errorf("second hit over TLS: %+v, want Redis's denial", d)
	}
	admin := redis.NewClient(&redis.Options{Addr: s.addr, Password: "s3cret", DB: 3})
	defer admin.Close()
	if n, err := admin.DBSize(context.Background()).Result(); err != nil || n != 1 {
		t.Errorf("db 3 holds %d keys (%v), want the one counted over TLS", n, err)
	}
	if n := h.stats.Errors(quotakit.ReasonError) + h.stats.Errors(quotakit.ReasonTimeout); n != 0 {
		t.Errorf("%d failures counted", n)
	}
}

// writeSelfSigned writes a self-signed certificate for 127.0.0.1 and its key, as
// PEM files in dir.
func writeSelfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "redis.crt"), filepath.Join(dir, "redis.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
