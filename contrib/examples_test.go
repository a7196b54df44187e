// Package contrib_test checks the deployment files in contrib/: the Kubernetes manifests build
// and validate, the runtime configuration examples do what README says, and the Grafana
// dashboard only queries metrics the daemon exports.
package contrib_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"

	"github.com/shoal-mirror/shoal/hostsetup"
)

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestContainerdExamples: containerd, reading the example hosts.toml files with its own code,
// tries shoal first for Docker Hub and for any other registry (through _default), and the
// example config.toml files pass `shoal setup containerd`'s checks.
func TestContainerdExamples(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	hostsDir := filepath.Join(root, "etc/containerd/certs.d")
	for _, reg := range []string{"docker.io", "_default"} {
		copyFile(t, filepath.Join("containerd/certs.d", reg, "hosts.toml"), filepath.Join(hostsDir, reg, "hosts.toml"))
	}
	if err := hostsetup.VerifyContainerd(hostsDir, []string{"docker.io", "ghcr.io", "registry.k8s.io"}, hostsetup.DefaultMirror); err != nil {
		t.Errorf("the examples do not send pulls to shoal first: %v", err)
	}
	for cfg, version := range map[string]string{"config-v2.toml": "1.7.24", "config-v3.toml": "2.1.4"} {
		copyFile(t, filepath.Join("containerd", cfg), filepath.Join(root, "etc/containerd/config.toml"))
		p, err := hostsetup.PlanContainerd(hostsetup.ContainerdOptions{HostRoot: root, ContainerdVersion: version, Registries: []string{"docker.io", "_default"}})
		if err != nil {
			t.Fatal(err)
		}
		if p.Worst() != hostsetup.Info {
			t.Errorf("%s with containerd %s: %v", cfg, version, p.Findings)
		}
		if p.HostsDir != hostsDir {
			t.Errorf("%s: setup would write to %s, want %s", cfg, p.HostsDir, hostsDir)
		}
	}
}

// TestDockerExample: the example daemon.json is what `shoal setup docker` writes.
func TestDockerExample(t *testing.T) {
	t.Parallel()
	p, err := hostsetup.PlanDocker(hostsetup.DockerOptions{DaemonJSON: "docker/daemon.json"})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Changes) != 0 {
		t.Errorf("setup would change the example:\n%s", p.Diff())
	}
}

// TestRegistriesConfExample: the containers-registries.conf example (Podman, CRI-O) mirrors each
// registry to shoal with the registry's name as the path prefix, which is how shoal routes it.
// e2e/deploy_test.go pulls through it with skopeo.
func TestRegistriesConfExample(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("podman/shoal.conf")
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Registry []struct {
			Prefix   string `toml:"prefix"`
			Location string `toml:"location"`
			Mirror   []struct {
				Location string `toml:"location"`
				Insecure bool   `toml:"insecure"`
			} `toml:"mirror"`
		} `toml:"registry"`
	}
	dec := toml.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&conf); err != nil {
		t.Fatalf("podman/shoal.conf: %v", err)
	}
	var prefixes []string
	for _, r := range conf.Registry {
		prefixes = append(prefixes, r.Prefix)
		if len(r.Mirror) != 1 || r.Mirror[0].Location != "127.0.0.1:5000/"+r.Prefix || !r.Mirror[0].Insecure || r.Location != r.Prefix {
			t.Errorf("registry %q: %+v", r.Prefix, r)
		}
	}
	if !slices.Contains(prefixes, "docker.io") {
		t.Errorf("no docker.io entry: %v", prefixes)
	}
}

// TestGrafanaDashboard: the dashboard is valid JSON, its panels have unique ids, and every metric
// it queries is one that the daemon defines (internal/admin/metrics.go, daemon/doctor.go).
func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("grafana/shoal-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	// The metric names as the daemon's source spells them (string literals in daemon/*.go and
	// the packages it is split into, internal/*/*.go).
	files, err := filepath.Glob("../daemon/*.go")
	if err != nil {
		t.Fatal(err)
	}
	split, err := filepath.Glob("../internal/*/*.go")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, split...)
	defined := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`"(shoal_[a-z0-9_]+)"`).FindAllStringSubmatch(string(src), -1) {
			defined[m[1]] = true
		}
	}
	if len(defined) < 10 {
		t.Fatalf("found only %d metric names in daemon/*.go and internal/*/*.go: %v", len(defined), defined)
	}
	ids := map[int]bool{}
	used := map[string]bool{}
	name := regexp.MustCompile(`\bshoal_[a-z0-9_]+`)
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
				used[base] = true
				if !defined[base] {
					t.Errorf("panel %q queries %s, which the daemon does not define", p.Title, m)
				}
			}
		}
	}
	if len(used) < 15 {
		t.Errorf("the dashboard uses only %d metrics", len(used))
	}
	var unused []string
	for m := range defined {
		if !used[m] {
			unused = append(unused, m)
		}
	}
	slices.Sort(unused)
	t.Logf("metrics not on the dashboard: %v", unused)
}
