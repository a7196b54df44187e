package hostsetup

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
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
		{"v3-good", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + "'\n", "2.1.4", Info, "", ""},
		{"v4-good", "version = 4\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + "'\n", "2.4.2", Info, "", ""},
		{"v2-config-path-unset", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause\"\n", "1.7.0",
			Problem, "does not set config_path", "append to"},
		{"v3-config-path-unset", "version = 3\n", "2.2.0", Problem, "transfer service", `config_path = "` + certsD + `"`},
		{"v2-mirrors-only", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.example\"]\n",
			"1.7.0", Problem, "mirrors ([docker.io])", "delete the"},
		{"v2-mirrors-and-config-path", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"" + certsD + "\"\n" +
			"[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.example\"]\n",
			"2.2.0", Problem, "both config_path and", "delete the"},
		{"v3-list-transfer-service", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + ":/etc/docker/certs.d'\n",
			"2.1.4", Problem, "use_local_image_pull = true", "replace line 3 of"},
		{"v3-list-unknown-version", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + ":/etc/docker/certs.d'\n",
			"", Problem, "containerd ≥ 2.1", `config_path = "` + certsD + `"`},
		{"v3-list-local-pull", "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = true\n" +
			"[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + ":/etc/docker/certs.d'\n", "2.1.4", Info, "ctr image pull", "--hosts-dir"},
		// The transfer service's own config_path is parsed but never read (containerd 2.4.2): it
		// neither fixes nor hides the list.
		{"v4-list-transfer-config-path", "version = 4\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + ":/etc/docker/certs.d'\n" +
			"[plugins.'io.containerd.transfer.v1.local']\n  config_path = '" + certsD + "'\n", "2.4.2", Problem, "a list", "replace line 3 of"},
		// The file's version decides, not the containerd first on PATH (here Debian's 1.6).
		{"v4-list-old-binary", "version = 4\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + ":/etc/docker/certs.d'\n",
			"containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3", Problem, "containerd ≥ 2.1", "replace line 3 of"},
		{"v3-list-old-binary", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + ":/etc/docker/certs.d'\n",
			"1.6.20", Problem, "containerd ≥ 2.1", "replace line 3 of"},
		{"v3-list-2.0", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '" + certsD + ":/etc/docker/certs.d'\n",
			"2.0.5", Info, "ctr image pull", ""},
		{"v2-elsewhere", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/other/certs.d\"\n", "1.7.0",
			Problem, `config_path = "/etc/other/certs.d"`, "--hosts-dir"},
		{"v4-stock-empty-config-path", stockV4, "2.4.2", Problem, "does not set config_path", "replace line 11 of"},
		{"v4-table-without-key", "version = 4\n\n[plugins.'io.containerd.cri.v1.images'.registry]\n  # none yet\n", "2.4.2", Problem,
			"does not set config_path", "insert after line 3 of"},
		{"v4-dotted-registry", "version = 4\n[plugins.'io.containerd.cri.v1.images']\n  registry.headers.x = ['y']\n", "", Problem,
			"does not set config_path", "insert after line 2 of"},
		{"v4-root-dotted-registry", "version = 4\nplugins.'io.containerd.cri.v1.images'.registry.headers.x = ['y']\n[plugins.other]\n  a = 1\n", "", Problem,
			"does not set config_path", "insert before line 2 of"},
		{"v4-no-table", "version = 4\n[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = false\n", "", Problem,
			"does not set config_path", "append to"},
		{"no-version-v1-layout", "[plugins.cri]\n  sandbox_image = 'pause'\n", "2.4.2", Problem, "does not set config_path", "[plugins.cri.registry]"},
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
			if f.Severity == Info || tc.name == "invalid-toml" || strings.Contains(tc.msg, "both") {
				return // nothing to set (the mirrors tables are deleted by hand)
			}
			// The fix, applied as printed, gives a file that parses, sets config_path to the hosts
			// directory, and passes the checks.
			old := ""
			if tc.config != "" {
				old = readFile(t, cfgPath)
			}
			fixed, err := applyConfigFix(old, cfgPath, f.Fix)
			if err != nil {
				t.Fatalf("fix %q: %v", f.Fix, err)
			}
			writeFile(t, root, "etc/containerd/config.toml", fixed)
			var doc map[string]any
			if err := toml.Unmarshal([]byte(fixed), &doc); err != nil {
				t.Fatalf("after the fix the file does not parse: %v\n%s", err, fixed)
			}
			c, err := readContainerdConfig(cfgPath)
			if err != nil || c.configPath != "/etc/containerd/certs.d" {
				t.Errorf("after the fix config_path = %q (%v), want %s:\n%s", c.configPath, err, certsD, fixed)
			}
			if strings.Contains(tc.msg, "mirrors") {
				return // the mirrors tables are deleted by hand
			}
			p, err = PlanContainerd(ContainerdOptions{HostRoot: root, HostsDir: hostsDir, ContainerdVersion: tc.version, Registries: []string{"docker.io"}})
			if err != nil {
				t.Fatal(err)
			}
			if p.Worst() > Info {
				t.Errorf("after the fix:\n%s\nfindings: %v", fixed, p.Findings)
			}
		})
	}
}

// stockV4 is the start of `containerd config default` of containerd 2.4.2 (and its transfer
// table), where config_path is line 11.
const stockV4 = `version = 4
root = '/var/lib/containerd'
state = '/run/containerd'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    use_local_image_pull = false

    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = ''

    [plugins.'io.containerd.cri.v1.images'.image_decryption]
      key_model = 'node'

  [plugins.'io.containerd.transfer.v1.local']
    max_concurrent_downloads = 3
    config_path = ''
`

var (
	fixReplace = regexp.MustCompile(`replace line (\d+) of (\S+) \(.*\) with:$`)
	fixInsert  = regexp.MustCompile(`insert after line (\d+) of (\S+):$`)
	fixBefore  = regexp.MustCompile(`insert before line (\d+) of (\S+):$`)
	fixAppend  = regexp.MustCompile(`append to (\S+):$`)
	fixWrite   = regexp.MustCompile(`write (\S+) with:$`)
)

// applyConfigFix carries out a printed fix on the content of file: the line that ends in one of
// the forms above says where, the lines after it up to "then restart containerd" are the text.
func applyConfigFix(content, file, fix string) (string, error) {
	lines := strings.Split(fix, "\n")
	for i, l := range lines {
		var text []string
		for _, t := range lines[i+1:] {
			if strings.HasPrefix(t, "then restart containerd") {
				break
			}
			text = append(text, t)
		}
		old := strings.Split(strings.TrimSuffix(content, "\n"), "\n")
		at := func(m []string) (int, error) {
			n, _ := strconv.Atoi(m[1])
			if m[2] != file || n < 1 || n > len(old) {
				return 0, fmt.Errorf("line %d of %s: not in %s (%d lines)", n, m[2], file, len(old))
			}
			return n, nil
		}
		if m := fixReplace.FindStringSubmatch(l); m != nil {
			n, err := at(m)
			if err != nil || len(text) != 1 {
				return "", fmt.Errorf("replace: %v, %d lines", err, len(text))
			}
			old[n-1] = text[0]
			return strings.Join(old, "\n") + "\n", nil
		}
		if m := fixInsert.FindStringSubmatch(l); m != nil {
			n, err := at(m)
			if err != nil {
				return "", err
			}
			return strings.Join(append(append(old[:n:n], text...), old[n:]...), "\n") + "\n", nil
		}
		if m := fixBefore.FindStringSubmatch(l); m != nil {
			n, err := at(m)
			if err != nil {
				return "", err
			}
			return strings.Join(append(append(old[:n-1:n-1], text...), old[n-1:]...), "\n") + "\n", nil
		}
		if m := fixAppend.FindStringSubmatch(l); m != nil && m[1] == file {
			return content + "\n" + strings.Join(text, "\n") + "\n", nil
		}
		if m := fixWrite.FindStringSubmatch(l); m != nil && m[1] == file {
			return strings.Join(text, "\n") + "\n", nil
		}
	}
	return "", fmt.Errorf("no instruction that can be applied as printed")
}

// TestContainerdConfigFixKeepsFile: the fix for the stock containerd 2.4 config changes exactly
// the config_path line; every other byte stays.
func TestContainerdConfigFixKeepsFile(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	cfgPath := writeFile(t, root, "config.toml", stockV4)
	p, err := PlanContainerd(ContainerdOptions{HostsDir: filepath.Join(root, "certs.d"), ContainerdConfig: cfgPath, ContainerdVersion: "2.4.2", Registries: []string{"docker.io"}})
	if err != nil {
		t.Fatal(err)
	}
	fixed, err := applyConfigFix(stockV4, cfgPath, p.Findings[0].Fix)
	if err != nil {
		t.Fatalf("%v: %v", p.Findings[0], err)
	}
	want := strings.Replace(stockV4, "      config_path = ''\n\n", "      config_path = \""+filepath.Join(root, "certs.d")+"\"\n\n", 1)
	if fixed != want {
		t.Errorf("fixed file:\n%s\nwant:\n%s", fixed, want)
	}
	if _, err := os.Stat(cfgPath); err != nil {
		t.Fatal(err)
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

// FuzzContainerdConfigFix: for any config.toml that parses and has tables (or nothing) on the way
// to the registry table, the printed config_path fix, applied as printed, gives a file that
// parses and sets config_path to the wanted directory, whatever else the file held.
func FuzzContainerdConfigFix(f *testing.F) {
	f.Add(stockV4)
	f.Add("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n")
	f.Add("version = 4\n[plugins.'io.containerd.cri.v1.images']\n  registry.headers.x = ['y']\n")
	f.Add("version = 3\n[plugins]\n  'io.containerd.cri.v1.images'.registry.config_path = 'a:b'\n")
	f.Add("[plugins.cri]\n  sandbox_image = 'pause'\n")
	f.Add("version = 4\r\n[plugins.'io.containerd.cri.v1.images'.registry]\r\n  config_path = '' # stock\r\n")
	f.Add("version = 4\n[plugins.\"io.containerd.cri.v1.images\".registry.mirrors.\"x\"]\n  endpoint = []\n[plugins.\"io.containerd.cri.v1.images\".registry]\n")
	f.Add("version = 4\n[plugins.'io.containerd.cri.v1.images'.registry.configs.'x'.tls]\n  insecure_skip_verify = true\n")
	f.Add("version = 4\nplugins.'io.containerd.cri.v1.images'.registry.config_path = ''\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		var doc map[string]any
		if toml.Unmarshal([]byte(in), &doc) != nil {
			return
		}
		path := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(path, []byte(in), 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := readContainerdConfig(path)
		if err != nil || c.invalid != nil {
			t.Fatalf("%v %v", err, c.invalid)
		}
		var m any = doc
		for _, k := range c.registryKey {
			if m == nil {
				break
			}
			t, ok := m.(map[string]any)
			if !ok {
				return // a value where containerd wants a table: containerd refuses the file anyway
			}
			m = t[k]
		}
		if _, ok := m.(map[string]any); m != nil && !ok {
			return
		}
		fix := c.setConfigPath(path, "/want")
		if strings.Contains(fix, "inline table") {
			return // edited by hand
		}
		fixed, err := applyConfigFix(in, path, fix)
		if err != nil {
			t.Fatalf("%v\n--- in\n%s\n--- fix\n%s", err, in, fix)
		}
		if err := toml.Unmarshal([]byte(fixed), &doc); err != nil {
			t.Fatalf("fixed file does not parse: %v\n--- in\n%s\n--- fixed\n%s", err, in, fixed)
		}
		if err := os.WriteFile(path, []byte(fixed), 0o644); err != nil {
			t.Fatal(err)
		}
		if c2, err := readContainerdConfig(path); err != nil || c2.configPath != "/want" {
			t.Fatalf("after the fix config_path = %q (%v)\n--- in\n%s\n--- fixed\n%s", c2.configPath, err, in, fixed)
		}
		// --edit-config makes the same change (a CRLF file keeps its line ends; a last line
		// without a newline gets one before the appended table).
		if edited, err := c.editConfigPath("/want"); err != nil {
			t.Errorf("editConfigPath: %v\n--- in\n%s", err, in)
		} else if !strings.Contains(in, "\r") && (in == "" || strings.HasSuffix(in, "\n")) && string(edited) != fixed {
			t.Errorf("editConfigPath:\n%s\nthe printed fix:\n%s", edited, fixed)
		}
	})
}
