package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/sluicemesh/sluice/routing/bootstrap"
)

func newEnvoyBootstrap() *cobra.Command {
	var (
		opts   bootstrap.Options
		labels []string
		format string
	)
	cmd := &cobra.Command{
		Use:   "envoy-bootstrap --node ID",
		Short: "Print the bootstrap of an Envoy that takes its configuration from Sluice over ADS",
		Long: `Print an Envoy bootstrap (v3) for a sidecar configured by Sluice: ADS to --xds-address,
listeners and clusters over ADS. Use Istio's node IDs, sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local,
so that Sluice builds the inbound listener of the workload at IP; the pod and namespace also
become the node metadata (NAME, NAMESPACE) that identifies the workload in access logs.

  sluice envoy-bootstrap --node sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local \
    --xds-address sluice.sluice-system.svc.cluster.local:15010 --label app=reviews --label version=v1 > envoy.yaml
  envoy -c envoy.yaml`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.NodeID == "" {
				return errors.New("--node ID is required")
			}
			opts.Labels = map[string]string{}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return fmt.Errorf("--label %q: want KEY=VALUE", l)
				}
				opts.Labels[k] = v
			}
			b, err := bootstrap.Build(opts)
			if err != nil {
				return err
			}
			js, err := protojson.Marshal(b)
			if err != nil {
				return fmt.Errorf("encode bootstrap: %w", err)
			}
			var out bytes.Buffer
			switch format {
			case "json":
				// protojson's spacing is deliberately unstable; re-indent for people.
				if err := json.Indent(&out, js, "", "  "); err != nil {
					return fmt.Errorf("encode bootstrap: %w", err)
				}
				out.WriteByte('\n')
			case "yaml":
				var v any
				if err := yaml.Unmarshal(js, &v); err != nil {
					return fmt.Errorf("encode bootstrap: %w", err)
				}
				enc := yaml.NewEncoder(&out)
				enc.SetIndent(2)
				if err := enc.Encode(v); err != nil {
					return fmt.Errorf("encode bootstrap: %w", err)
				}
			default:
				return fmt.Errorf("--format must be yaml or json, not %q", format)
			}
			_, err = cmd.OutOrStdout().Write(out.Bytes())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.NodeID, "node", "", "Envoy node ID (sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local)")
	f.StringVar(&opts.XDSAddress, "xds-address", "localhost:15010", "HOST:PORT of Sluice's xDS port as the Envoy reaches it")
	f.BoolVar(&opts.Delta, "delta", false, "use incremental (delta) xDS instead of state of the world")
	f.Uint32Var(&opts.AdminPort, "admin-port", 15000, "Envoy admin port (on 127.0.0.1)")
	f.StringVar(&opts.Workload, "workload", "", "workload name (node metadata WORKLOAD_NAME)")
	f.StringArrayVar(&labels, "label", nil, "workload label KEY=VALUE (node metadata LABELS); repeatable")
	f.StringVar(&format, "format", "yaml", "output format: yaml or json")
	return cmd
}
