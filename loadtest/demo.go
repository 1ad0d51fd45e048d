package loadtest

import (
	"context"
	"fmt"
	"log/slog"
	"testing/fstest"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluicemesh/sluice/mixer/config"
)

// DemoLayer is a config layer with the bookinfo mesh's WorkloadEntry objects.
func DemoLayer() config.Layer {
	return config.Layer{
		Name: "embedded:demo",
		FS:   fstest.MapFS{"bookinfo-workloads.yaml": {Data: []byte(Bookinfo().WorkloadEntries())}},
	}
}

// RunDemo streams bookinfo traffic at rate calls per second to target until ctx ends,
// logging progress every 30 seconds.
func RunDemo(ctx context.Context, target string, rate float64, log *slog.Logger) error {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", target, err)
	}
	defer conn.Close()
	fleet := NewFleet(conn)
	traffic := NewTraffic(Bookinfo(), uint64(time.Now().UnixNano()))
	const tick = 100 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	report := time.NewTicker(30 * time.Second)
	defer report.Stop()
	sent, carry := 0, 0.0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-report.C:
			log.Info("demo traffic", "calls_sent", sent)
		case <-t.C:
			carry += rate * tick.Seconds()
			n := int(carry)
			carry -= float64(n)
			calls := make([]Call, n)
			for i := range calls {
				calls[i] = traffic.Next()
				calls[i].Start = time.Now()
			}
			if err := fleet.Send(ctx, calls); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				// The server restarted or cut the streams: reconnect, as Envoy does.
				log.Warn("demo stream failed; reconnecting", "err", err)
				fleet = NewFleet(conn)
				continue
			}
			sent += n
		}
	}
}
