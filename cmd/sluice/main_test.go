package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	good := "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm}\nspec: {address: 10.0.0.9}\n"
	if err := os.WriteFile(filepath.Join(dir, "good.yaml"), []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "validate", "--config", dir)
	if err != nil || !strings.Contains(out, "OK") || !strings.Contains(out, "1 of them from the directory") {
		t.Fatalf("validate a good dir: %v\n%s", err, out)
	}
	bad := "apiVersion: sluice.dev/v1alpha1\nkind: Rule\nmetadata: {name: r}\nspec:\n  match: response.code ==\n  actions: []\n---\napiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata: {name: h}\nspec: {adapter: nope}\n"
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "validate", "--config", dir)
	if code, ok := err.(exitError); !ok || code != 1 {
		t.Fatalf("validate a bad dir: err %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{filepath.Join(dir, "bad.yaml") + ":5: match:", filepath.Join(dir, "bad.yaml") + ":11: unknown adapter"}
	if len(lines) < len(want) {
		t.Fatalf("output:\n%s", out)
	}
	for _, w := range want {
		found := false
		for _, l := range lines {
			found = found || strings.HasPrefix(l, w)
		}
		if !found {
			t.Errorf("no line starting %q in:\n%s", w, out)
		}
	}
	if _, err := run(t, "validate"); err == nil {
		t.Error("validate without --config succeeded")
	}
}

// TestValidateListFiles: sluice validate reads the files list handlers name, as
// serve does when it starts them: a missing file, or a bad entry at its line, is
// reported (with the handler's position) instead of an OK that serve then refuses.
func TestValidateListFiles(t *testing.T) {
	dir, lists := t.TempDir(), t.TempDir()
	good, bad := filepath.Join(lists, "good.txt"), filepath.Join(lists, "bad.txt")
	if err := os.WriteFile(good, []byte("# callers\n10.0.0.0/8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("10.0.0.0/8\nnot-an-ip\nnor-this\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Relative to the config file's directory, not to the working directory (the
	// test's is this package's).
	relGood, err := filepath.Rel(dir, good)
	if err != nil {
		t.Fatal(err)
	}
	handler := func(file string) string {
		return "apiVersion: sluice.dev/v1alpha1\nkind: Handler\nmetadata: {name: callers, namespace: shop}\nspec:\n  adapter: list\n  params:\n    entryType: IP_ADDRESSES\n    file: " + file + "\n"
	}
	for _, tc := range []struct {
		name, file string
		want       string // a line of the output starting so; "" for OK
	}{
		{"a good file", good, ""},
		{"a path relative to the config file", relGood, ""},
		{"a missing file", filepath.Join(lists, "missing.txt"), filepath.Join(dir, "list.yaml") + ":8: handler shop/callers: params.file: "},
		{"bad entries, a line each", bad, filepath.Join(dir, "list.yaml") + ":8: handler shop/callers: params.file: " + bad + ":"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, "list.yaml"), []byte(handler(tc.file)), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := run(t, "validate", "--config", dir)
			if tc.want == "" {
				if err != nil || !strings.Contains(out, "OK") {
					t.Fatalf("validate: %v\n%s", err, out)
				}
				return
			}
			if code, ok := err.(exitError); !ok || code != 1 {
				t.Fatalf("validate: err %v\n%s", err, out)
			}
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if !strings.HasPrefix(l, tc.want) {
					t.Errorf("output line %q, want it to start %q", l, tc.want)
				}
			}
			if tc.file == bad && !strings.Contains(out, bad+":3: ") {
				t.Errorf("output %q: not every bad entry reported", out)
			}
		})
	}
	// A list file's errors come in the same run as the config's own.
	t.Run("with other errors", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(dir, "list.yaml"), []byte(handler(filepath.Join(lists, "missing.txt"))), 0o644); err != nil {
			t.Fatal(err)
		}
		rule := "apiVersion: sluice.dev/v1alpha1\nkind: Rule\nmetadata: {name: r, namespace: shop}\nspec:\n  match: request.nosuch == 1\n  actions: [{handler: callers, instances: [nope]}]\n"
		if err := os.WriteFile(filepath.Join(dir, "rule.yaml"), []byte(rule), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _ := run(t, "validate", "--config", dir)
		for _, want := range []string{filepath.Join(dir, "list.yaml") + ":8: handler shop/callers: params.file: ", filepath.Join(dir, "rule.yaml") + ":5: match: ", filepath.Join(dir, "rule.yaml") + ":6: instance \"nope\" not found"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})
}

func TestConfigDefaultsAndVersion(t *testing.T) {
	out, err := run(t, "config", "defaults")
	if err != nil || !strings.Contains(out, "istio_requests_total") || !strings.Contains(out, "kind: Rule") {
		t.Errorf("config defaults: %v\n%.300s", err, out)
	}
	out, err = run(t, "version")
	if err != nil || !strings.HasPrefix(out, "sluice ") {
		t.Errorf("version: %v %q", err, out)
	}
}

func TestServeRejectsHugeHeapFloor(t *testing.T) {
	_, err := run(t, "serve", "--gc-heap-floor-mib", "2000000", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0")
	if err == nil || !strings.Contains(err.Error(), "--gc-heap-floor-mib 2000000: at most 1048576") {
		t.Errorf("serve with a floor of 2,000,000 MiB: %v, want a refusal naming the flag", err)
	}
}

// TestServeRejectsMeaninglessFlags: a size or duration that means nothing is
// refused with the flag's name, not turned into a default.
func TestServeRejectsMeaninglessFlags(t *testing.T) {
	for _, tc := range []struct{ flag, value, want string }{
		{"--max-recv-msg-size", "0", "--max-recv-msg-size 0: must be at least 1"},
		{"--max-recv-msg-size", "-1", "--max-recv-msg-size -1: must be at least 1"},
		{"--max-concurrent-streams", "0", "--max-concurrent-streams 0: must be at least 1"},
		{"--queue-size", "-5", "--queue-size -5: must be at least 1"},
		{"--shards", "-1", "--shards -1: must be at least 0"},
		{"--check-cache-size", "-5", "--check-cache-size -5: must be at least 0"},
		{"--ratelimit-detailed-metric-max", "-1", "--ratelimit-detailed-metric-max -1: must be at least 1"},
		{"--redis-timeout", "-1s", "--redis-timeout -1s: must be positive"},
		{"--redis-timeout", "0", "--redis-timeout 0s: must be positive"},
		{"--drain-timeout", "-2s", "--drain-timeout -2s: must be positive"},
		{"--drain-timeout", "0", "--drain-timeout 0s: must be positive"},
	} {
		_, err := run(t, "serve", tc.flag, tc.value, "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0")
		if err == nil || err.Error() != tc.want {
			t.Errorf("serve %s %s: %v, want %q", tc.flag, tc.value, err, tc.want)
		}
	}
}

// TestServeBadConfigLogsEachErrorOnce: a config rejected at start is logged once
// per error, then serve says why it stops, without repeating them.
func TestServeBadConfigLogsEachErrorOnce(t *testing.T) {
	dir := t.TempDir()
	bad := "domain: api\ndescriptors:\n- key: a\n  rate_limit: {unit: fortnight, requests_per_unit: 1}\n- key: b\n  rate_limit: {unit: second, requests_per_unit: ten}\n"
	if err := os.WriteFile(filepath.Join(dir, "rl.yaml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "serve", "--config", dir, "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--xds-addr", "127.0.0.1:0")
	if err == nil {
		t.Fatalf("serve with a bad config started:\n%s", out)
	}
	for _, pos := range []string{"rl.yaml:4: ", "rl.yaml:6: "} {
		if n := strings.Count(out, pos); n != 1 {
			t.Errorf("%s logged %d times, want once:\n%s", pos, n, out)
		}
	}
	if !strings.Contains(out, `msg="cannot start: the config was rejected" errors=2`) {
		t.Errorf("no line saying why serve stops:\n%s", out)
	}
}

func TestServesFrom(t *testing.T) {
	tests := []struct {
		args []string
		want bool
	}{
		{[]string{"sluice", "serve", "--config", "d"}, true},
		{[]string{"sluice", "--help", "serve"}, true},
		{[]string{"sluice", "validate", "--config", "serve"}, false},
		{[]string{"sluice", "version"}, false},
		{[]string{"sluice"}, false},
	}
	for _, tt := range tests {
		if got := servesFrom(tt.args); got != tt.want {
			t.Errorf("servesFrom(%q) = %v, want %v", tt.args, got, tt.want)
		}
	}
}
