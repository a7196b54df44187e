package e2e

import (
	"net/http"
	"testing"
	"time"
)

// TestCtrPull: `ctr image pull` with a hosts.toml that sends the pull to shoal (the registry's own
// `server` is a closed port, so nothing can bypass shoal) gets the upstream's image, routed by
// containerd's ?ns= parameter, for registry-host names and docker.io names.
func TestCtrPull(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	hub := startUpstreamProxy(t, up.Open.URL)  // plays docker.io
	host := startUpstreamProxy(t, up.Open.URL) // plays the registry 127.0.0.1:PORT, named by its address
	s := startShoal(t, shoalOpts{registries: []string{
		"docker.io=" + hub.URL,
		host.Addr + "=" + host.URL,
	}})
	c := startContainerd(t)
	hosts := hostsDir(t, s.URL, "docker.io", host.Addr)

	cases := []struct {
		name  string
		ref   string // what the user pulls
		img   testImage
		all   bool
		via   *upstreamProxy
		other *upstreamProxy // must see nothing
	}{
		{"single-arch", host.Addr + "/" + up.Img.Small.Ref(), up.Img.Small, false, host, hub},
		{"oci-index-all-platforms", host.Addr + "/" + up.Img.Multi.Ref(), up.Img.Multi, true, host, hub},
		{"docker-manifest-list-default-platform", host.Addr + "/" + up.Img.DockerML.Ref(), up.Img.DockerML, false, host, hub},
		{"layer-110MiB", host.Addr + "/" + up.Img.Big.Ref(), up.Img.Big, false, host, hub},
		{"docker.io-name", "docker.io/" + up.Img.Hello.Ref(), up.Img.Hello, false, hub, host},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mark, otherMark := len(tc.via.requests()), len(tc.other.requests())
			args := []string{"image", "pull", "--hosts-dir", hosts}
			if tc.all {
				args = append(args, "--all-platforms")
			}
			start := time.Now()
			out, err := c.ctr(t.Context(), t, append(args, tc.ref)...)
			if err != nil {
				t.Fatalf("ctr pull through shoal: %v\n%s", err, out)
			}
			t.Logf("ctr pull %s: %s", tc.ref, time.Since(start).Round(time.Millisecond))
			if got := c.imageDigest(t, tc.ref); got != tc.img.Digest {
				t.Errorf("containerd recorded %s, want upstream's %s", got, tc.img.Digest)
			}
			want := tc.img.Blobs
			if !tc.all && len(tc.img.Manifests) > 0 {
				want = tc.img.AMD64
			}
			have := c.content(t)
			for _, b := range want {
				if !have[b] {
					t.Errorf("blob %s missing from containerd's content store", b)
				}
			}
			reqs := tc.via.since(mark)
			assertOneGETPerBlob(t, reqs, want)
			if n := count(reqs, http.MethodGet, ""); n == 0 {
				t.Errorf("upstream saw no request")
			}
			if o := tc.other.since(otherMark); len(o) > 0 {
				t.Errorf("the other upstream saw requests (routing ignored ?ns=):\n%s", describe(o))
			}
		})
	}
}
