package hostsetup

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker/config"
)

const userHostsTOML = `# Our registry setup: a corporate mirror first, then Docker Hub.
server = "https://registry-1.docker.io"

# corporate mirror, with a token header
[host."https://mirror.corp.example"]
  capabilities = ["pull", "resolve"]
  skip_verify = false
  [host."https://mirror.corp.example".header]
    x-token = "abc"

[host."https://second.example"]
  capabilities = ["pull"]
  client = [
    # a comment inside a multi-line array
    ["second.cert", "second.key"],
  ]
`

// writeFile creates dir/rel with content.
func writeFile(t *testing.T, dir, rel, content string) string {
	t.Helper()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeCertPair writes a self-signed certificate and its key as dir/name.cert and dir/name.key:
// containerd loads the files a hosts.toml names.
func writeCertPair(t *testing.T, dir, name string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, name+".cert", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeFile(t, dir, name+".key", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})))
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// containerdHosts is what containerd itself resolves for reg from the hosts directory.
func containerdHosts(t *testing.T, hostsDir, reg string) []string {
	t.Helper()
	hs, err := resolveHosts(config.HostDirFromRoot(hostsDir), reg)
	if err != nil {
		t.Fatalf("containerd's hosts.toml code: %v", err)
	}
	var out []string
	for _, h := range hs {
		out = append(out, h.scheme+"://"+h.host+h.path)
	}
	return out
}

func setupContainerd(t *testing.T, o ContainerdOptions) *Plan {
	t.Helper()
	if o.ContainerdConfig == "" {
		o.ContainerdConfig = "-"
	}
	p, err := PlanContainerd(o)
	if err != nil {
		t.Fatalf("PlanContainerd: %v", err)
	}
	if err := p.Apply(); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return p
}

func TestContainerdMergeKeepsUserEntries(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "docker.io/hosts.toml", userHostsTOML)
	writeCertPair(t, filepath.Join(dir, "docker.io"), "second")
	before := containerdHosts(t, dir, "docker.io")

	p := setupContainerd(t, ContainerdOptions{HostsDir: dir, Registries: []string{"docker.io"}})
	if len(p.Changes) != 1 || p.Changes[0].Note != "merged" {
		t.Fatalf("changes: %+v", p.Changes)
	}
	got := readFile(t, file)
	// The only edit is shoal's block, inserted before the first host: every byte the user
	// wrote (comments included) is still there, in order.
	block := "# shoal, the node-local mirror, is tried first (`shoal setup containerd --uninstall` removes it).\n" +
		"[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n"
	if !strings.Contains(got, block) || strings.Replace(got, block, "", 1) != userHostsTOML {
		t.Errorf("merged file is not the user's file plus shoal's block:\n%s", got)
	}
	after := containerdHosts(t, dir, "docker.io")
	want := append([]string{"http://127.0.0.1:5000/v2"}, before...)
	if !slices.Equal(after, want) {
		t.Errorf("containerd resolves %v, want %v", after, want)
	}
	if b := readFile(t, file+BackupSuffix); b != userHostsTOML {
		t.Errorf("backup = %q, want the original", b)
	}
	if st, _ := os.Stat(file); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want the original 0640", st.Mode().Perm())
	}

	// Idempotent: a second run changes nothing.
	p2, err := PlanContainerd(ContainerdOptions{HostsDir: dir, Registries: []string{"docker.io"}, ContainerdConfig: "-"})
	if err != nil {
		t.Fatal(err)
	}
	if len(p2.Changes) != 0 || p2.Diff() != "" {
		t.Errorf("second run would change:\n%s", p2.Diff())
	}

	// Uninstall gives the original back and removes the backup.
	u, err := PlanContainerdUninstall(ContainerdOptions{HostsDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Apply(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, file); got != userHostsTOML {
		t.Errorf("after uninstall:\n%s\nwant the original", got)
	}
	if _, err := os.Stat(file + BackupSuffix); !os.IsNotExist(err) {
		t.Errorf("backup still there after uninstall: %v", err)
	}
}

func TestContainerdCreateAndUninstall(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := setupContainerd(t, ContainerdOptions{HostsDir: dir, Registries: []string{"docker.io", "ghcr.io", "_default", "localhost:5001"}})
	if len(p.Changes) != 4 {
		t.Fatalf("want 4 files created, got %+v", p.Changes)
	}
	cases := map[string][]string{
		"docker.io": {"http://127.0.0.1:5000/v2", "https://registry-1.docker.io/v2"},
		"ghcr.io":   {"http://127.0.0.1:5000/v2", "https://ghcr.io/v2"},
		"_default":  {"http://127.0.0.1:5000/v2", "https://registry.invalid/v2"},
		// containerd's own default for a loopback registry: HTTPS first, falling back to HTTP.
		"localhost:5001": {"http://127.0.0.1:5000/v2", "https://localhost:5001/v2"},
	}
	for reg, want := range cases {
		if got := containerdHosts(t, dir, reg); !slices.Equal(got, want) {
			t.Errorf("%s: containerd resolves %v, want %v", reg, got, want)
		}
	}
	if err := VerifyContainerd(dir, []string{"docker.io", "_default", "quay.io"}, ""); err != nil {
		t.Errorf("VerifyContainerd: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "docker.io", "hosts.toml"+BackupSuffix)); !os.IsNotExist(err) {
		t.Errorf("a backup for a file that did not exist: %v", err)
	}

	u, err := PlanContainerdUninstall(ContainerdOptions{HostsDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Apply(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("uninstall left %v in the hosts dir", ents)
	}
	if err := VerifyContainerd(dir, []string{"docker.io"}, ""); err == nil || !strings.Contains(err.Error(), "registry-1.docker.io") {
		t.Errorf("VerifyContainerd after uninstall: %v, want an error naming registry-1.docker.io", err)
	}
}

func TestContainerdDefaultRegistriesAndBypass(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, dir, "quay.io/hosts.toml", "server = \"https://quay.io\"\n")
	writeCertPair(t, filepath.Join(dir, "registry.local_5000_"), "ca")
	if err := os.Rename(filepath.Join(dir, "registry.local_5000_", "ca.cert"), filepath.Join(dir, "registry.local_5000_", "ca.crt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "registry.local_5000_", "ca.key")); err != nil {
		t.Fatal(err)
	}
	p := setupContainerd(t, ContainerdOptions{HostsDir: dir})
	var paths []string
	for _, c := range p.Changes {
		paths = append(paths, strings.TrimPrefix(c.Path, dir+"/"))
	}
	if want := []string{"_default/hosts.toml", "quay.io/hosts.toml"}; !slices.Equal(paths, want) {
		t.Errorf("default registries wrote %v, want %v", paths, want)
	}
	var found bool
	for _, f := range p.Findings {
		if f.Severity == Warning && strings.Contains(f.Message, "registry.local:5000 bypass shoal") && strings.Contains(f.Fix, "--registries") {
			found = true
		}
	}
	if !found {
		t.Errorf("no warning about registry.local:5000 (certificates only) bypassing _default: %v", p.Findings)
	}

	// Named explicitly, the certificate directory gets a hosts.toml that keeps its CA.
	setupContainerd(t, ContainerdOptions{HostsDir: dir, Registries: []string{"registry.local:5000"}})
	got := readFile(t, filepath.Join(dir, "registry.local_5000_", "hosts.toml"))
	if !strings.Contains(got, `ca = ["ca.crt"]`) || !strings.Contains(got, `server = "https://registry.local:5000"`) {
		t.Errorf("hosts.toml for a certificate directory:\n%s", got)
	}
	if h := containerdHosts(t, dir, "registry.local:5000"); len(h) != 2 || h[0] != "http://127.0.0.1:5000/v2" {
		t.Errorf("registry.local:5000 resolves %v", h)
	}
}

func TestContainerdMovesShoalFirst(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	orig := `server = "https://ghcr.io"

[host."https://corp.example"]
  capabilities = ["pull"]

[host."http://127.0.0.1:5000/"]
  capabilities = ["pull", "resolve", "push"]
  dial_timeout = "1s"
`
	file := writeFile(t, dir, "ghcr.io/hosts.toml", orig)
	setupContainerd(t, ContainerdOptions{HostsDir: dir, Registries: []string{"ghcr.io"}})
	want := []string{"http://127.0.0.1:5000/v2", "https://corp.example/v2", "https://ghcr.io/v2"}
	if got := containerdHosts(t, dir, "ghcr.io"); !slices.Equal(got, want) {
		t.Errorf("resolves %v, want %v\n%s", got, want, readFile(t, file))
	}
	if got := readFile(t, file); strings.Count(got, "127.0.0.1:5000") != 1 || strings.Contains(got, "push") {
		t.Errorf("the old shoal entry was not replaced:\n%s", got)
	}
}

func TestContainerdDryRunDiff(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "docker.io/hosts.toml", userHostsTOML)
	p, err := PlanContainerd(ContainerdOptions{HostsDir: dir, Registries: []string{"docker.io", "ghcr.io"}, ContainerdConfig: "-"})
	if err != nil {
		t.Fatal(err)
	}
	d := p.Diff()
	for _, want := range []string{
		"--- " + file + "\n+++ " + file + "\n",
		"+[host.\"http://127.0.0.1:5000\"]\n",
		" [host.\"https://mirror.corp.example\"]\n", // context line
		"--- /dev/null\n+++ " + filepath.Join(dir, "ghcr.io", "hosts.toml") + "\n",
	} {
		if !strings.Contains(d, want) {
			t.Errorf("diff lacks %q:\n%s", want, d)
		}
	}
	if readFile(t, file) != userHostsTOML {
		t.Error("planning changed the file")
	}
	if _, err := os.Stat(filepath.Join(dir, "ghcr.io")); !os.IsNotExist(err) {
		t.Error("planning created a directory")
	}
}

func TestContainerdRefusesInvalidFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := "server = \"https://registry-1.docker.io\"\n[host.\"http://a\"]\ncapabilities = [\"pull\"\n"
	file := writeFile(t, dir, "docker.io/hosts.toml", bad)
	_, err := PlanContainerd(ContainerdOptions{HostsDir: dir, Registries: []string{"docker.io"}, ContainerdConfig: "-"})
	if err == nil || !strings.Contains(err.Error(), "not a valid hosts.toml") || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("err = %v, want one naming the file as invalid at line 3", err)
	}
	if readFile(t, file) != bad {
		t.Error("an invalid file was changed")
	}
}

func TestContainerdUninstallKeepsLaterEdits(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "docker.io/hosts.toml", userHostsTOML)
	writeCertPair(t, filepath.Join(dir, "docker.io"), "second")
	setupContainerd(t, ContainerdOptions{HostsDir: dir, Registries: []string{"docker.io"}})
	edited := readFile(t, file) + "\n[host.\"https://added-later.example\"]\n  capabilities = [\"pull\"]\n"
	writeFile(t, dir, "docker.io/hosts.toml", edited)

	// Setup again moves nothing (shoal is still first) and never overwrites the first backup.
	setupContainerd(t, ContainerdOptions{HostsDir: dir, Registries: []string{"docker.io"}})
	if readFile(t, file+BackupSuffix) != userHostsTOML {
		t.Error("the backup of the user's original was overwritten")
	}

	u, err := PlanContainerdUninstall(ContainerdOptions{HostsDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Changes) != 1 || !strings.Contains(u.Changes[0].Note, "kept") {
		t.Fatalf("uninstall plan: %+v", u.Changes)
	}
	if err := u.Apply(); err != nil {
		t.Fatal(err)
	}
	want := []string{"https://mirror.corp.example/v2", "https://second.example/v2", "https://added-later.example/v2", "https://registry-1.docker.io/v2"}
	if got := containerdHosts(t, dir, "docker.io"); !slices.Equal(got, want) {
		t.Errorf("after uninstall containerd resolves %v, want %v", got, want)
	}
	if got := readFile(t, file); strings.Contains(got, "shoal") || strings.Contains(got, "127.0.0.1:5000") {
		t.Errorf("shoal's entry is still there:\n%s", got)
	}
}

func TestContainerdRefusesFileContainerdIgnores(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := "server = \"https://registry-1.docker.io\"\n[host.\"http://a\"]\ncapabilities = [\"pul\"]\n"
	writeFile(t, dir, "docker.io/hosts.toml", bad)
	_, err := PlanContainerd(ContainerdOptions{HostsDir: dir, Registries: []string{"docker.io"}, ContainerdConfig: "-"})
	if err == nil || !strings.Contains(err.Error(), "containerd ignores it") || !strings.Contains(err.Error(), "unknown capability") {
		t.Errorf("err = %v, want containerd's own complaint (unknown capability)", err)
	}
}

func TestContainerdOptionErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, o := range map[string]ContainerdOptions{
		"mirror-not-url":   {Mirror: "127.0.0.1:5000"},
		"mirror-quote":     {Mirror: `http://127.0.0.1:5000/"x`},
		"mirror-userinfo":  {Mirror: "http://u:p@127.0.0.1:5000"},
		"registry-path":    {Registries: []string{"docker.io/library"}},
		"registry-dotdot":  {Registries: []string{".."}},
		"registry-default": {Registries: []string{"_default/x"}},
	} {
		o.HostsDir, o.ContainerdConfig = dir, "-"
		if _, err := PlanContainerd(o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// FuzzMergeHostsTOML: for any valid hosts.toml, merging puts shoal first, keeps every other host
// in order (checked with containerd's own parser) and is a fixed point; stripping undoes it.
func FuzzMergeHostsTOML(f *testing.F) {
	f.Add(userHostsTOML)
	f.Add("")
	f.Add("server = \"https://x\"\n")
	f.Add("[host.\"http://127.0.0.1:5000\"]\n[host.\"https://a\"]\n# c\n[host.\"http://127.0.0.1:5000\".header]\nx = \"y\"\n")
	f.Add("[header]\nx = \"1\"\n\n\n# trailing comment")
	f.Fuzz(func(t *testing.T, in string) {
		if _, err := splitSections([]byte(in)); err != nil {
			return
		}
		dir := t.TempDir()
		if _, err := resolveHostsContent("docker.io", dir, []byte(in)); err != nil {
			return // containerd itself cannot use it; setup refuses such files
		}
		secs, _ := splitSections([]byte(in))
		for _, s := range secs {
			if len(s.key) >= 2 && s.key[0] == "host" {
				if id, err := parseHostID(s.key[1]); err != nil || id.host == "" {
					return // containerd skips or mangles such keys; the check in planRegistry refuses them
				}
			}
		}
		merged, err := mergeHostsTOML([]byte(in), DefaultMirror)
		if err != nil {
			t.Fatalf("merge of a valid file failed: %v", err)
		}
		if f, err := checkMergedHosts("docker.io", dir, []byte(in), merged, DefaultMirror); err != nil || f != nil {
			t.Fatalf("%v %v\n--- in\n%s\n--- merged\n%s", err, f, in, merged)
		}
		again, err := mergeHostsTOML(merged, DefaultMirror)
		if err != nil || string(again) != string(merged) {
			t.Fatalf("not idempotent (%v):\n%s\n---\n%s", err, merged, again)
		}
		stripped, had, err := stripHostsTOML(merged, DefaultMirror)
		if err != nil || !had {
			t.Fatalf("strip: %v %v", had, err)
		}
		if _, err := splitSections(stripped); err != nil {
			t.Fatalf("stripped file does not parse: %v\n%s", err, stripped)
		}
	})
}
