package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const conformanceDir = "/usr/local/lib/shoal-test/oci-conformance-97274622c111"

// TestPushConformance runs the OCI distribution-spec conformance suite (push, pull, blob and
// manifest deletes, tags, referrers; sha256 and sha512) against the local namespace of a real
// `shoal daemon`. Every test of the suite must pass; the ones it leaves disabled are tag
// parameters on manifest PUT (optional) and sparse manifests, which shoal refuses on purpose
// (MANIFEST_BLOB_UNKNOWN: a node never accepts a manifest whose blobs it cannot serve).
func TestPushConformance(t *testing.T) {
	t.Parallel()
	bin := builtTool(t, conformanceDir, "conformance")
	s := startShoal(t, shoalOpts{})
	results := t.TempDir()
	out, err := runCmd(t.Context(), 5*time.Minute, []string{
		"OCI_REGISTRY=" + s.Addr, "OCI_TLS=disabled", "OCI_VERSION=1.1",
		"OCI_REPO1=shoal.local/conformance/repo1", "OCI_REPO2=shoal.local/conformance/repo2",
		"OCI_RESULTS_DIR=" + results, "OCI_API_BLOBS_UPLOAD_CANCEL=true",
	}, bin)
	if err != nil {
		t.Fatalf("conformance suite: %v\n%s", err, out)
	}
	i := strings.Index(out, "OCI Conformance Result:")
	if i < 0 {
		t.Fatalf("no result in the suite's output:\n%s", out)
	}
	summary := out[i:]
	t.Logf("%s", summary)
	if !strings.HasPrefix(summary, "OCI Conformance Result: Pass") {
		b, _ := os.ReadFile(filepath.Join(results, "results.yaml"))
		t.Fatalf("conformance suite failed; results.yaml:\n%s", b)
	}
	for _, api := range []string{"Blob chunked", "Blob streaming", "Blob mount", "Blob delete", "Blob upload cancel",
		"Manifest put by digest", "Manifest put by tag", "Manifest delete", "Tag delete", "Tag listing", "Referrers"} {
		if !strings.Contains(summary, api) || lineOf(summary, api) == "" || !strings.HasSuffix(lineOf(summary, api), "Pass") {
			t.Errorf("%s: %q, want Pass", api, lineOf(summary, api))
		}
	}
}

func lineOf(s, prefix string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), prefix+".") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// TestPushClients: crane (push, copy), skopeo copy and oras push (an artifact) push into the
// local namespace of a real daemon; what they pushed pulls back with the same digest.
func TestPushClients(t *testing.T) {
	t.Parallel()
	s := startShoal(t, shoalOpts{})
	dir := t.TempDir()
	env := []string{"DOCKER_CONFIG=" + dir, "REGISTRY_AUTH_FILE=" + filepath.Join(dir, "auth.json")}
	if err := os.WriteFile(filepath.Join(dir, "auth.json"), []byte(`{"auths":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	layer := filepath.Join(dir, "layer.tar")
	if out, err := runCmd(t.Context(), time.Minute, nil, "tar", "-C", "/usr/share/common-licenses", "-cf", layer, "."); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	crane := tool(t, "crane")
	run := func(argv ...string) string {
		t.Helper()
		out, err := runCmd(t.Context(), 2*time.Minute, env, argv...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv[:2], " "), err, out)
		}
		return strings.TrimSpace(out)
	}
	digestOf := func(ref string) string { return run(crane, "digest", "--insecure", s.Addr+"/"+ref) }

	run(crane, "append", "--insecure", "-f", layer, "-t", s.Addr+"/shoal.local/clients/crane:v1")
	want := digestOf("shoal.local/clients/crane:v1")
	if !strings.HasPrefix(want, "sha256:") {
		t.Fatalf("crane digest: %q", want)
	}
	run(crane, "copy", "--insecure", s.Addr+"/shoal.local/clients/crane:v1", s.Addr+"/shoal.local/clients/copy:v1")
	if got := digestOf("shoal.local/clients/copy:v1"); got != want {
		t.Errorf("crane copy: %s, want %s", got, want)
	}
	run(tool(t, "skopeo"), "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
		"docker://"+s.Addr+"/shoal.local/clients/crane:v1", "docker://"+s.Addr+"/shoal.local/clients/skopeo:v1")
	if got := digestOf("shoal.local/clients/skopeo:v1"); got != want {
		t.Errorf("skopeo copy: %s, want %s", got, want)
	}
	// oras: an artifact with a file, pulled back into another directory, byte for byte.
	art := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(art, []byte("built on node A\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	oras := tool(t, "oras")
	out, err := runCmd(t.Context(), 2*time.Minute, env, "sh", "-c",
		"cd "+dir+" && "+oras+" push --plain-http --artifact-type application/vnd.shoal.test "+s.Addr+"/shoal.local/clients/oras:v1 notes.txt")
	if err != nil {
		t.Fatalf("oras push: %v\n%s", err, out)
	}
	pulled := filepath.Join(dir, "pulled")
	run(oras, "pull", "--plain-http", "-o", pulled, s.Addr+"/shoal.local/clients/oras:v1")
	if b, err := os.ReadFile(filepath.Join(pulled, "notes.txt")); err != nil || string(b) != "built on node A\n" {
		t.Errorf("oras pull: %q %v", b, err)
	}
	if !strings.Contains(run(crane, "manifest", "--insecure", s.Addr+"/shoal.local/clients/oras:v1"), "application/vnd.shoal.test") {
		t.Error("oras artifact's manifest lost its artifactType")
	}
}

// TestPushCtrAndDocker: `ctr image push` and `docker push` into the local namespace; the
// image pulls back with the digest the client pushed.
func TestPushCtrAndDocker(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	hub := startUpstreamProxy(t, up.Open.URL)  // plays docker.io
	host := startUpstreamProxy(t, up.Open.URL) // a registry named by its address
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + hub.URL, host.Addr + "=" + host.URL}})
	c := startContainerd(t)
	crane := tool(t, "crane")
	craneDigest := func(ref string) string {
		out, err := runCmd(t.Context(), time.Minute, []string{"DOCKER_CONFIG=" + t.TempDir()}, crane, "digest", "--insecure", s.Addr+"/"+ref)
		if err != nil {
			t.Fatalf("crane digest %s: %v\n%s", ref, err, out)
		}
		return strings.TrimSpace(out)
	}

	t.Run("ctr", func(t *testing.T) {
		hosts := hostsDir(t, s.URL, host.Addr)
		src := host.Addr + "/" + up.Img.Small.Ref()
		if out, err := c.ctr(t.Context(), t, "image", "pull", "--hosts-dir", hosts, src); err != nil {
			t.Fatalf("ctr pull: %v\n%s", err, out)
		}
		dst := s.Addr + "/shoal.local/clients/ctr:v1"
		if out, err := c.ctr(t.Context(), t, "image", "tag", src, dst); err != nil {
			t.Fatalf("ctr tag: %v\n%s", err, out)
		}
		if out, err := c.ctr(t.Context(), t, "image", "push", "--plain-http", dst); err != nil {
			t.Fatalf("ctr push: %v\n%s", err, out)
		}
		if got := craneDigest("shoal.local/clients/ctr:v1"); got != up.Img.Small.Digest {
			t.Errorf("ctr push: %s, want %s", got, up.Img.Small.Digest)
		}
	})
	t.Run("docker", func(t *testing.T) {
		d := startDockerd(t, c, s.URL)
		if out, err := d.docker(t.Context(), t, "pull", up.Img.Hello.Ref()); err != nil {
			t.Fatalf("docker pull: %v\n%s", err, out)
		}
		dst := s.Addr + "/shoal.local/clients/docker:v1"
		if out, err := d.docker(t.Context(), t, "tag", up.Img.Hello.Ref(), dst); err != nil {
			t.Fatalf("docker tag: %v\n%s", err, out)
		}
		out, err := d.docker(t.Context(), t, "push", dst)
		if err != nil {
			t.Fatalf("docker push: %v\n%s", err, out)
		}
		i := strings.Index(out, "digest: ")
		if i < 0 {
			t.Fatalf("docker push printed no digest:\n%s", out)
		}
		pushed := strings.Fields(out[i+len("digest: "):])[0]
		if got := craneDigest("shoal.local/clients/docker:v1"); got != pushed {
			t.Errorf("docker push: registry has %s, docker pushed %s", got, pushed)
		}
	})
}

// TestPushSwarm: crane, skopeo and oras push to node 1 of five `shoal daemon` processes; nodes
// 2–5 pull each image by tag with the same digest, from peers: the upstream sees nothing.
func TestPushSwarm(t *testing.T) {
	t.Parallel()
	up := startUpstreamProxy(t, upstreams(t).Open.URL) // never asked for the local namespace
	nodes := startSwarm(t, 5, up)
	a := nodes[0]
	dir := t.TempDir()
	env := []string{"DOCKER_CONFIG=" + dir, "REGISTRY_AUTH_FILE=" + filepath.Join(dir, "auth.json")}
	if err := os.WriteFile(filepath.Join(dir, "auth.json"), []byte(`{"auths":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(argv ...string) string {
		t.Helper()
		out, err := runCmd(t.Context(), 2*time.Minute, env, argv...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv[:2], " "), err, out)
		}
		return strings.TrimSpace(out)
	}
	crane, skopeo, oras := tool(t, "crane"), tool(t, "skopeo"), tool(t, "oras")
	layer := filepath.Join(dir, "layer.tar")
	run("tar", "-C", "/usr/share/common-licenses", "-cf", layer, ".")
	run(crane, "append", "--insecure", "-f", layer, "-t", a.Addr+"/shoal.local/swarm/crane:v1")
	run(skopeo, "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
		"docker://"+a.Addr+"/shoal.local/swarm/crane:v1", "docker://"+a.Addr+"/shoal.local/swarm/skopeo:v1")
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("from node 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run("sh", "-c", "cd "+dir+" && "+oras+" push --plain-http "+a.Addr+"/shoal.local/swarm/oras:v1 notes.txt")
	mark := len(up.requests())
	for _, repo := range []string{"crane", "skopeo", "oras"} {
		ref := "shoal.local/swarm/" + repo + ":v1"
		want := run(crane, "digest", "--insecure", a.Addr+"/"+ref)
		for _, n := range nodes[1:] {
			if got := run(crane, "digest", "--insecure", n.Addr+"/"+ref); got != want {
				t.Errorf("%s on %s: %s, want %s", ref, n.Name, got, want)
			}
			if repo != "oras" {
				if out, err := cranePull(t.Context(), t, n.Addr, ref, filepath.Join(t.TempDir(), "img")); err != nil {
					t.Errorf("crane pull %s on %s: %v\n%s", ref, n.Name, err, out)
				}
			}
		}
	}
	pulled := filepath.Join(dir, "pulled")
	run(oras, "pull", "--plain-http", "-o", pulled, nodes[3].Addr+"/shoal.local/swarm/oras:v1")
	if b, err := os.ReadFile(filepath.Join(pulled, "notes.txt")); err != nil || string(b) != "from node 1\n" {
		t.Errorf("oras pull on %s: %q %v", nodes[3].Name, b, err)
	}
	if reqs := up.since(mark); len(reqs) != 0 {
		t.Errorf("the upstream saw %d requests for the local namespace: %v", len(reqs), reqs)
	}
}

const buildkitDir = "/usr/local/lib/shoal-test/buildkit-0.34.2"

// TestPushBuildKit: BuildKit's registry exporter (`buildctl build --output
// type=image,push=true`, buildkitd with the OCI worker, as root) pushes a FROM scratch + COPY
// image to node 1 of two `shoal daemon` processes; with the upstream stopped, node 2 resolves
// the tag to the digest BuildKit reported and serves the file's bytes.
func TestPushBuildKit(t *testing.T) {
	t.Parallel()
	up := startUpstreamProxy(t, upstreams(t).Open.URL)
	nodes := startSwarm(t, 2, up)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	const content = "built by buildkit on node 1\n"
	for name, body := range map[string]string{"hello.txt": content, "Dockerfile": "FROM scratch\nCOPY hello.txt /hello.txt\n"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "buildkitd.sock")
	bk := startProc(t, "buildkitd", nil, builtTool(t, buildkitDir, "buildkitd"), "--root", filepath.Join(dir, "root"),
		"--addr", "unix://"+sock, "--oci-worker=true", "--containerd-worker=false", "--oci-worker-snapshotter=native")
	if err := poll(time.Minute, bk, func() error { _, err := os.Stat(sock); return err }); err != nil {
		t.Fatalf("buildkitd: %v", err)
	}
	ref := "shoal.local/buildkit/x:1"
	meta := filepath.Join(dir, "metadata.json")
	out, err := runCmd(t.Context(), 3*time.Minute, nil, builtTool(t, buildkitDir, "buildctl"), "--addr", "unix://"+sock,
		"build", "--frontend", "dockerfile.v0", "--local", "context="+src, "--local", "dockerfile="+src,
		"--output", "type=image,name="+nodes[0].Addr+"/"+ref+",push=true,registry.insecure=true", "--metadata-file", meta)
	if err != nil {
		t.Fatalf("buildctl build: %v\n%s", err, out)
	}
	var md struct {
		Digest string `json:"containerimage.digest"`
	}
	if b, err := os.ReadFile(meta); err != nil || json.Unmarshal(b, &md) != nil || !strings.HasPrefix(md.Digest, "sha256:") {
		t.Fatalf("buildctl metadata: %s %v", b, err)
	}
	up.stop()
	env := []string{"DOCKER_CONFIG=" + t.TempDir()}
	crane := tool(t, "crane")
	if got, err := runCmd(t.Context(), time.Minute, env, crane, "digest", "--insecure", nodes[1].Addr+"/"+ref); err != nil || strings.TrimSpace(got) != md.Digest {
		t.Fatalf("node 2 resolves %s to %q (%v), BuildKit pushed %s", ref, got, err, md.Digest)
	}
	got, err := runCmd(t.Context(), time.Minute, env, "sh", "-c", crane+" export --insecure "+nodes[1].Addr+"/"+ref+" - | tar -xOf - hello.txt")
	if err != nil || got != content {
		t.Fatalf("hello.txt from node 2: %q %v", got, err)
	}
}
