package hostsetup

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestDiagnoseContainerd: what `shoal doctor` reads from config.toml: config_path, a mirrors
// section (with setup's finding and fix), remote snapshotters; and where containerd sends a
// registry with a hosts directory.
func TestDiagnoseContainerd(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	hosts := filepath.Join(dir, "certs.d")
	text := `version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "stargz"
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
  endpoint = ["https://mirror.example"]
[proxy_plugins.soci]
  type = "snapshot"
  address = "/run/soci/soci.sock"
[proxy_plugins.other]
  type = "content"
`
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := DiagnoseContainerd(cfg, hosts, "1.7.2")
	if err != nil {
		t.Fatal(err)
	}
	if !d.Exists || d.Version != 2 || d.ConfigPath != "" || !slices.Equal(d.Mirrors, []string{"docker.io"}) {
		t.Errorf("diagnosis %+v", d)
	}
	if !slices.Equal(d.LazySnapshotters, []string{"soci", "stargz"}) {
		t.Errorf("remote snapshotters %v, want [soci stargz]", d.LazySnapshotters)
	}
	if len(d.Findings) == 0 || d.Findings[0].Severity != Problem || !strings.Contains(d.Findings[0].Message, "registry.mirrors") || d.Findings[0].Fix == "" {
		t.Errorf("findings %+v, want the mirrors problem first, with a fix", d.Findings)
	}

	if err := os.MkdirAll(filepath.Join(hosts, "_default"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hosts, "_default", "hosts.toml"), []byte("[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ContainerdHosts(hosts, "shoal-doctor.invalid")
	if err != nil || len(got) == 0 || !SameMirror(got[0], "http://127.0.0.1:5000/") {
		t.Errorf("ContainerdHosts = %v (%v), want shoal first", got, err)
	}
	if got, err := ContainerdHosts(filepath.Join(dir, "none"), "shoal-doctor.invalid"); err != nil || len(got) != 1 || !strings.Contains(got[0], "shoal-doctor.invalid") {
		t.Errorf("ContainerdHosts without a hosts dir = %v (%v), want the registry itself", got, err)
	}
}
