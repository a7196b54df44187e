package hostsetup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// editConfigCases are config.toml files whose config_path setup fixes, one per form of the fix.
var editConfigCases = []struct {
	name, config, version string // config "" = no file
	form                  string // in the printed fix
}{
	{"v4-stock-replace", stockV4, "2.4.2", "replace line 11 of"},
	{"v4-list-replace", "version = 4\n# our registries\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d:/etc/docker/certs.d' # both\n", "2.4.2", "replace line 4 of"},
	{"v2-elsewhere-replace", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/other/certs.d\"\n", "1.7.0", "replace line 3 of"},
	{"v4-table-insert", "version = 4\n\n[plugins.'io.containerd.cri.v1.images'.registry]\n  # none yet\n[plugins.'io.containerd.cri.v1.images'.registry.headers]\n  x = ['y']\n", "2.4.2", "insert after line 3 of"},
	{"v4-dotted-insert", "version = 4\n[plugins.'io.containerd.cri.v1.images']\n  registry.headers.x = ['y']\n", "", "insert after line 2 of"},
	{"v4-root-dotted-before", "version = 4\nplugins.'io.containerd.cri.v1.images'.registry.headers.x = [\n  'y',\n]\n", "", "insert before line 2 of"},
	{"v2-append", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause\" # keep\n", "1.7.0", "append to"},
	{"v4-append-no-final-newline", "version = 4\n[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = false", "", "append to"},
	{"v4-crlf-replace", "version = 4\r\n[plugins.'io.containerd.cri.v1.images'.registry]\r\n  config_path = ''\r\n", "2.4.2", "replace line 3 of"},
	{"no-file-write", "", "2.4.2", "write"},
}

// TestContainerdEditConfig: --edit-config applies exactly the fix the checks print (every other
// byte kept), keeps the original as FILE.shoal-backup, says that containerd must restart, leaves
// a file the checks pass; a second run changes nothing; --uninstall gives the original back byte
// for byte and removes the backup (or removes the file that setup created).
func TestContainerdEditConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range editConfigCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			hostsDir := filepath.Join(root, "certs.d")
			cfgPath := filepath.Join(root, "config.toml")
			if tc.config != "" {
				writeFile(t, root, "config.toml", tc.config)
			}
			o := ContainerdOptions{HostsDir: hostsDir, ContainerdConfig: cfgPath, ContainerdVersion: tc.version, Registries: []string{"docker.io"}}

			// The fix as printed without --edit-config, applied to the text.
			printed, err := PlanContainerd(o)
			if err != nil {
				t.Fatal(err)
			}
			if len(printed.Findings) == 0 || !strings.Contains(printed.Findings[0].Fix, tc.form) {
				t.Fatalf("findings %v, want a fix with %q", printed.Findings, tc.form)
			}
			want, err := applyConfigFix(tc.config, cfgPath, printed.Findings[0].Fix)
			if err != nil {
				t.Fatalf("fix %q: %v", printed.Findings[0].Fix, err)
			}
			if strings.Contains(tc.config, "\r\n") { // the edit keeps the file's CRLF line ends
				want = strings.ReplaceAll(strings.ReplaceAll(want, "\r\n", "\n"), "\n", "\r\n")
			}
			if tc.name == "v4-append-no-final-newline" { // the printed fix appends to a file that ends in a newline
				want = tc.config + "\n" + strings.TrimPrefix(want, tc.config)
			}

			o.EditConfig = true
			p, err := PlanContainerd(o)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Apply(); err != nil {
				t.Fatal(err)
			}
			if got := readFile(t, cfgPath); got != want {
				t.Errorf("edited file:\n%q\nwant the printed fix applied:\n%q", got, want)
			}
			if tc.config != "" {
				if b := readFile(t, cfgPath+BackupSuffix); b != tc.config {
					t.Errorf("backup %q, want the original", b)
				}
			} else if _, err := os.Stat(cfgPath + BackupSuffix); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a backup of a file that did not exist: %v", err)
			}
			var restart bool
			for _, f := range p.Findings {
				if f.Severity == Problem {
					t.Errorf("after the edit: %v", f)
				}
				restart = restart || (strings.Contains(f.Message, "only when it starts") && strings.Contains(f.Fix, "restart containerd"))
			}
			if !restart {
				t.Errorf("no finding says that containerd must restart: %v", p.Findings)
			}
			if c, err := readContainerdConfig(cfgPath); err != nil || c.configPath != hostsDir {
				t.Errorf("config_path = %q (%v), want %s", c.configPath, err, hostsDir)
			}

			// Idempotent.
			again, err := PlanContainerd(o)
			if err != nil {
				t.Fatal(err)
			}
			if len(again.Changes) != 0 || !strings.Contains(strings.Join(again.Unchanged, " "), cfgPath) {
				t.Errorf("second run: changes %s, unchanged %v", again.Diff(), again.Unchanged)
			}
			for _, f := range again.Findings {
				if f.Severity > Info {
					t.Errorf("second run: %v", f)
				}
			}

			// Uninstall: the original, byte for byte.
			u, err := PlanContainerdUninstall(ContainerdOptions{HostsDir: hostsDir, ContainerdConfig: cfgPath})
			if err != nil {
				t.Fatal(err)
			}
			if err := u.Apply(); err != nil {
				t.Fatal(err)
			}
			if tc.config == "" {
				if _, err := os.Stat(cfgPath); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("uninstall kept the config file setup created: %v", err)
				}
			} else if got := readFile(t, cfgPath); got != tc.config {
				t.Errorf("after uninstall:\n%q\nwant the original:\n%q", got, tc.config)
			}
			if _, err := os.Stat(cfgPath + BackupSuffix); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("backup still there after uninstall: %v", err)
			}
		})
	}
}

// TestContainerdEditConfigDryRun: --dry-run shows the config.toml edit as a diff of the one line
// and writes nothing.
func TestContainerdEditConfigDryRun(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	cfgPath := writeFile(t, root, "config.toml", stockV4)
	hostsDir := filepath.Join(root, "certs.d")
	p, err := PlanContainerd(ContainerdOptions{HostsDir: hostsDir, ContainerdConfig: cfgPath, ContainerdVersion: "2.4.2",
		Registries: []string{"docker.io"}, EditConfig: true})
	if err != nil {
		t.Fatal(err)
	}
	want := "--- " + cfgPath + "\n+++ " + cfgPath + "\n@@ -8,7 +8,7 @@\n" +
		"     use_local_image_pull = false\n \n     [plugins.'io.containerd.cri.v1.images'.registry]\n" +
		"-      config_path = ''\n+      config_path = \"" + hostsDir + "\"\n \n" +
		"     [plugins.'io.containerd.cri.v1.images'.image_decryption]\n       key_model = 'node'\n"
	if d := p.Diff(); !strings.HasSuffix(d, want) {
		t.Errorf("diff:\n%s\nwant it to end with:\n%s", d, want)
	}
	if got := readFile(t, cfgPath); got != stockV4 {
		t.Errorf("planning wrote the file")
	}
}

// TestContainerdEditConfigLeavesByHand: what the printed fix leaves to the user, --edit-config
// leaves too, with a problem that says so: a file with registry.mirrors tables (containerd 2.x
// refuses them next to config_path), an inline registry table, a file that does not parse, a new
// file for a containerd of unknown version (its `version` must suit it). A file that is already
// right is unchanged, with no backup.
func TestContainerdEditConfigLeavesByHand(t *testing.T) {
	t.Parallel()
	cases := []struct{ name, config, msg string }{
		{"mirrors", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://mirror.example\"]\n",
			"--edit-config left"},
		{"inline", "version = 4\n[plugins.'io.containerd.cri.v1.images']\n  registry = { headers = { x = ['y'] } }\n", "inline table"},
		{"invalid", "version = 4\n[plugins\n", "does not parse"},
		{"no-file-unknown-version", "", "containerd's version is unknown"},
		{"good", "version = 4\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/CERTS'\n", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			hostsDir := filepath.Join(root, "certs.d")
			cfgPath, version := filepath.Join(root, "config.toml"), "2.4.2"
			if tc.config == "" {
				version = ""
			} else {
				writeFile(t, root, "config.toml", strings.ReplaceAll(tc.config, "/CERTS", hostsDir))
			}
			before, _ := readOptional(cfgPath)
			p, err := PlanContainerd(ContainerdOptions{HostsDir: hostsDir, ContainerdConfig: cfgPath, ContainerdVersion: version,
				Registries: []string{"docker.io"}, EditConfig: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Apply(); err != nil {
				t.Fatal(err)
			}
			if got, _ := readOptional(cfgPath); string(got) != string(before) || (got == nil) != (before == nil) {
				t.Errorf("file changed:\n%s", got)
			}
			if _, err := os.Stat(cfgPath + BackupSuffix); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("backup written: %v", err)
			}
			if tc.msg == "" {
				if p.Worst() != Info {
					t.Errorf("findings %v", p.Findings)
				}
				return
			}
			if p.Worst() != Problem || !strings.Contains(p.Findings[0].Message, tc.msg) &&
				!slices.ContainsFunc(p.Findings, func(f Finding) bool {
					return strings.HasPrefix(f.Message, "--edit-config ") && strings.Contains(f.Message, tc.msg)
				}) {
				t.Errorf("findings %v, want a problem with %q", p.Findings, tc.msg)
			}
		})
	}
}

// TestContainerdEditConfigUninstallKeepsLaterEdits: when config.toml changed after setup edited
// it, uninstall gives config_path back as it was and keeps every other change (and the backup);
// when the user changed config_path itself, the file is left alone.
func TestContainerdEditConfigUninstallKeepsLaterEdits(t *testing.T) {
	t.Parallel()
	const later = "\n[plugins.'io.containerd.grpc.v1.cri']\n  later = 1\n"
	cases := []struct {
		name, config string
		edit         func(s, hostsDir string) string
		want         func(orig string) string // after uninstall
	}{
		{"replaced-line", stockV4, func(s, _ string) string { return s + later }, func(o string) string { return o + later }},
		{"appended-table", "version = 4\n[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = false\n",
			func(s, _ string) string { return "# a comment\n" + s }, func(o string) string { return "# a comment\n" + o }},
		{"appended-table-then-more", "version = 4\n",
			func(s, _ string) string { return s + "  other = 1\n" },
			func(o string) string { return o + "\n[plugins.'io.containerd.cri.v1.images'.registry]\n  other = 1\n" }},
		{"inserted-line", "version = 4\n[plugins.'io.containerd.cri.v1.images'.registry]\n  # none yet\n",
			func(s, _ string) string { return strings.Replace(s, "version = 4\n", "version = 4\nroot = '/r'\n", 1) },
			func(o string) string { return strings.Replace(o, "version = 4\n", "version = 4\nroot = '/r'\n", 1) }},
		{"config-path-changed", stockV4, func(s, h string) string { return strings.Replace(s, h, "/elsewhere", 1) }, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			hostsDir := filepath.Join(root, "certs.d")
			cfgPath := writeFile(t, root, "config.toml", tc.config)
			p, err := PlanContainerd(ContainerdOptions{HostsDir: hostsDir, ContainerdConfig: cfgPath, ContainerdVersion: "2.4.2",
				Registries: []string{"docker.io"}, EditConfig: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Apply(); err != nil {
				t.Fatal(err)
			}
			edited := tc.edit(readFile(t, cfgPath), hostsDir)
			writeFile(t, root, "config.toml", edited)
			u, err := PlanContainerdUninstall(ContainerdOptions{HostsDir: hostsDir, ContainerdConfig: cfgPath})
			if err != nil {
				t.Fatal(err)
			}
			if err := u.Apply(); err != nil {
				t.Fatal(err)
			}
			want := edited
			if tc.want != nil {
				want = tc.want(tc.config)
			}
			if got := readFile(t, cfgPath); got != want {
				t.Errorf("after uninstall:\n%q\nwant:\n%q", got, want)
			}
			if b := readFile(t, cfgPath+BackupSuffix); b != tc.config {
				t.Errorf("backup %q, want the original kept", b)
			}
		})
	}
}

// TestContainerdEditConfigNamesDroppedDirs: when the edit replaces a list (or another
// directory), setup warns about the registry directories that containerd stops reading.
func TestContainerdEditConfigNamesDroppedDirs(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	hostsDir := filepath.Join(root, "certs.d")
	docker := filepath.Join(root, "docker-certs.d")
	writeFile(t, docker, "registry.corp:5000/ca.crt", "x")
	cfgPath := writeFile(t, root, "config.toml", "version = 4\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '"+hostsDir+":"+docker+"'\n")
	p, err := PlanContainerd(ContainerdOptions{HostsDir: hostsDir, ContainerdConfig: cfgPath, ContainerdVersion: "2.4.2",
		Registries: []string{"docker.io"}, EditConfig: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(p.Findings, func(f Finding) bool {
		return f.Severity == Warning && strings.Contains(f.Message, "no longer names "+docker) && strings.Contains(f.Message, "registry.corp:5000")
	}) {
		t.Errorf("no warning about %s: %v", docker, p.Findings)
	}
}

// FuzzEditConfigRoundTrip: for any config.toml, the --edit-config edit either is refused or sets
// config_path and nothing else; and reverting it (what uninstall does to a file edited since)
// gives the original back byte for byte.
func FuzzEditConfigRoundTrip(f *testing.F) {
	for _, tc := range editConfigCases {
		f.Add(tc.config)
	}
	f.Add("[plugins]")
	f.Add("version = 3\n[plugins]\n  'io.containerd.cri.v1.images'.registry.config_path = 'a:b'\n")
	f.Fuzz(func(t *testing.T, in string) {
		if in == "" {
			return // no file: setup writes one, uninstall removes it
		}
		c := parseContainerdConfig([]byte(in))
		if c.invalid != nil {
			return
		}
		edited, err := c.editConfigPath("/want")
		if err != nil {
			return
		}
		e := parseContainerdConfig(edited)
		if e.invalid != nil || e.configPath != "/want" {
			t.Fatalf("edited: config_path %q (%v)\n%s", e.configPath, e.invalid, edited)
		}
		back, err := e.revertConfigPath(c)
		if err != nil {
			t.Fatalf("revert: %v\n--- in\n%q\n--- edited\n%q", err, in, edited)
		}
		// The original comes back, byte for byte; a file that did not end its last line may
		// come back with that line ended (the edit had to end it to add one after it).
		if string(back) != in && (strings.HasSuffix(in, "\n") || string(back) != in+"\n") {
			t.Fatalf("revert:\n%q\nwant the original:\n%q\n--- edited\n%q", back, in, edited)
		}
	})
}

// TestContainerdEditConfigHostRoot: in a pod that sees the node under --host-root, the edit
// names the hosts directory as containerd on the node does, and uninstall finds it again.
func TestContainerdEditConfigHostRoot(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	cfgPath := writeFile(t, root, "etc/containerd/config.toml", stockV4)
	o := ContainerdOptions{HostRoot: root, HostsDir: filepath.Join(root, DefaultHostsDir), Registries: []string{"docker.io"}, EditConfig: true}
	p, err := PlanContainerd(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(); err != nil {
		t.Fatal(err)
	}
	if c, err := readContainerdConfig(cfgPath); err != nil || c.configPath != DefaultHostsDir {
		t.Errorf("config_path = %q (%v), want %s", c.configPath, err, DefaultHostsDir)
	}
	u, err := PlanContainerdUninstall(ContainerdOptions{HostRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Apply(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, cfgPath); got != stockV4 {
		t.Errorf("after uninstall:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(root, DefaultHostsDir, "docker.io", "hosts.toml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("hosts.toml still there: %v", err)
	}
}
