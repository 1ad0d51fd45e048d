package connlimit

import (
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluicemesh/sluice/mixer/connlimit/connlimittest"
)

// listen starts a bounded listener on loopback and dials it once.
func listen(t *testing.T, opts Options) (*Listener, net.Conn) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	l, err := New(lis, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	cc, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return l, cc
}

// TestBound: past Max a connection is closed as soon as it is accepted and
// counted; a connection closed (twice, even) gives its place back once.
func TestBound(t *testing.T) {
	l, first := listen(t, Options{Max: 2, Name: "test"})
	defer first.Close()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(l); err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	a := <-accepted
	second, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	<-accepted

	connlimittest.ExpectClosed(t, l.Addr().String())
	if got := testutil.ToFloat64(l.refused); got != 1 {
		t.Errorf("refused %v, want 1", got)
	}
	if got := l.Active(); got != 2 {
		t.Errorf("active %d, want 2", got)
	}
	if n, err := testutil.GatherAndCount(reg, "sluice_connections_active", "sluice_connections_refused_total"); err != nil || n != 2 {
		t.Errorf("gathered %d series (%v), want 2", n, err)
	}

	a.Close()
	a.Close()
	if got := l.Active(); got != 1 {
		t.Fatalf("active %d after closing one connection twice, want 1", got)
	}
	fourth, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer fourth.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("a connection under the bound again was not accepted")
	}
}

func TestNewRefusesNoBound(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if _, err := New(lis, Options{}); err == nil {
		t.Error("Max 0 accepted")
	}
}
