package e2e

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBadConfigExits2: a bad flag, config key or credential file stops `shoal daemon` at once with
// exit code 2 and one line that names the problem.
func TestBadConfigExits2(t *testing.T) {
	t.Parallel()
	if shoalBuildErr != nil {
		t.Fatal(shoalBuildErr)
	}
	missing := filepath.Join(t.TempDir(), "no-such-password-file")
	cases := []struct {
		name    string
		opts    shoalOpts
		mention string // the line must name this
	}{
		{"registry-flag-without-url", shoalOpts{registries: []string{"docker.io"}}, "registry"},
		{"bad-tag-ttl", shoalOpts{tagTTL: "soon"}, "tag-ttl"},
		{"missing-password-file", shoalOpts{config: &shoalConfig{Registries: map[string]shoalRegistry{
			"127.0.0.1:1": {URL: "http://127.0.0.1:1", Username: "u", PasswordFile: missing},
		}}}, "password_file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			argv := shoalArgs(t, freeAddr(t), &tc.opts)
			out, err := runCmd(t.Context(), 30*time.Second, nil, argv...)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("shoal daemon %s: %v, want exit code 2\n%s", tc.name, err, out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 1 {
				t.Errorf("want one line, got %d:\n%s", len(lines), out)
			}
			if !strings.Contains(out, tc.mention) {
				t.Errorf("message does not name %q: %s", tc.mention, out)
			}
		})
	}
}
