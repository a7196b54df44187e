package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runShoal runs the built shoal binary and returns stdout, stderr and the exit code.
func runShoal(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	if shoalBuildErr != nil {
		t.Fatal(shoalBuildErr)
	}
	cmd := exec.CommandContext(ctxTimeout(t, time.Minute), shoalBin, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("shoal %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// TestSetupCLI drives `shoal setup` as a script would: exit codes, what goes to stdout (the
// changes, the diff) and to stderr (the findings), and that --dry-run writes nothing.
func TestSetupCLI(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hosts := filepath.Join(dir, "certs.d")
	user := "server = \"https://registry-1.docker.io\"\n\n[host.\"https://corp.example\"]\n  capabilities = [\"pull\"]\n"
	if err := os.MkdirAll(filepath.Join(hosts, "docker.io"), 0o755); err != nil {
		t.Fatal(err)
	}
	userFile := filepath.Join(hosts, "docker.io", "hosts.toml")
	if err := os.WriteFile(userFile, []byte(user), 0o644); err != nil {
		t.Fatal(err)
	}
	listConfig := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(listConfig, []byte("version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '"+hosts+":/etc/docker/certs.d'\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// --dry-run: a unified diff on stdout, exit 0, nothing written.
	out, errOut, code := runShoal(t, "setup", "containerd", "--hosts-dir", hosts, "--containerd-config", "-", "--dry-run")
	if code != 0 || !strings.Contains(out, "--- "+userFile+"\n+++ "+userFile+"\n") || !strings.Contains(out, "+[host.\"http://127.0.0.1:5000\"]") {
		t.Errorf("dry run: exit %d\n%s\n%s", code, out, errOut)
	}
	if readText(t, userFile) != user {
		t.Error("--dry-run changed the file")
	}
	if _, err := os.Stat(filepath.Join(hosts, "_default")); !os.IsNotExist(err) {
		t.Error("--dry-run created _default")
	}

	// --strict with a containerd ≥ 2.1 list config_path: files written, the problem on stderr, exit 6.
	out, errOut, code = runShoal(t, "setup", "containerd", "--hosts-dir", hosts, "--containerd-config", listConfig,
		"--containerd-version", "2.1.4", "--strict")
	if code != 6 || !strings.Contains(out, "merged "+userFile) || !strings.Contains(errOut, "problem: ") ||
		!strings.Contains(errOut, "transfer service") || !strings.Contains(errOut, "replace line 3 of "+listConfig) ||
		!strings.Contains(errOut, "\n         config_path = \""+hosts+"\"\n") {
		t.Errorf("--strict with a list config_path: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	// Again: nothing to change.
	out, _, code = runShoal(t, "setup", "containerd", "--hosts-dir", hosts, "--containerd-config", "-")
	if code != 0 || strings.Count(out, "unchanged ") != 2 {
		t.Errorf("second run: exit %d\n%s", code, out)
	}

	// Usage errors exit 2; a file containerd would ignore exits 1 and is left alone.
	for _, args := range [][]string{
		{"setup", "containerd", "--registries", "docker.io/library"},
		{"setup", "containerd", "--mirror", "127.0.0.1:5000", "--hosts-dir", hosts},
		{"setup", "containerd", "--no-such-flag"},
		{"setup", "docker", "extra-arg"},
		{"setup", "data-dir", "--owner", "x", dir},
	} {
		if _, errOut, code := runShoal(t, args...); code != 1 && code != 2 || !strings.HasPrefix(errOut, "shoal: ") {
			t.Errorf("shoal %v: exit %d, stderr %q; want a one-line error and exit 1 or 2", args, code, errOut)
		}
	}
	if _, _, code := runShoal(t, "setup", "containerd", "--no-such-flag"); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
	bad := filepath.Join(dir, "bad.d")
	if err := os.MkdirAll(filepath.Join(bad, "ghcr.io"), 0o755); err != nil {
		t.Fatal(err)
	}
	badFile := filepath.Join(bad, "ghcr.io", "hosts.toml")
	if err := os.WriteFile(badFile, []byte("[host.\"https://x\"]\n  capabilities = [\"pul\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = runShoal(t, "setup", "containerd", "--hosts-dir", bad, "--containerd-config", "-", "--registries", "ghcr.io")
	if code != 1 || !strings.Contains(errOut, "unknown capability") || !strings.Contains(errOut, "nothing was written") {
		t.Errorf("invalid hosts.toml: exit %d, stderr %q", code, errOut)
	}

	// docker: created, then uninstall removes the file it created.
	dj := filepath.Join(dir, "docker", "daemon.json")
	out, errOut, code = runShoal(t, "setup", "docker", "--daemon-json", dj)
	if code != 0 || !strings.Contains(out, "created "+dj) || !strings.Contains(errOut, "systemctl reload docker") {
		t.Errorf("setup docker: exit %d\n%s\n%s", code, out, errOut)
	}
	out, _, code = runShoal(t, "setup", "docker", "--daemon-json", dj, "--uninstall")
	if _, err := os.Stat(dj); code != 0 || !os.IsNotExist(err) {
		t.Errorf("setup docker --uninstall: exit %d, file %v\n%s", code, err, out)
	}

	// healthcheck: exit 1 with one line when nothing answers.
	if _, errOut, code := runShoal(t, "healthcheck", "--url", unreachableURL+"/healthz", "--timeout", "2s"); code != 1 || !strings.HasPrefix(errOut, "shoal: healthcheck:") {
		t.Errorf("healthcheck of a closed port: exit %d, stderr %q", code, errOut)
	}
}
