package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestDockerPull: `docker pull` on a Docker engine whose registry-mirrors is shoal gets the
// upstream's image (docker.io names, manifest list and OCI index), the fetches went through shoal
// to the upstream, and pulling again after `docker rmi` costs the upstream nothing.
func TestDockerPull(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	hub := startUpstreamProxy(t, up.Open.URL) // plays docker.io
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + hub.URL}})
	c := startContainerd(t)
	d := startDockerd(t, c, s.URL)

	cases := []struct {
		name, ref, repoDigest string
		img                   testImage
	}{
		{"library-manifest-list", "hello:v1", "hello@", up.Img.Hello},
		{"oci-index", "test/multi:v1", "test/multi@", up.Img.Multi},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mark := len(hub.requests())
			start := time.Now()
			out, err := d.docker(t.Context(), t, "pull", tc.ref)
			if err != nil {
				t.Fatalf("docker pull through shoal: %v\n%s", err, out)
			}
			t.Logf("docker pull %s: %s", tc.ref, time.Since(start).Round(time.Millisecond))
			if !strings.Contains(out, "Digest: "+tc.img.Digest) {
				t.Errorf("docker pull printed no \"Digest: %s\":\n%s", tc.img.Digest, out)
			}
			out, err = d.docker(t.Context(), t, "image", "inspect", "--format", "{{json .RepoDigests}}", tc.ref)
			if err != nil || !strings.Contains(out, tc.repoDigest+tc.img.Digest) {
				t.Errorf("RepoDigests %s (%v), want %s%s", strings.TrimSpace(out), err, tc.repoDigest, tc.img.Digest)
			}
			assertOneGETPerBlob(t, hub.since(mark), tc.img.AMD64)

			// Again from scratch on the Docker side: shoal serves it from its store.
			if out, err := d.docker(t.Context(), t, "rmi", tc.ref); err != nil {
				t.Fatalf("docker rmi: %v\n%s", err, out)
			}
			mark = len(hub.requests())
			if out, err := d.docker(t.Context(), t, "pull", tc.ref); err != nil {
				t.Fatalf("second docker pull through shoal: %v\n%s", err, out)
			}
			assertNoUpstreamFetch(t, hub.since(mark))
		})
	}
}
