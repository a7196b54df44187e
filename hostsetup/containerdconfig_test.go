package hostsetup

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestContainerdConfigChecks: each known way for containerd to ignore hosts.toml is reported
// with a fix that names the key to set; a good configuration gives no problem.
func TestContainerdConfigChecks(t *testing.T) {
	t.Parallel()
	const certsD = "/etc/containerd/certs.d"
	cases := []struct {
		name    string
		config  string // "" = no file
		version string
		want    Severity
		msg     string // in the worst finding's message
		fix     string // in the worst finding's fix
	}{
		{"no-config-file", "", "", Warning, "no containerd config", `config_path = "` + certsD + `"`},
		{"v1-good", "[plugins.cri.registry]\n  config_path = \"" + certsD + "\"\n", "1.6.20", Info, "", ""},
		{"v2-good", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"" + certsD + "\"\n", "1.7.0", Info, "", ""},
		{"v3-good", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + "'\n" +
			"[plugins.'io.containerd.transfer.v1.local']\n  config_path = '" + certsD + "'\n", "2.1.4", Info, "", ""},
		{"v2-config-path-unset", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause\"\n", "1.7.0",
			Problem, "does not set config_path", `[plugins."io.containerd.grpc.v1.cri".registry]`},
		{"v3-config-path-unset", "version = 3\n", "2.2.0", Problem, "transfer service", `config_path = "` + certsD + `"`},
		{"v2-mirrors-only", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.example\"]\n",
			"1.7.0", Problem, "mirrors ([docker.io])", "replace the"},
		{"v2-mirrors-and-config-path", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"" + certsD + "\"\n" +
			"[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.example\"]\n",
			"2.2.0", Problem, "both config_path and", "delete the"},
		{"v3-list-transfer-service", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + ":/etc/docker/certs.d'\n",
			"2.1.4", Problem, "reads config_path as one directory", "use_local_image_pull = true"},
		{"v3-list-unknown-version", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + ":/etc/docker/certs.d'\n",
			"", Problem, "containerd ≥ 2.1", `config_path = "` + certsD + `"`},
		{"v3-list-local-pull", "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = true\n" +
			"[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + ":/etc/docker/certs.d'\n", "2.1.4", Info, "ctr image pull", "--hosts-dir"},
		{"v3-list-2.0", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + ":/etc/docker/certs.d'\n",
			"2.0.5", Info, "ctr image pull", ""},
		{"v2-elsewhere", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/other/certs.d\"\n", "1.7.0",
			Problem, `config_path = "/etc/other/certs.d"`, "--hosts-dir"},
		{"invalid-toml", "version = 2\n[plugins\n", "", Problem, "does not parse", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			hostsDir := filepath.Join(root, certsD)
			cfgPath := filepath.Join(root, "etc/containerd/config.toml")
			if tc.config != "" {
				writeFile(t, root, "etc/containerd/config.toml", tc.config)
			}
			p, err := PlanContainerd(ContainerdOptions{HostRoot: root, HostsDir: hostsDir, ContainerdVersion: tc.version, Registries: []string{"docker.io"}})
			if err != nil {
				t.Fatal(err)
			}
			if w := p.Worst(); w != tc.want {
				t.Fatalf("worst finding %v, want %v: %v", w, tc.want, p.Findings)
			}
			if tc.msg == "" && tc.fix == "" {
				return
			}
			if len(p.Findings) == 0 {
				t.Fatalf("no findings, want %q", tc.msg)
			}
			f := p.Findings[0]
			if !strings.Contains(f.Message, tc.msg) || !strings.Contains(f.Fix, tc.fix) {
				t.Errorf("finding:\n%v\nwant message with %q and fix with %q", f, tc.msg, tc.fix)
			}
			if tc.config != "" && f.Severity == Problem && !strings.Contains(f.Message, cfgPath) {
				t.Errorf("finding does not name the file %s: %v", cfgPath, f)
			}
		})
	}
}

// TestContainerdHostsDirFromConfig: without --hosts-dir, setup writes where containerd's
// config_path points (the first entry of a list), under the host root.
func TestContainerdHostsDirFromConfig(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	writeFile(t, root, "etc/containerd/config.toml",
		"version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/srv/registries:/etc/docker/certs.d\"\n")
	p, err := PlanContainerd(ContainerdOptions{HostRoot: root, Registries: []string{"docker.io"}, ContainerdVersion: "1.7.2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Changes) != 1 || p.Changes[0].Path != filepath.Join(root, "srv/registries/docker.io/hosts.toml") {
		t.Fatalf("changes %+v, want one file under %s/srv/registries", p.Changes, root)
	}
	if p.Worst() != Info {
		t.Errorf("findings for a consistent config: %v", p.Findings)
	}
}

func TestParseVersion(t *testing.T) {
	t.Parallel()
	for in, want := range map[string][2]int{
		"containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3": {1, 6},
		"containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7193e4":          {2, 1},
		"2.2.0": {2, 2},
	} {
		ma, mi, ok := parseVersion(in)
		if !ok || ma != want[0] || mi != want[1] {
			t.Errorf("parseVersion(%q) = %d.%d %v", in, ma, mi, ok)
		}
	}
	if _, _, ok := parseVersion("containerd"); ok {
		t.Error("a version out of nothing")
	}
}
