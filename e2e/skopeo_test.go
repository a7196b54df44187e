package e2e

import (
	"testing"
)

// TestSkopeoCopy: `skopeo copy` through shoal yields the upstream's exact manifests and blobs, and
// shoal fetches each blob from the upstream exactly once.
func TestSkopeoCopy(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	p := startUpstreamProxy(t, up.Open.URL)
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + p.URL}})

	cases := []struct {
		name string
		img  testImage
		all  bool
		oci  bool   // oci: layout (OCI media types); else dir: (keeps Docker media types as served)
		want string // digest the copy must have
	}{
		{"oci-manifest", up.Img.Small, false, true, up.Img.Small.Digest},
		{"oci-index-all", up.Img.Multi, true, true, up.Img.Multi.Digest},
		{"docker-manifest-list-all", up.Img.DockerML, true, false, up.Img.DockerML.Digest},
		{"docker-manifest-list-amd64", up.Img.Hello, false, false, up.Img.Hello.AMD64Manifest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mark := len(p.requests())
			dst := t.TempDir()
			to := "dir:" + dst
			if tc.oci {
				to = "oci:" + dst + ":v1"
			}
			// --preserve-digests: skopeo fails rather than rewrite what it got.
			out, err := skopeoCopy(t.Context(), t, s.Addr, tc.img.Ref(), to, tc.all, "--preserve-digests")
			if err != nil {
				t.Fatalf("skopeo copy through shoal: %v\n%s", err, out)
			}
			var got string
			if tc.oci {
				got = ociLayoutDigest(t, dst)
				blobs := ociLayoutBlobs(t, dst)
				for _, b := range tc.img.Blobs {
					if !blobs[b] {
						t.Errorf("blob %s missing from the copy", b)
					}
				}
			} else {
				got = dirManifestDigest(t, dst)
			}
			if got != tc.want {
				t.Errorf("copied manifest digest %s, want upstream's %s", got, tc.want)
			}
			want := tc.img.Blobs
			if !tc.all && len(tc.img.Manifests) > 0 {
				want = tc.img.AMD64
			}
			assertOneGETPerBlob(t, p.since(mark), want)
		})
	}
}
