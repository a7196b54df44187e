package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestFixturesWithoutShoal pulls with the real clients straight from the upstream fixtures (through
// the counting proxy, no shoal), so that a failure elsewhere can be told apart from a broken fixture.
func TestFixturesWithoutShoal(t *testing.T) {
	up := upstreams(t)
	img := up.Img

	t.Run("skopeo-open", func(t *testing.T) {
		p := startUpstreamProxy(t, up.Open.URL)
		dst := t.TempDir()
		if out, err := skopeoCopy(t.Context(), t, p.Addr, img.Multi.Ref(), "oci:"+dst+":v1", true); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if got := ociLayoutDigest(t, dst); got != img.Multi.Digest {
			t.Errorf("digest %s, want %s", got, img.Multi.Digest)
		}
		assertOneGETPerBlob(t, p.requests(), img.Multi.Blobs)
	})

	t.Run("skopeo-basic", func(t *testing.T) {
		dst := t.TempDir()
		out, err := skopeoCopy(t.Context(), t, up.Basic.Addr, img.Small.Ref(), "oci:"+dst+":v1", false,
			"--src-creds", basicUser+":"+basicPass)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if _, err := skopeoCopy(t.Context(), t, up.Basic.Addr, img.Small.Ref(), "oci:"+t.TempDir()+":v1", false); err == nil {
			t.Errorf("anonymous pull from the htpasswd upstream succeeded")
		}
	})

	t.Run("skopeo-token", func(t *testing.T) {
		if out, err := skopeoCopy(t.Context(), t, up.Token.Addr, img.Small.Ref(), "oci:"+t.TempDir()+":v1", false); err != nil {
			t.Fatalf("anonymous: %v\n%s", err, out)
		}
		if _, err := skopeoCopy(t.Context(), t, up.Token.Addr, img.Private.Ref(), "oci:"+t.TempDir()+":v1", false); err == nil {
			t.Errorf("anonymous pull of private/ from the token upstream succeeded")
		}
		out, err := skopeoCopy(t.Context(), t, up.Token.Addr, img.Private.Ref(), "oci:"+t.TempDir()+":v1", false,
			"--src-creds", tokenUser+":"+tokenPass)
		if err != nil {
			t.Fatalf("with credentials: %v\n%s", err, out)
		}
	})

	t.Run("proxy-corrupt", func(t *testing.T) {
		p := startUpstreamProxy(t, up.Open.URL)
		layer := img.Small.Layers[0]
		p.corruptBlob(layer, true)
		r := do(t, http.MethodGet, p.URL, "/v2/"+img.Small.Repo+"/blobs/"+layer, nil)
		if r.Status != http.StatusOK || bytesDigest(r.Body) == layer {
			t.Fatalf("corrupting proxy: status %d, digest %s (want 200 and a wrong digest)", r.Status, bytesDigest(r.Body))
		}
	})

	t.Run("ctr", func(t *testing.T) {
		p := startUpstreamProxy(t, up.Open.URL)
		c := startContainerd(t)
		hosts := hostsDir(t, p.URL, "127.0.0.1:1234")
		ref := "127.0.0.1:1234/" + img.Multi.Ref()
		if out, err := c.ctr(t.Context(), t, "image", "pull", "--hosts-dir", hosts, ref); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if got := c.imageDigest(t, ref); got != img.Multi.Digest {
			t.Errorf("digest %s, want %s", got, img.Multi.Digest)
		}
		reqs := p.requests()
		if !strings.Contains(describe(reqs), "ns=127.0.0.1%3A1234") {
			t.Errorf("containerd sent no ns parameter:\n%s", describe(reqs))
		}
	})

	t.Run("docker", func(t *testing.T) {
		p := startUpstreamProxy(t, up.Open.URL)
		c := startContainerd(t)
		d := startDockerd(t, c, p.URL)
		start := time.Now()
		if out, err := d.docker(t.Context(), t, "pull", "hello:v1"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		t.Logf("docker pull via the proxy as mirror: %s", time.Since(start))
		out, err := d.docker(t.Context(), t, "image", "inspect", "--format", "{{json .RepoDigests}}", "hello:v1")
		if err != nil || !strings.Contains(out, img.Hello.Digest) {
			t.Errorf("RepoDigests %s (%v), want %s", out, err, img.Hello.Digest)
		}
	})
}
