// Command sluice-loadtest drives Sluice with a simulated Envoy fleet and reports
// what it costs: `report` measures the report path against a plain protobuf decode.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sluicemesh/sluice/loadtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{Use: "sluice-loadtest", Short: "Load tests and benchmark reports for Sluice", SilenceUsage: true}
	root.AddCommand(newReport())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-loadtest:", err)
		os.Exit(1)
	}
}

func newReport() *cobra.Command {
	o := loadtest.ReportOptions{Out: os.Stdout}
	cmd := &cobra.Command{
		Use:   "report --server bin/sluice",
		Short: "Server CPU per access-log entry, against proto.Unmarshal of the same batches",
		Long: `Starts the given sluice binary on free loopback ports with its default config,
streams pre-encoded bookinfo access logs to it (so that the client's encoding costs
nothing), and reads the server process's CPU time from /proc before and after. It
then decodes the same messages with proto.Unmarshal in this process and prints both
costs per entry, their ratio, and allocations per entry.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := loadtest.RunReport(cmd.Context(), o)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Server, "server", "bin/sluice", "sluice binary to measure")
	f.IntVar(&o.Entries, "entries", 200000, "access-log entries per run")
	f.IntSliceVar(&o.Batches, "batch", []int{10, 100, 1000}, "entries per message, one row each")
	f.IntVar(&o.Repeat, "repeat", 3, "runs per batch size (the median is reported)")
	f.IntVar(&o.Streams, "streams", 16, "concurrent access-log streams")
	f.StringVar(&o.Profile, "profile", "", "write a CPU profile of the server, taken while it works, to this file")
	return cmd
}
