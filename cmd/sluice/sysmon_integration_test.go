//go:build integration

package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicemesh/sluice/mixer/sysmon"
)

// TestIntegrationServeKeepsSysmonAwake: the built binary's serve re-executes itself,
// under the same process ID, with sysmon's setting added to GODEBUG (other settings
// kept), leaves a GODEBUG that sets schedtrace as it is, and serves either way.
func TestIntegrationServeKeepsSysmonAwake(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "sluice")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build sluice: %v\n%s", err, out)
	}
	tests := []struct {
		name    string
		godebug string // "" for none
		want    string
	}{
		{"no GODEBUG", "", sysmon.Setting},
		{"other settings", "netdns=go", "netdns=go," + sysmon.Setting},
		{"turned off by the operator", "schedtrace=0", "schedtrace=0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "serve", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0")
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "GODEBUG=") {
					cmd.Env = append(cmd.Env, kv)
				}
			}
			if tt.godebug != "" {
				cmd.Env = append(cmd.Env, "GODEBUG="+tt.godebug)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			// serve prints this once its listeners are up; the timeout kills it otherwise,
			// which ends the output.
			lines := bufio.NewScanner(stdout)
			for !strings.Contains(lines.Text(), " is serving") {
				if !lines.Scan() {
					t.Fatalf("the server ended its output without serving (%v)", ctx.Err())
				}
			}
			environ, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/environ")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, kv := range strings.Split(string(environ), "\x00") {
				if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
					got = append(got, v)
				}
			}
			if len(got) != 1 || got[0] != tt.want {
				t.Errorf("the serving process's GODEBUG = %q, want %q", got, tt.want)
			}
		})
	}
}
