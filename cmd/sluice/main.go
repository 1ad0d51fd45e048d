// Command sluice is Sluice's server and CLI: serve, validate, config defaults, version.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sluicemesh/sluice/adapters/all"
	"github.com/sluicemesh/sluice/mixer/attribute"
	"github.com/sluicemesh/sluice/mixer/config"
	"github.com/sluicemesh/sluice/mixer/expr"
	"github.com/sluicemesh/sluice/mixer/sysmon"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = ""

func main() {
	if servesFrom(os.Args) {
		// Before anything starts: the process is replaced, and comes back here with
		// the setting in its environment.
		if err := sysmon.Reexec(os.Args); err != nil {
			fmt.Fprintln(os.Stderr, "sluice: serving without the runtime setting:", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		fmt.Fprintln(os.Stderr, "sluice:", err)
		os.Exit(1)
	}
}

// servesFrom reports whether args run the server: its first argument that is not
// a flag is serve. The server runs with the Go runtime's sysmon kept awake (package
// sysmon); the CLI's other commands are short-lived and need not re-execute.
func servesFrom(args []string) bool {
	for _, a := range args[1:] {
		if !strings.HasPrefix(a, "-") {
			return a == "serve"
		}
	}
	return false
}

// exitError ends the process with a status after the command printed its own output.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "sluice",
		Short:         "Sluice: telemetry and policy mixer for Envoy meshes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServe(), newValidate(), newConfigCmd(), newVersion(), newEnvoyBootstrap())
	return root
}

func newValidate() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "validate --config DIR",
		Short: "Check a config directory; print every error as file:line: reason",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return errors.New("--config DIR is required")
			}
			s, err := load(dir)
			if err != nil {
				for _, e := range config.Errors(err) {
					fmt.Fprintln(cmd.OutOrStdout(), e.Error())
				}
				return exitError(1)
			}
			user := 0
			for _, o := range s.Objects {
				if !o.Default {
					user++
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: OK (%d objects, %d of them from the directory)\n", dir, len(s.Objects), user)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "config", "", "config directory to check")
	return cmd
}

func load(dir string) (*config.Snapshot, error) {
	comp, err := expr.NewCompiler(attribute.NewVocabulary())
	if err != nil {
		return nil, err
	}
	l := &config.Loader{Dir: dir, Adapters: all.Registry(), Compiler: comp, Validators: routingValidators(), Preflight: true}
	return l.Load()
}

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Inspect config"}
	cmd.AddCommand(&cobra.Command{
		Use:   "defaults",
		Short: "Print the embedded default config",
		RunE: func(cmd *cobra.Command, _ []string) error {
			fsys := config.Defaults()
			entries, err := fs.ReadDir(fsys, ".")
			if err != nil {
				return err
			}
			for i, e := range entries {
				data, err := fs.ReadFile(fsys, e.Name())
				if err != nil {
					return err
				}
				if i > 0 {
					fmt.Fprintln(cmd.OutOrStdout(), "---")
				}
				fmt.Fprintf(cmd.OutOrStdout(), "# %s\n%s", e.Name(), data)
			}
			return nil
		},
	})
	return cmd
}

func newVersion() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), versionString())
		},
	}
}

func versionString() string {
	v := version
	info, ok := debug.ReadBuildInfo()
	if v == "" && ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	if v == "" {
		v = "dev"
	}
	goVersion := ""
	if ok {
		goVersion = info.GoVersion
	}
	return strings.TrimSpace(fmt.Sprintf("sluice %s %s", v, goVersion))
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", format)
}
