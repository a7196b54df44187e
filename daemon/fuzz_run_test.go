package daemon

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestFuzzTargetsBriefly runs every fuzz target of the module (daemon, upstream, p2p, store,
// …: found by scanning the *_test.go files) with `go test -fuzz` for a bounded time each, so
// that README's single `go test ./...` line also fuzzes. Each run starts from the target's
// seed corpus (testdata/fuzz/<target>/); a failing input is written there by the go tool and
// the test fails with its output. Minimising a new input is capped at 1s: the default 60s
// would eat a short run.
//
// SHOAL_FUZZTIME sets the time per target (default 8s, 2s with -short; "0" turns the runs
// off, e.g. for a quick local iteration).
func TestFuzzTargetsBriefly(t *testing.T) {
	t.Parallel()
	fuzztime := os.Getenv("SHOAL_FUZZTIME")
	switch {
	case fuzztime == "0":
		t.Skip("SHOAL_FUZZTIME=0: fuzzing off")
	case fuzztime == "" && testing.Short():
		fuzztime = "2s"
	case fuzztime == "":
		fuzztime = "8s"
	}
	if _, err := time.ParseDuration(fuzztime); err != nil {
		t.Fatalf("SHOAL_FUZZTIME=%q: %v", fuzztime, err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found above daemon/: %v", err)
	}
	targets := findFuzzTargets(t, root)
	if len(targets) < 10 {
		t.Fatalf("found only %d fuzz targets: %v", len(targets), targets)
	}
	execs := regexp.MustCompile(`fuzz: elapsed: \S+, execs: (\d+)`)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			start := time.Now()
			cmd := exec.CommandContext(t.Context(), goBin, "test", "-vet=off", "-run=^$", "-fuzz=^"+tg.name+"$",
				"-fuzztime="+fuzztime, "-fuzzminimizetime=1s", "-parallel=1", "./"+tg.pkg)
			cmd.Dir = root
			out, err := cmd.CombinedOutput()
			if err != nil && strings.Contains(string(out), "context deadline exceeded") && !strings.Contains(string(out), "Failing input written") {
				// The go tool's fuzz time ran out while a slow input (bcrypt) was running and it
				// reports that as a failure; it found nothing, so this is not a finding.
				t.Logf("%s (./%s): fuzz time ran out mid-input (no failing input found)\n%s", tg.name, tg.pkg, tail(out, 600))
				return
			}
			if err != nil {
				t.Fatalf("go test -fuzz %s ./%s: %v\n%s", tg.name, tg.pkg, err, tail(out, 4000))
			}
			n := "?"
			if m := execs.FindAllSubmatch(out, -1); len(m) > 0 {
				n = string(m[len(m)-1][1])
			}
			t.Logf("%s (./%s): fuzzed %s without a failure, %s execs (%s with the build)", tg.name, tg.pkg, fuzztime, n, time.Since(start).Round(time.Second))
		})
	}
}

type fuzzTarget struct{ pkg, name string }

// findFuzzTargets lists `func FuzzXxx(f *testing.F)` in the module's test files.
func findFuzzTargets(t *testing.T, root string) []fuzzTarget {
	t.Helper()
	re := regexp.MustCompile(`(?m)^func (Fuzz\w+)\(\w+ \*testing\.F\)`)
	var out []fuzzTarget
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "vendor" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		for _, m := range re.FindAllSubmatch(b, -1) {
			out = append(out, fuzzTarget{pkg: filepath.ToSlash(rel), name: string(m[1])})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
