package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ---- skopeo ----

// skopeoCopy copies docker://shoalAddr/ref to dst ("oci:DIR:TAG" or "dir:DIR") with all
// instances of a multi-arch image when all is set. It returns skopeo's output.
func skopeoCopy(ctx context.Context, t *testing.T, shoalAddr, ref, dst string, all bool, extra ...string) (string, error) {
	t.Helper()
	argv := []string{tool(t, "skopeo"), "--insecure-policy", "copy", "--src-tls-verify=false", "--retry-times=0"}
	if all {
		argv = append(argv, "--all")
	}
	argv = append(argv, extra...)
	argv = append(argv, "docker://"+shoalAddr+"/"+ref, dst)
	// An empty auth file: skopeo must not pick up the machine's credentials.
	auth := filepath.Join(t.TempDir(), "auth.json")
	if err := os.WriteFile(auth, []byte(`{"auths":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return runCmd(ctx, 5*time.Minute, []string{"REGISTRY_AUTH_FILE=" + auth}, argv...)
}

// cranePull pulls docker://shoalAddr/ref into an OCI layout at dst with crane.
func cranePull(ctx context.Context, t *testing.T, shoalAddr, ref, dst string) (string, error) {
	t.Helper()
	return runCmd(ctx, 5*time.Minute, []string{"DOCKER_CONFIG=" + t.TempDir()},
		tool(t, "crane"), "pull", "--insecure", "--format", "oci", shoalAddr+"/"+ref, dst)
}

// ociLayoutDigest returns the digest of the (single) manifest an OCI layout's index.json names.
func ociLayoutDigest(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatalf("oci layout: %v", err)
	}
	var idx struct {
		Manifests []struct {
			Digest string `json:"digest"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(b, &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("oci layout index.json: %v: %s", err, b)
	}
	return idx.Manifests[0].Digest
}

// ociLayoutBlobs lists the blob digests present in an OCI layout, checking each file's hash.
func ociLayoutBlobs(t *testing.T, dir string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	ents, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatalf("oci layout: %v", err)
	}
	for _, e := range ents {
		d := "sha256:" + e.Name()
		if got := fileDigest(t, filepath.Join(dir, "blobs", "sha256", e.Name())); got != d {
			t.Errorf("oci layout blob %s has digest %s", d, got)
		}
		out[d] = true
	}
	return out
}

// dirManifestDigest returns the digest of manifest.json in a skopeo dir: copy (the bytes as served).
func dirManifestDigest(t *testing.T, dir string) string {
	t.Helper()
	return fileDigest(t, filepath.Join(dir, "manifest.json"))
}

func fileDigest(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytesDigest(b)
}

func bytesDigest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// ---- containerd / ctr ----

// containerd is a containerd daemon with its own root, state and socket (no CRI).
type containerd struct {
	Sock string
	Root string
	proc *proc
}

func startContainerd(t *testing.T) *containerd {
	t.Helper()
	requireRoot(t)
	bin := debianTool(t, "containerd")
	dir := t.TempDir()
	c := &containerd{Sock: filepath.Join(dir, "c.sock"), Root: dir}
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  level = "info"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %[5]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Sock, c.Sock+".ttrpc", filepath.Join(dir, "opt"))
	cfgPath := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// Registered before startProc, so it runs after containerd has stopped.
	t.Cleanup(func() { unmountUnder(dir) })
	c.proc = startProc(t, "containerd", nil, bin, "--config", cfgPath)
	ctrBin := debianTool(t, "ctr")
	eventually(t, 30*time.Second, c.proc, "containerd ready", func() error {
		_, err := runCmd(t.Context(), 10*time.Second, nil, ctrBin, "--address", c.Sock, "version")
		return err
	})
	return c
}

// debianTool prefers Debian's /usr/bin/NAME (containerd 1.6) over another build first on PATH
// (a containerd 2.x in GOPATH/bin, which .ci/run puts first): these tests are about 1.6.
func debianTool(t *testing.T, name string) string {
	if _, err := os.Stat(filepath.Join("/usr/bin", name)); err == nil {
		return filepath.Join("/usr/bin", name)
	}
	return tool(t, name)
}

// ctr runs ctr against c in namespace "e2e".
func (c *containerd) ctr(ctx context.Context, t *testing.T, args ...string) (string, error) {
	t.Helper()
	argv := append([]string{debianTool(t, "ctr"), "--address", c.Sock, "--namespace", "e2e"}, args...)
	return runCmd(ctx, 5*time.Minute, nil, argv...)
}

// imageDigest returns the target digest containerd recorded for an image name.
func (c *containerd) imageDigest(t *testing.T, ref string) string {
	t.Helper()
	out, err := c.ctr(t.Context(), t, "images", "ls")
	if err != nil {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == ref {
			return f[2]
		}
	}
	t.Fatalf("ctr images ls: no %s in\n%s", ref, out)
	return ""
}

// content returns the digests in containerd's content store.
func (c *containerd) content(t *testing.T) map[string]bool {
	t.Helper()
	out, err := c.ctr(t.Context(), t, "content", "ls", "-q")
	if err != nil {
		t.Fatalf("ctr content ls: %v\n%s", err, out)
	}
	m := map[string]bool{}
	for _, l := range strings.Fields(out) {
		m[l] = true
	}
	return m
}

// hostsDir writes DIR/<host>/hosts.toml sending pulls for host to shoal, with an unreachable
// `server` so that containerd cannot fall back to the registry itself.
func hostsDir(t *testing.T, shoalURL string, hosts ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, h := range hosts {
		if err := os.MkdirAll(filepath.Join(dir, h), 0o755); err != nil {
			t.Fatal(err)
		}
		toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", unreachableURL, shoalURL)
		if err := os.WriteFile(filepath.Join(dir, h, "hosts.toml"), []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// unreachableURL is a loopback port nothing listens on (discard): clients' fallbacks go there.
const unreachableURL = "http://127.0.0.1:9"

// ---- dockerd / docker ----

// dockerd is a Docker engine with its own data-root, exec-root and socket, using a test containerd,
// with shoal as its registry mirror.
type dockerd struct {
	Host   string // unix://...
	config string // DOCKER_CONFIG dir for the CLI
	proc   *proc
}

func startDockerd(t *testing.T, c *containerd, mirrorURL string) *dockerd {
	t.Helper()
	requireRoot(t)
	bin := tool(t, "dockerd")
	dir := t.TempDir()
	mirrorHost := strings.TrimPrefix(mirrorURL, "http://")
	cfg := map[string]any{
		"data-root":           filepath.Join(dir, "data"),
		"exec-root":           filepath.Join(dir, "exec"),
		"pidfile":             filepath.Join(dir, "dockerd.pid"),
		"hosts":               []string{"unix://" + filepath.Join(dir, "docker.sock")},
		"containerd":          c.Sock,
		"iptables":            false,
		"ip-masq":             false,
		"bridge":              "none",
		"storage-driver":      "overlay2",
		"registry-mirrors":    []string{mirrorURL},
		"insecure-registries": []string{mirrorHost},
		"debug":               false,
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	cfgPath := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	d := &dockerd{Host: "unix://" + filepath.Join(dir, "docker.sock"), config: filepath.Join(dir, "cli")}
	if err := os.MkdirAll(d.config, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmountUnder(dir) })
	// Docker Hub itself is only reachable through a proxy that is a closed loopback port, so a
	// fallback after a mirror failure cannot leave the machine (and fails fast).
	env := []string{"HTTP_PROXY=" + unreachableURL, "HTTPS_PROXY=" + unreachableURL, "NO_PROXY=127.0.0.1,localhost",
		"http_proxy=" + unreachableURL, "https_proxy=" + unreachableURL, "no_proxy=127.0.0.1,localhost"}
	d.proc = startProc(t, "dockerd", env, bin, "--config-file", cfgPath)
	eventually(t, 60*time.Second, d.proc, "dockerd ready", func() error {
		_, err := d.docker(t.Context(), t, "version")
		return err
	})
	return d
}

// dockerCLI prefers Debian's docker client (same version as the engine) over others on PATH.
func dockerCLI(t *testing.T) string {
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		return "/usr/bin/docker"
	}
	return tool(t, "docker")
}

func (d *dockerd) docker(ctx context.Context, t *testing.T, args ...string) (string, error) {
	t.Helper()
	argv := append([]string{dockerCLI(t)}, args...)
	return runCmd(ctx, 5*time.Minute, []string{"DOCKER_HOST=" + d.Host, "DOCKER_CONFIG=" + d.config}, argv...)
}

// ---- assertions on upstream traffic ----

// assertOneGETPerBlob checks that each blob was fetched upstream exactly once.
func assertOneGETPerBlob(t *testing.T, reqs []proxyReq, blobs []string) {
	t.Helper()
	for _, b := range blobs {
		if n := count(reqs, http.MethodGet, "/blobs/"+b); n != 1 {
			t.Errorf("upstream GETs of blob %s: %d, want exactly 1; upstream saw:\n%s", b, n, describe(reqs))
		}
	}
}

// assertNoUpstreamFetch checks that reqs has no blob GET and no manifest GET (HEADs allowed).
func assertNoUpstreamFetch(t *testing.T, reqs []proxyReq) {
	t.Helper()
	for _, r := range reqs {
		if r.Method == http.MethodGet && (strings.Contains(r.Path, "/blobs/") || strings.Contains(r.Path, "/manifests/")) {
			t.Errorf("upstream fetch on a cached pull: %s %s; upstream saw:\n%s", r.Method, r.Path, describe(reqs))
			return
		}
	}
}
