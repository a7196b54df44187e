package hostsetup

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const userDaemonJSON = `{
    "debug": true,
    "registry-mirrors": ["https://mirror.gcr.io"],
    "log-opts": {
        "max-size": "10m",
        "max-file": "3"
    },
    "insecure-registries": ["registry.local:5000"]
}
`

func mirrorsOf(t *testing.T, b []byte) []string {
	t.Helper()
	var c struct {
		Mirrors []string `json:"registry-mirrors"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("daemon.json does not parse: %v\n%s", err, b)
	}
	return c.Mirrors
}

func TestDockerMergeKeepsOtherKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "daemon.json", userDaemonJSON)
	p, err := PlanDocker(DockerOptions{DaemonJSON: file})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.Diff(), `-    "registry-mirrors": ["https://mirror.gcr.io"],`+"\n"+`+    "registry-mirrors": ["http://127.0.0.1:5000", "https://mirror.gcr.io"],`) {
		t.Errorf("diff:\n%s", p.Diff())
	}
	if p.Worst() != Warning || !strings.Contains(p.Findings[0].Fix, "systemctl reload docker") {
		t.Errorf("findings %v, want the reload/restart warning first", p.Findings)
	}
	if err := p.Apply(); err != nil {
		t.Fatal(err)
	}
	got := readFile(t, file)
	// One line changed, every other byte as the user wrote it.
	if want := strings.Replace(userDaemonJSON, `["https://mirror.gcr.io"]`, `["http://127.0.0.1:5000", "https://mirror.gcr.io"]`, 1); got != want {
		t.Errorf("merged:\n%s\nwant:\n%s", got, want)
	}
	if readFile(t, file+BackupSuffix) != userDaemonJSON {
		t.Error("backup is not the original")
	}
	again, err := PlanDocker(DockerOptions{DaemonJSON: file})
	if err != nil || len(again.Changes) != 0 {
		t.Errorf("second run: %v %+v", err, again.Changes)
	}
	if slices.ContainsFunc(again.Findings, func(f Finding) bool { return f.Severity == Warning }) {
		t.Errorf("no change, yet a reload warning: %v", again.Findings)
	}
	u, err := PlanDockerUninstall(DockerOptions{DaemonJSON: file})
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Apply(); err != nil {
		t.Fatal(err)
	}
	if readFile(t, file) != userDaemonJSON {
		t.Errorf("uninstall did not restore the original:\n%s", readFile(t, file))
	}
	if _, err := os.Stat(file + BackupSuffix); !os.IsNotExist(err) {
		t.Error("backup left behind")
	}
}

func TestDockerMergeShapes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, in, want string
	}{
		{"no-key", "{\n\t\"debug\": true\n}\n", "{\n\t\"debug\": true,\n\t\"registry-mirrors\": [\"http://127.0.0.1:5000\"]\n}\n"},
		{"empty-object", "{}", "{\n  \"registry-mirrors\": [\"http://127.0.0.1:5000\"]\n}"},
		{"empty-file", "", "{\n  \"registry-mirrors\": [\"http://127.0.0.1:5000\"]\n}\n"},
		{"shoal-not-first", `{"registry-mirrors": ["https://a.example", "http://127.0.0.1:5000/"]}`,
			`{"registry-mirrors": ["http://127.0.0.1:5000", "https://a.example"]}`},
		{"html-chars-kept", `{"registry-mirrors": ["https://a.example/?x=1&y=<2>"]}`,
			`{"registry-mirrors": ["http://127.0.0.1:5000", "https://a.example/?x=1&y=<2>"]}`},
		{"null-mirrors", `{"registry-mirrors": null}`, `{"registry-mirrors": ["http://127.0.0.1:5000"]}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := mergeDaemonJSON([]byte(tc.in), DefaultMirror)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("merge(%q) =\n%q\nwant\n%q", tc.in, got, tc.want)
			}
			if m := mirrorsOf(t, got); m[0] != DefaultMirror {
				t.Errorf("mirrors %v", m)
			}
		})
	}
}

func TestDockerRefusesBadFiles(t *testing.T) {
	t.Parallel()
	for name, in := range map[string]string{
		"not-json":        `{"debug": true,}`,
		"array":           `["registry-mirrors"]`,
		"mirrors-string":  `{"registry-mirrors": "http://x"}`,
		"duplicate-key":   `{"registry-mirrors": [], "registry-mirrors": []}`,
		"trailing-object": `{} {}`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			file := writeFile(t, t.TempDir(), "daemon.json", in)
			if _, err := PlanDocker(DockerOptions{DaemonJSON: file}); err == nil {
				t.Errorf("no error for %q", in)
			}
			if readFile(t, file) != in {
				t.Error("file changed")
			}
		})
	}
}

func TestDockerCreateUninstallAndEdits(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "docker", "daemon.json")
	p, err := PlanDocker(DockerOptions{DaemonJSON: file})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(); err != nil {
		t.Fatal(err)
	}
	if m := mirrorsOf(t, []byte(readFile(t, file))); !slices.Equal(m, []string{DefaultMirror}) {
		t.Errorf("created %v", m)
	}
	u, _ := PlanDockerUninstall(DockerOptions{DaemonJSON: file})
	if err := u.Apply(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("uninstall kept the file setup created: %v", err)
	}

	// Edited after setup: uninstall takes shoal out and keeps the edit and the backup.
	writeFile(t, dir, "docker/daemon.json", `{"debug": false}`)
	p, _ = PlanDocker(DockerOptions{DaemonJSON: file})
	if err := p.Apply(); err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(readFile(t, file), `"debug": false`, `"debug": true`, 1)
	writeFile(t, dir, "docker/daemon.json", edited)
	u, _ = PlanDockerUninstall(DockerOptions{DaemonJSON: file})
	if err := u.Apply(); err != nil {
		t.Fatal(err)
	}
	got := readFile(t, file)
	if !strings.Contains(got, `"debug": true`) || strings.Contains(got, "127.0.0.1:5000") {
		t.Errorf("after uninstall:\n%s", got)
	}
	if readFile(t, file+BackupSuffix) != `{"debug": false}` {
		t.Error("backup lost")
	}
}

func TestDockerFindingsForRemoteHTTPMirror(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "daemon.json")
	p, err := PlanDocker(DockerOptions{DaemonJSON: file, Mirror: "http://10.0.0.7:5000"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(p.Findings, func(f Finding) bool {
		return f.Severity == Warning && strings.Contains(f.Fix, `"10.0.0.7:5000"`) && strings.Contains(f.Fix, "insecure-registries")
	}) {
		t.Errorf("no insecure-registries advice: %v", p.Findings)
	}
}
