package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestBadInput: malformed requests get the right OCI error code and status, and never reach the
// upstream; pushes are refused.
func TestBadInput(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	p := startUpstreamProxy(t, up.Open.URL)
	s := startShoal(t, shoalOpts{config: &shoalConfig{
		Registries: map[string]shoalRegistry{
			"docker.io": {URL: p.URL},
			p.Addr:      {URL: p.URL},
		},
		Upstream: &shoalUpstream{OnlyConfigured: true},
	}})
	small := up.Img.Small
	long := strings.Repeat("a", 256)
	zero := "sha256:" + strings.Repeat("0", 64)

	cases := []struct {
		name, method, path string
		status             int
		code               string
	}{
		{"dotdot-name", "GET", "/v2/../x/manifests/v1", 400, "NAME_INVALID"},
		{"dotdot-inside-name", "GET", "/v2/test/../x/manifests/v1", 400, "NAME_INVALID"},
		{"dotdot-blob", "GET", "/v2/../test/small/blobs/" + small.Layers[0], 400, "NAME_INVALID"},
		{"upper-case-name", "GET", "/v2/Test/Small/manifests/v1", 400, "NAME_INVALID"},
		{"name-over-255", "GET", "/v2/test/" + long + "/manifests/v1", 400, "NAME_INVALID"},
		{"bad-digest-hex", "GET", "/v2/test/small/blobs/sha256:zzzz", 400, "DIGEST_INVALID"},
		{"short-digest", "GET", "/v2/test/small/blobs/sha256:1234", 400, "DIGEST_INVALID"},
		{"short-manifest-digest", "GET", "/v2/test/small/manifests/sha256:1234", 400, "DIGEST_INVALID"},
		{"unknown-registry-ns", "GET", "/v2/test/small/manifests/v1?ns=127.0.0.1:1", 404, "NAME_UNKNOWN"},
		{"unknown-registry-ns-blob", "GET", "/v2/test/small/blobs/" + small.Layers[0] + "?ns=127.0.0.1:1", 404, "NAME_UNKNOWN"},
		{"unknown-manifest", "GET", "/v2/test/small/manifests/nope", 404, "MANIFEST_UNKNOWN"},
		{"unknown-blob", "GET", "/v2/test/small/blobs/" + zero, 404, "BLOB_UNKNOWN"},
		{"put-manifest", "PUT", "/v2/test/small/manifests/v1", 405, "UNSUPPORTED"},
		{"post-upload", "POST", "/v2/test/small/blobs/uploads/", 405, "UNSUPPORTED"},
		{"patch-upload", "PATCH", "/v2/test/small/blobs/uploads/0f6b2b4e", 405, "UNSUPPORTED"},
		{"put-upload", "PUT", "/v2/test/small/blobs/uploads/0f6b2b4e?digest=" + zero, 405, "UNSUPPORTED"},
		{"delete-manifest", "DELETE", "/v2/test/small/manifests/" + small.Digest, 405, "UNSUPPORTED"},
		{"delete-blob", "DELETE", "/v2/test/small/blobs/" + small.Layers[0], 405, "UNSUPPORTED"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mark := len(p.requests())
			r := do(t, tc.method, s.URL, tc.path, nil)
			if r.Status != tc.status {
				t.Errorf("%s %s: status %d, want %d; body %s", tc.method, tc.path, r.Status, tc.status, truncateForLog(r.Body))
			}
			codes, err := ociErrorCodes(r.Body)
			if err != nil {
				t.Errorf("%s %s: %v", tc.method, tc.path, err)
			} else if !slices.Contains(codes, tc.code) {
				t.Errorf("%s %s: codes %v, want %s", tc.method, tc.path, codes, tc.code)
			}
			if tc.status == 400 || tc.status == 405 || tc.code == "NAME_UNKNOWN" {
				if reqs := p.since(mark); len(reqs) > 0 {
					t.Errorf("a request shoal refused reached the upstream:\n%s", describe(reqs))
				}
			}
		})
	}

	t.Run("skopeo-push-refused", func(t *testing.T) {
		src := t.TempDir()
		if out, err := skopeoCopy(t.Context(), t, s.Addr, small.Ref(), "oci:"+src+":v1", false); err != nil {
			t.Fatalf("pull: %v\n%s", err, out)
		}
		out, err := runCmd(t.Context(), 2*time.Minute, nil, tool(t, "skopeo"), "--insecure-policy", "copy", "--dest-tls-verify=false",
			"oci:"+src+":v1", "docker://"+s.Addr+"/test/pushed:v1")
		if err == nil {
			t.Fatalf("skopeo push to shoal succeeded:\n%s", out)
		}
	})
}

// TestRange: blob Range requests answer 206 with Content-Range, cold and cached; an unsatisfiable
// range answers 416.
func TestRange(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	p := startUpstreamProxy(t, up.Open.URL)
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + p.URL}})
	img := up.Img.Conc
	layer := img.Layers[2]
	size := img.LayerSizes[layer]
	path := "/v2/" + img.Repo + "/blobs/" + layer
	full := do(t, http.MethodGet, up.Open.URL, path, nil).Body // the truth, straight from the upstream

	check := func(t *testing.T, rng string, from, to int64) {
		t.Helper()
		r := do(t, http.MethodGet, s.URL, path, map[string]string{"Range": rng})
		if r.Status != http.StatusPartialContent {
			t.Fatalf("Range %s: status %d, want 206; body %s", rng, r.Status, truncateForLog(r.Body))
		}
		if want := fmt.Sprintf("bytes %d-%d/%d", from, to, size); r.Header.Get("Content-Range") != want {
			t.Errorf("Range %s: Content-Range %q, want %q", rng, r.Header.Get("Content-Range"), want)
		}
		if !bytes.Equal(r.Body, full[from:to+1]) {
			t.Errorf("Range %s: %d bytes, not the blob's bytes %d-%d", rng, len(r.Body), from, to)
		}
	}
	t.Run("cold-0-9", func(t *testing.T) { check(t, "bytes=0-9", 0, 9) })
	t.Run("suffix-open", func(t *testing.T) { check(t, fmt.Sprintf("bytes=%d-", size-100), size-100, size-1) })
	t.Run("middle", func(t *testing.T) { check(t, "bytes=1000000-1999999", 1000000, 1999999) })
	t.Run("unsatisfiable", func(t *testing.T) {
		r := do(t, http.MethodGet, s.URL, path, map[string]string{"Range": "bytes=999999999-"})
		if r.Status != http.StatusRequestedRangeNotSatisfiable {
			t.Errorf("Range bytes=999999999-: status %d, want 416", r.Status)
		}
	})
	t.Run("full-get-accept-ranges", func(t *testing.T) {
		r := do(t, http.MethodGet, s.URL, path, nil)
		if r.Status != http.StatusOK || !bytes.Equal(r.Body, full) {
			t.Fatalf("GET: status %d, %d bytes", r.Status, len(r.Body))
		}
		if r.Header.Get("Accept-Ranges") != "bytes" {
			t.Errorf("Accept-Ranges %q, want bytes", r.Header.Get("Accept-Ranges"))
		}
	})
	assertOneGETPerBlob(t, p.requests(), []string{layer})
}

// TestManifestHeadersMatchUpstream: HEAD and GET of manifests (by tag and digest, every media type)
// answer with the upstream's Content-Type, Docker-Content-Digest and Content-Length, and the
// upstream's bytes; the first request is a cold HEAD.
func TestManifestHeadersMatchUpstream(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	p := startUpstreamProxy(t, up.Open.URL)
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + p.URL}})
	type ref struct{ name, repo, ref string }
	var refs []ref
	for _, img := range []testImage{up.Img.Small, up.Img.Multi, up.Img.DockerML} {
		refs = append(refs, ref{img.Repo + ":" + img.Tag, img.Repo, img.Tag}, ref{img.Repo + "@" + img.Digest[:15], img.Repo, img.Digest})
	}
	refs = append(refs, ref{"docker-v2-manifest", up.Img.DockerML.Repo, up.Img.DockerML.AMD64Manifest})
	for _, rf := range refs {
		t.Run(rf.name, func(t *testing.T) {
			path := "/v2/" + rf.repo + "/manifests/" + rf.ref
			want := do(t, http.MethodGet, up.Open.URL, path, acceptAll)
			for i, m := range []string{http.MethodHead, http.MethodGet, http.MethodHead} {
				mark := len(p.requests())
				got := do(t, m, s.URL, path, acceptAll)
				if i == 0 && !strings.HasPrefix(rf.ref, "sha256:") {
					// Docker Hub counts manifest GETs as pulls: a client's HEAD of a tag
					// must not turn into an upstream GET of that tag.
					if n := count(p.since(mark), http.MethodGet, "/manifests/"+rf.ref); n > 0 {
						t.Errorf("a cold HEAD of tag %s made %d upstream GETs of the tag:\n%s", rf.ref, n, describe(p.since(mark)))
					}
				}
				if got.Status != http.StatusOK {
					t.Fatalf("%s %s: status %d %s", m, path, got.Status, truncateForLog(got.Body))
				}
				for _, h := range []string{"Content-Type", "Docker-Content-Digest", "Content-Length"} {
					if got.Header.Get(h) != want.Header.Get(h) {
						t.Errorf("%s %s: %s %q, upstream's %q", m, path, h, got.Header.Get(h), want.Header.Get(h))
					}
				}
				if m == http.MethodGet && !bytes.Equal(got.Body, want.Body) {
					t.Errorf("GET %s: body differs from the upstream's", path)
				}
			}
		})
	}
}

// TestPassThrough: tags/list (with n/last pagination and its Link header) and referrers answer
// what the upstream answers.
func TestPassThrough(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	s := startShoal(t, shoalOpts{registries: []string{"docker.io=" + up.Open.URL}})
	repo := up.Img.Small.Repo
	for _, q := range []string{"", "?n=1", "?n=2&last=v1"} {
		path := "/v2/" + repo + "/tags/list" + q
		want := do(t, http.MethodGet, up.Open.URL, path, nil)
		got := do(t, http.MethodGet, s.URL, path, nil)
		if got.Status != want.Status || !bytes.Equal(bytes.TrimSpace(got.Body), bytes.TrimSpace(want.Body)) {
			t.Errorf("GET %s: %d %s, upstream's %d %s", path, got.Status, got.Body, want.Status, want.Body)
		}
		if (want.Header.Get("Link") == "") != (got.Header.Get("Link") == "") {
			t.Errorf("GET %s: Link %q, upstream's %q", path, got.Header.Get("Link"), want.Header.Get("Link"))
		}
	}
	// distribution 2.8 has no referrers API: shoal answers 404 with an OCI error (or an index).
	r := do(t, http.MethodGet, s.URL, "/v2/"+repo+"/referrers/"+up.Img.Small.Digest, nil)
	switch r.Status {
	case http.StatusOK:
		if !strings.Contains(r.Header.Get("Content-Type"), "application/vnd.oci.image.index.v1+json") {
			t.Errorf("referrers: 200 with Content-Type %q", r.Header.Get("Content-Type"))
		}
	case http.StatusNotFound:
		if _, err := ociErrorCodes(r.Body); err != nil {
			t.Errorf("referrers: 404 without an OCI error body: %v", err)
		}
	default:
		t.Errorf("referrers: status %d %s, want 404 or 200", r.Status, truncateForLog(r.Body))
	}
}
