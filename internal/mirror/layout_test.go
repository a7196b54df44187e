package mirror

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/shoal-mirror/shoal"

// TestDependenciesPointOneWay: the mirror and the admin side never reach each other or the
// daemon that wires them, directly or through another package of the module (docs/layout.md).
func TestDependenciesPointOneWay(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for pkg, never := range map[string][]string{
		"internal/mirror": {"internal/admin", "daemon"},
		"internal/admin":  {"internal/mirror", "daemon"},
		"internal/fetch":  {"internal/mirror", "internal/admin", "daemon"},
	} {
		deps := map[string]string{} // package → a package that imports it
		var walk func(p string)
		walk = func(p string) {
			for _, imp := range moduleImports(t, root, p) {
				if _, seen := deps[imp]; !seen {
					deps[imp] = p
					walk(imp)
				}
			}
		}
		walk(pkg)
		if len(deps) == 0 {
			t.Fatalf("%s: no import of the module found: the walk is broken", pkg)
		}
		for _, n := range never {
			if via, ok := deps[n]; ok {
				t.Errorf("%s depends on %s (imported by %s)", pkg, n, via)
			}
		}
	}
}

// moduleImports lists the module's packages that pkg's non-test files import.
func moduleImports(t *testing.T, root, pkg string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, pkg, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var out []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, is := range af.Imports {
			p, _ := strconv.Unquote(is.Path.Value)
			if rel, ok := strings.CutPrefix(p, module+"/"); ok && !seen[rel] {
				seen[rel] = true
				out = append(out, rel)
			}
		}
	}
	return out
}
