//go:build integration

package redisquota

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicemesh/sluice/adapters/adaptertest"
	"github.com/sluicemesh/sluice/adapters/quotakit"
	"github.com/sluicemesh/sluice/adapters/quotakit/quotatest"
	"github.com/sluicemesh/sluice/templates/quota"
)

// TestIntegrationTLS: a rediss:// URL's decisions go over TLS, to Redis's TLS
// port, with the URL's password, database and client name; a TLS connection
// that Redis closed while it idled is replaced before use, as a plain one is.
func TestIntegrationTLS(t *testing.T) {
	dir := t.TempDir()
	certPEM, keyPEM := adaptertest.SelfSigned(t)
	cert, key := filepath.Join(dir, "redis.crt"), filepath.Join(dir, "redis.key")
	for file, b := range map[string][]byte{cert: certPEM, key: keyPEM} {
		if err := os.WriteFile(file, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tlsAddr := freeAddr(t)
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)
	s := startRedis(t, "--requirepass", "s3cret", "--tls-port", tlsPort, "--tls-cert-file", cert,
		"--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no")
	h := newTestHandler(t, "", func(p *Params) {
		p.RedisServerURL = "rediss://:s3cret@" + tlsAddr + "/3?skip_verify=true&client_name=sluice-tls"
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
	// Every connection of the handler's, the hot path's included, carries the
	// URL's client name.
	connectionsBefore := received(t, admin)
	list, err := admin.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	var named, others int
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		switch {
		case strings.Contains(line, " name=sluice-tls "):
			named++
		case !strings.Contains(line, " cmd=client|list "):
			others++
		}
	}
	if named == 0 || others != 0 {
		t.Errorf("%d connections named sluice-tls and %d others, want all the handler's named:\n%s", named, others, list)
	}
	// An idle TLS connection that Redis did not close is kept: nothing the TLS
	// session sent (its tickets) is taken for a close.
	time.Sleep(slotIdle + 100*time.Millisecond)
	if d := quotatest.AllowOne(t, h, now, quota.Request{Key: "tls-idle", Limit: l, Hits: 1}); !d.Allowed || d.ByPolicy {
		t.Errorf("after an idle second over TLS: %+v", d)
	}
	if n := received(t, admin); n != connectionsBefore {
		t.Errorf("an idle TLS connection was replaced: Redis received %d connections, %d before", n, connectionsBefore)
	}
	if err := admin.Do(context.Background(), "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(slotIdle + 100*time.Millisecond)
	if d := quotatest.AllowOne(t, h, now, quota.Request{Key: "tls-after-idle", Limit: l, Hits: 1}); !d.Allowed || d.ByPolicy {
		t.Errorf("after an idle TLS connection was killed: %+v", d)
	}
	if n := h.stats.Errors(quotakit.ReasonError) + h.stats.Errors(quotakit.ReasonTimeout); n != 0 {
		t.Errorf("%d failures counted", n)
	}
}

// received is Redis's count of the connections it has accepted, this one's included.
func received(t *testing.T, c *redis.Client) int {
	t.Helper()
	info, err := c.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "total_connections_received:"); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no total_connections_received in INFO stats:\n%s", info)
	return 0
}
