package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// initContainerArgs reads the args of a DaemonSet's init container from contrib/kubernetes.
func initContainerArgs(t *testing.T, manifest, container string) []string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "contrib/kubernetes", manifest))
	if err != nil {
		t.Fatal(err)
	}
	var ds struct {
		Spec struct {
			Template struct {
				Spec struct {
					InitContainers []struct {
						Name string   `yaml:"name"`
						Args []string `yaml:"args"`
					} `yaml:"initContainers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(b, &ds); err != nil {
		t.Fatalf("%s: %v", manifest, err)
	}
	for _, c := range ds.Spec.Template.Spec.InitContainers {
		if c.Name == container {
			return c.Args
		}
	}
	t.Fatalf("%s: no init container %s", manifest, container)
	return nil
}

// asOnNode rewrites init container args for a node whose root is nodeRoot (the pod mounts the
// node's /etc/containerd under /host) and whose shoal listens on mirrorURL.
func asOnNode(t *testing.T, args []string, nodeRoot, mirrorURL string) []string {
	t.Helper()
	var out []string
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		switch {
		case ok && k == "--mirror":
			if v != "http://127.0.0.1:5000" {
				t.Errorf("init container sends pulls to %s, the DaemonSet's mirror listens on 127.0.0.1:5000", v)
			}
			a = k + "=" + mirrorURL
		case ok && v == "/host":
			a = k + "=" + nodeRoot
		case ok && strings.HasPrefix(v, "/host/"):
			a = k + "=" + filepath.Join(nodeRoot, strings.TrimPrefix(v, "/host/"))
		}
		out = append(out, a)
	}
	return out
}

// TestDeployInitContainerThenCtrPull plays the DaemonSet's init container on a node whose
// containerd hosts directory already sends Docker Hub pulls to the user's own mirror: setup puts
// shoal first and keeps the user's entry (and a backup); a real `ctr` pull then goes through
// shoal; with shoal stopped, the next pull falls back to the user's mirror, so the kept entry
// works; the uninstall DaemonSet's init container gives the original file back.
func TestDeployInitContainerThenCtrPull(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	up := upstreams(t)
	hub := startUpstreamProxy(t, up.Open.URL)  // Docker Hub as shoal reaches it
	corp := startUpstreamProxy(t, up.Open.URL) // the user's own mirror, already in hosts.toml
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + hub.URL}})

	node := t.TempDir()
	hostsDir := filepath.Join(node, "etc/containerd/certs.d")
	userFile := filepath.Join(hostsDir, "docker.io", "hosts.toml")
	userHosts := fmt.Sprintf("# Our pull-through mirror first, then Docker Hub.\nserver = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"2s\"\n",
		unreachableURL, corp.URL)
	for p, content := range map[string]string{
		userFile: userHosts,
		filepath.Join(node, "etc/containerd/config.toml"): "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
	} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	setup := append([]string{shoalBin}, asOnNode(t, initContainerArgs(t, "base/daemonset.yaml", "setup-containerd"), node, s.URL)...)
	t.Logf("init container: %q", setup)
	out, err := runCmd(t.Context(), time.Minute, nil, setup...)
	if err != nil {
		t.Fatalf("init container: %v\n%s", err, out)
	}
	for _, want := range []string{"merged " + userFile + " (backup: " + userFile + ".shoal-backup)", "created " + filepath.Join(hostsDir, "_default", "hosts.toml")} {
		if !strings.Contains(out, want) {
			t.Errorf("init container output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "problem:") || strings.Contains(out, "warning:") {
		t.Errorf("the checks complain about a correct containerd config:\n%s", out)
	}
	merged := readText(t, userFile)
	if !strings.Contains(merged, userHosts[strings.Index(userHosts, "[host."):]) || !strings.Contains(merged, "# Our pull-through mirror first") ||
		strings.Index(merged, s.URL) > strings.Index(merged, corp.URL) {
		t.Errorf("merged hosts.toml does not put shoal before the user's mirror, or lost the user's lines:\n%s", merged)
	}
	if readText(t, userFile+".shoal-backup") != userHosts {
		t.Error("the backup is not the user's original")
	}
	// The pod restarts: the init container runs again and changes nothing.
	if out, err := runCmd(t.Context(), time.Minute, nil, setup...); err != nil || strings.Count(out, "unchanged ") != 2 {
		t.Errorf("second run: %v\n%s", err, out)
	}

	c := startContainerd(t)
	pull := func(ref string) {
		t.Helper()
		if out, err := c.ctr(t.Context(), t, "image", "pull", "--hosts-dir", hostsDir, ref); err != nil {
			t.Fatalf("ctr pull %s: %v\n%s", ref, err, out)
		}
	}
	hello := "docker.io/" + up.Img.Hello.Ref()
	pull(hello)
	if got := c.imageDigest(t, hello); got != up.Img.Hello.Digest {
		t.Errorf("containerd recorded %s, want %s", got, up.Img.Hello.Digest)
	}
	if n := count(hub.requests(), http.MethodGet, ""); n == 0 {
		t.Error("the pull did not go through shoal (its upstream saw nothing)")
	}
	if r := corp.requests(); len(r) != 0 {
		t.Errorf("the user's mirror was asked although shoal answered:\n%s", describe(r))
	}

	// shoal down: containerd goes on to the user's mirror.
	s.stop()
	small := "docker.io/" + up.Img.Small.Ref()
	pull(small)
	if got := c.imageDigest(t, small); got != up.Img.Small.Digest {
		t.Errorf("containerd recorded %s, want %s", got, up.Img.Small.Digest)
	}
	if n := count(corp.requests(), http.MethodGet, ""); n == 0 {
		t.Error("with shoal down the pull did not fall back to the user's mirror")
	}

	// Uninstall as the uninstall DaemonSet does.
	uninstall := append([]string{shoalBin}, asOnNode(t, initContainerArgs(t, "uninstall/daemonset.yaml", "uninstall-containerd"), node, s.URL)...)
	if out, err := runCmd(t.Context(), time.Minute, nil, uninstall...); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if got := readText(t, userFile); got != userHosts {
		t.Errorf("after uninstall:\n%s\nwant the user's original:\n%s", got, userHosts)
	}
	if _, err := os.Stat(filepath.Join(hostsDir, "_default")); !os.IsNotExist(err) {
		t.Errorf("uninstall left the _default directory setup created: %v", err)
	}
	if _, err := os.Stat(userFile + ".shoal-backup"); !os.IsNotExist(err) {
		t.Errorf("uninstall left the backup: %v", err)
	}
}

func readText(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDeployRegistriesConf: a containers/image client (skopeo, as Podman and CRI-O would) pulls a
// Docker Hub name through shoal with the contrib/podman example as its registries.conf.
func TestDeployRegistriesConf(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	hub := startUpstreamProxy(t, up.Open.URL)
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + hub.URL}})
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.ReplaceAll(readText(t, filepath.Join(root, "contrib/podman/shoal.conf")), "127.0.0.1:5000", s.Addr)
	dir := t.TempDir()
	confPath := filepath.Join(dir, "registries.conf")
	auth := filepath.Join(dir, "auth.json")
	for p, c := range map[string]string{confPath: conf, auth: `{"auths":{}}`} {
		if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Should the mirror fail, skopeo falls back to Docker Hub itself: through a proxy that is a
	// closed loopback port, so that it fails here instead of leaving the machine.
	env := []string{"REGISTRY_AUTH_FILE=" + auth,
		"HTTPS_PROXY=" + unreachableURL, "HTTP_PROXY=" + unreachableURL, "https_proxy=" + unreachableURL, "http_proxy=" + unreachableURL,
		"NO_PROXY=127.0.0.1", "no_proxy=127.0.0.1"}
	// skopeo 1.9 reads --registries-conf, not CONTAINERS_REGISTRIES_CONF.
	out, err := runCmd(t.Context(), 2*time.Minute, env, tool(t, "skopeo"), "--registries-conf", confPath, "--insecure-policy", "copy", "--retry-times=0",
		"docker://docker.io/"+up.Img.Hello.Ref(), "oci:"+filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatalf("skopeo copy with the example registries.conf: %v\n%s", err, out)
	}
	if n := count(hub.requests(), http.MethodGet, ""); n == 0 {
		t.Errorf("the pull did not go through shoal:\n%s", out)
	}
}

// TestDeploySetupDockerThenPull: `shoal setup docker` merges shoal into the daemon.json of a
// running dockerd (keeping its other settings and mirrors), the reload README advises
// (SIGHUP, what `systemctl reload docker` sends) makes dockerd use it, and `docker pull` of a
// Docker Hub name then goes through shoal.
func TestDeploySetupDockerThenPull(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	hub := startUpstreamProxy(t, up.Open.URL)
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + hub.URL}})
	c := startContainerd(t)
	d := startDockerd(t, c, unreachableURL) // a mirror that does not answer: until setup, pulls fail
	cfg := ""
	for i, a := range d.proc.cmd.Args {
		if a == "--config-file" && i+1 < len(d.proc.cmd.Args) {
			cfg = d.proc.cmd.Args[i+1]
		}
	}
	if cfg == "" {
		t.Fatalf("dockerd runs without --config-file: %v", d.proc.cmd.Args)
	}
	before := readText(t, cfg)

	out, err := runCmd(t.Context(), time.Minute, nil, shoalBin, "setup", "docker", "--daemon-json", cfg, "--mirror", s.URL)
	if err != nil {
		t.Fatalf("shoal setup docker: %v\n%s", err, out)
	}
	if !strings.Contains(out, "systemctl reload docker") {
		t.Errorf("setup docker does not say how to make dockerd read the file:\n%s", out)
	}
	after := readText(t, cfg)
	wantLine := fmt.Sprintf(`"registry-mirrors": ["%s", "%s"]`, s.URL, unreachableURL)
	if !strings.Contains(after, wantLine) {
		t.Errorf("daemon.json after setup lacks %s:\n%s", wantLine, after)
	}
	if readText(t, cfg+".shoal-backup") != before {
		t.Error("no backup of the original daemon.json")
	}
	if err := d.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, d.proc, "dockerd reloads registry-mirrors", func() error {
		info, err := d.docker(t.Context(), t, "info", "--format", "{{json .RegistryConfig.Mirrors}}")
		if err != nil || !strings.Contains(info, s.URL) {
			return fmt.Errorf("docker info mirrors: %s %v", strings.TrimSpace(info), err)
		}
		return nil
	})
	if out, err := d.docker(t.Context(), t, "pull", up.Img.Hello.Ref()); err != nil {
		t.Fatalf("docker pull after setup docker: %v\n%s", err, out)
	}
	if n := count(hub.requests(), http.MethodGet, ""); n == 0 {
		t.Error("docker pull did not go through shoal")
	}
}
