package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// shoalBin is the shoal binary built once for the whole package by TestMain; shoalBuildErr says
// why it could not be built (tests that need it fail with it, the fixture checks still run).
var (
	shoalBin      string
	shoalBuildErr error
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "shoal-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	shoalBin = filepath.Join(dir, "shoal")
	// Built like the Dockerfile builds it (static, -trimpath), so that the deploy tests' own
	// build of that line reuses this compile instead of redoing it.
	build := exec.Command("go", "build", "-trimpath", "-o", shoalBin, "./cmd/shoal")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		shoalBuildErr = fmt.Errorf("go build ./cmd/shoal: %v\n%s", err, out)
	}
	code := m.Run()
	shared.close()
	return code
}

// moduleRoot finds the directory of shoal's go.mod, so the build works from any working directory.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD: not inside a module")
	}
	return filepath.Dir(gomod), nil
}
