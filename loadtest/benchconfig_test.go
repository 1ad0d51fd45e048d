package loadtest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluicemesh/sluice/mixer"
	"github.com/sluicemesh/sluice/mixer/mixertest"
)

// TestBenchConfigChecksEveryRequest: the benchmark's requests reach every check of
// its config — the rbac policy, the quota and both rate limits — so that its
// figures measure that work and not a rule that never matched. Each case tightens
// one part of the config until the scenario's own requests must be refused by it.
func TestBenchConfigChecksEveryRequest(t *testing.T) {
	const quota = "  adapter: memquota\n  params:\n    quotas:\n    - {name: per-user, maxAmount: MAX, validDuration: 60s}\n"
	for _, tc := range []struct {
		name, svc string
		edit      func(cfg string) string
		// the answers to the same request sent twice: "" for allowed, else a
		// substring of the generator's judgement
		want [2]string
	}{
		{"untouched, everything is allowed", "ext_authz", nil, [2]string{"", ""}},
		{"the rbac policy decides", "ext_authz",
			func(c string) string { return strings.Replace(c, `["GET", "HEAD"]`, `["HEAD"]`, 1) },
			[2]string{"PermissionDenied", "PermissionDenied"}},
		{"the quota is charged", "ext_authz",
			func(c string) string { return strings.Replace(c, "maxAmount: MAX", "maxAmount: 1", 1) },
			[2]string{"", "ResourceExhausted"}},
		{"untouched, no rate limit is reached", "ratelimit", nil, [2]string{"", ""}},
		{"the user's rate limit counts", "ratelimit",
			func(c string) string {
				return strings.Replace(c, "{unit: second, requests_per_unit: 1000000000}", "{unit: minute, requests_per_unit: 1}", 1)
			},
			[2]string{"", "OVER_LIMIT"}},
		{"the address's rate limit counts", "ratelimit",
			func(c string) string {
				return strings.Replace(c, "{unit: minute, requests_per_unit: 1000000000}", "{unit: minute, requests_per_unit: 1}", 1)
			},
			[2]string{"", "OVER_LIMIT"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := benchConfig(quota)
			if err != nil {
				t.Fatal(err)
			}
			edited := string(cfg)
			if tc.edit != nil {
				if edited = tc.edit(edited); edited == string(cfg) {
					t.Fatal("the edit changed nothing: the bench config changed, update the test")
				}
			}
			edited = strings.Replace(edited, "maxAmount: MAX", "maxAmount: 1000000000", 1)
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "bench.yaml"), []byte(edited), 0o644); err != nil {
				t.Fatal(err)
			}
			s := mixertest.Start(t, mixer.Options{ConfigDir: dir})
			conn, err := grpc.NewClient(s.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			sc, err := newScenario(tc.svc, "hit")
			if err != nil {
				t.Fatal(err)
			}
			for i, want := range tc.want {
				err := sc.invoke(context.Background(), conn, 7)
				switch {
				case want == "" && err != nil:
					t.Errorf("request %d: %v, want allowed", i+1, err)
				case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
					t.Errorf("request %d: %v, want %s", i+1, err, want)
				}
			}
		})
	}
}
