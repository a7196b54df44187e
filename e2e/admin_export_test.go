package e2e

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExportLoadsInDockerAndContainerd: `shoal export` writes tarballs (one image; several
// images including multi-platform ones) that Debian's Docker 20.10 loads with `docker load` and
// containerd imports with `ctr image import`, with the upstream's digests.
func TestExportLoadsInDockerAndContainerd(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	hub := startUpstreamProxy(t, up.Open.URL) // docker.io, and the registry named by its address
	d := startOpsShoal(t, shoalOpts{registries: []string{"docker.io=" + hub.URL, hub.Addr + "=" + hub.URL}})
	dir := t.TempDir()
	one, several := filepath.Join(dir, "one.tar"), filepath.Join(dir, "several.tar")

	small := hub.Addr + "/" + up.Img.Small.Ref() // OCI manifest, gzip layers
	multi := hub.Addr + "/" + up.Img.Multi.Ref() // OCI index, 2 platforms
	dockerML := up.Img.DockerML.Ref()            // docker.io name, Docker manifest list
	hello := "hello:v1"                          // docker.io/library/hello:v1
	big := hub.Addr + "/" + up.Img.Conc.Ref()    // uncompressed layers
	r := d.run(t, 0, "export", small, "-o", one) // flags after the image, as people type
	if !strings.Contains(r.Stdout, "wrote "+one) {
		t.Errorf("export output: %s", r.Stdout)
	}
	d.run(t, 0, "export", "-o", several, multi, dockerML, hello, big)
	assertTarComplete(t, one)
	assertTarComplete(t, several)
	r = d.run(t, exitNotFound, "export", "-o", filepath.Join(dir, "missing.tar"), hub.Addr+"/test/nothing:v1")
	if _, err := os.Stat(filepath.Join(dir, "missing.tar")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed export left a file behind: %v", err)
	}

	c := startContainerd(t)
	t.Run("ctr-import", func(t *testing.T) {
		for _, tarball := range []string{one, several} {
			if out, err := c.ctr(t.Context(), t, "image", "import", tarball); err != nil {
				t.Fatalf("ctr image import %s: %v\n%s", filepath.Base(tarball), err, out)
			}
		}
		want := map[string]string{
			small:                              up.Img.Small.Digest,
			multi:                              up.Img.Multi.Digest,
			"docker.io/" + dockerML:            up.Img.DockerML.Digest,
			"docker.io/library/hello:v1":       up.Img.Hello.Digest,
			hub.Addr + "/" + up.Img.Conc.Ref(): up.Img.Conc.Digest,
		}
		for ref, dg := range want {
			if got := c.imageDigest(t, ref); got != dg {
				t.Errorf("ctr: %s imported as %s, want the upstream's %s", ref, got, dg)
			}
		}
		have := c.content(t)
		for _, b := range append(append([]string{}, up.Img.Small.Blobs...), up.Img.Multi.AMD64...) {
			if !have[b] {
				t.Errorf("blob %s missing from containerd after import", b)
			}
		}
	})

	dk := startDockerd(t, c, d.URL)
	t.Run("docker-load", func(t *testing.T) {
		out, err := dk.docker(t.Context(), t, "load", "-i", one)
		if err != nil || !strings.Contains(out, "Loaded image: "+small) {
			t.Fatalf("docker load one.tar: %v\n%s", err, out)
		}
		out, err = dk.docker(t.Context(), t, "load", "-i", several)
		if err != nil {
			t.Fatalf("docker load several.tar: %v\n%s", err, out)
		}
		for _, name := range []string{multi, dockerML, hello, big} {
			if !strings.Contains(out, "Loaded image: "+name) {
				t.Errorf("docker load several.tar did not load %s:\n%s", name, out)
			}
		}
		// Docker's image ID is the config digest of the platform it loaded (linux/amd64).
		ids := map[string]string{small: up.Img.Small.AMD64[0], multi: up.Img.Multi.AMD64[0], hello: up.Img.Hello.AMD64[0], big: up.Img.Conc.AMD64[0]}
		for name, id := range ids {
			out, err := dk.docker(t.Context(), t, "image", "inspect", "--format", "{{.Id}} {{.Os}}/{{.Architecture}}", name)
			if err != nil || strings.TrimSpace(out) != id+" linux/amd64" {
				t.Errorf("docker image inspect %s: %q (%v), want %s linux/amd64", name, strings.TrimSpace(out), err, id)
			}
		}
	})
}

// assertTarComplete reads a tarball to its end-of-archive marker and checks it has the OCI
// layout files and a Docker manifest.json.
func assertTarComplete(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		names[h.Name] = true
	}
	for _, n := range []string{"oci-layout", "index.json", "manifest.json"} {
		if !names[n] {
			t.Errorf("%s has no %s", filepath.Base(path), n)
		}
	}
}
