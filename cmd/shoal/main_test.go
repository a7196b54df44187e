package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var shoalBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "shoal-cli-")
	if err != nil {
		panic(err)
	}
	shoalBin = filepath.Join(dir, "shoal")
	if out, err := exec.Command("go", "build", "-o", shoalBin, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func run(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(shoalBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), 0
}

// A bad configuration must stop the daemon at once with exit code 2 and one line naming the key.
func TestBadConfigExitsTwoWithOneLine(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("listen: 127.0.0.1:0\nstore:\n  maxsize: 1GiB\n"), 0o600)
	pwMissing := filepath.Join(dir, "pw.yaml")
	os.WriteFile(pwMissing, []byte("registries:\n  ghcr.io:\n    username: u\n    password_file: /nonexistent/pw\n"), 0o600)
	cases := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"unknown yaml key", nil, []string{"daemon", "--config", bad}, `unknown key "maxsize"`},
		{"missing config file", nil, []string{"daemon", "--config", filepath.Join(dir, "none.yaml")}, "--config"},
		{"bad registry flag", nil, []string{"daemon", "--registry", "docker.io"}, "--registry"},
		{"bad size flag", nil, []string{"daemon", "--store-max-size", "huge"}, "--store-max-size"},
		{"bad blob size flag", nil, []string{"daemon", "--store-max-blob-size", "huge"}, "--store-max-blob-size"},
		{"bad env", []string{"SHOAL_LOG_FORMAT=xml"}, []string{"daemon"}, "log_format"},
		{"blank list entry", []string{"SHOAL_ALLOW_REPO=docker.io/library/*,"}, []string{"daemon"}, "security.allow_repo"},
		{"unknown flag", nil, []string{"daemon", "--no-such-flag"}, "no-such-flag"},
		{"unreadable password file", nil, []string{"daemon", "--config", pwMissing, "--data-dir", dir}, "password_file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, code := run(t, c.env, c.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; output:\n%s", code, out)
			}
			if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.Contains(out, c.want) {
				t.Fatalf("want one line naming %q, got:\n%s", c.want, out)
			}
		})
	}
}

func TestConfigDefaultPrintsEmbeddedConfig(t *testing.T) {
	out, code := run(t, nil, "config", "default")
	if code != 0 || !strings.Contains(out, "listen: 127.0.0.1:5000") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}
