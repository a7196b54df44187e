package mirror

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/oci"
)

// Fuzz targets for what a client puts in front of the mirror. Seed corpora live in
// testdata/fuzz/<target>/; daemon's TestFuzzTargetsBriefly runs every target of the module for
// a bounded time as part of `go test`.

// FuzzParseRoute: routing never panics, and whatever it accepts is a valid repository name
// on a valid registry host with a valid reference, with no way to climb out of the name.
func FuzzParseRoute(f *testing.F) {
	for _, s := range []struct{ path, ns string }{
		{"/v2/library/alpine/manifests/latest", ""},
		{"/v2/alpine/manifests/3.19", "docker.io"},
		{"/v2/ghcr.io/owner/img/blobs/sha256:" + strings.Repeat("a", 64), ""},
		{"/v2/a/b/c/tags/list", "127.0.0.1:5001"},
		{"/v2/x/referrers/sha256:" + strings.Repeat("0", 64), ""},
		{"/v2/../etc/manifests/latest", ""},
		{"/v2/a/manifests/sha512:" + strings.Repeat("f", 128), "[::1]:5000"},
	} {
		f.Add(s.path, s.ns)
	}
	f.Fuzz(func(t *testing.T, path, ns string) {
		r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: path, RawQuery: url.Values{"ns": {ns}}.Encode()}}
		if ns == "" {
			r.URL.RawQuery = ""
		}
		rt, err := parseRoute(r, "docker.io")
		if err != nil {
			return
		}
		if err := oci.ValidateRepo(rt.repo); err != nil {
			t.Fatalf("accepted repo %q: %v", rt.repo, err)
		}
		if len(rt.repo) > reference.NameTotalLengthMax || strings.Contains(rt.repo, "..") || strings.HasPrefix(rt.repo, "/") {
			t.Fatalf("accepted repo %q", rt.repo)
		}
		if !oci.ValidHost(rt.registry) || strings.ContainsAny(rt.registry, "/?#@") {
			t.Fatalf("accepted registry %q", rt.registry)
		}
		switch rt.kind {
		case "blob", "referrers":
			if digest.Digest(rt.ref).Validate() != nil {
				t.Fatalf("accepted %s ref %q", rt.kind, rt.ref)
			}
		case "manifest":
			if digest.Digest(rt.ref).Validate() != nil && oci.ValidateTag(rt.ref) != nil {
				t.Fatalf("accepted manifest ref %q", rt.ref)
			}
		case "tags":
		default:
			t.Fatalf("unknown kind %q", rt.kind)
		}
		if rt.kind != "tags" && (rt.ref == "" || len(rt.ref) > 7+128+10) {
			t.Fatalf("accepted ref %q", rt.ref)
		}
	})
}

// FuzzParseRange: the Range parser never panics, and every range it accepts lies inside the
// content (known size) or at least starts at a non-negative offset (unknown size).
func FuzzParseRange(f *testing.F) {
	for _, s := range []struct {
		h    string
		size int64
	}{
		{"bytes=0-9", 100}, {"bytes=100-", 1000}, {"bytes=-5", 10}, {"bytes=5-", -1},
		{"bytes=0-0,5-9", 10}, {"bytes=9223372036854775807-", 10}, {"bytes=-0", 10},
		{"items=0-1", 10}, {"bytes= 1-2", 10}, {"bytes=2-1", 10}, {"bytes=0-99999999999999999999", 10},
	} {
		f.Add(s.h, s.size)
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		r, err := parseRange(h, size)
		if err != nil || r == nil {
			return
		}
		if r.start < 0 {
			t.Fatalf("%q (size %d): negative start %d", h, size, r.start)
		}
		if size >= 0 && (r.start > r.end || r.end >= size) {
			t.Fatalf("%q (size %d): range %d-%d outside the content", h, size, r.start, r.end)
		}
		if size < 0 && r.end >= 0 && r.end < r.start {
			t.Fatalf("%q (unknown size): range %d-%d", h, r.start, r.end)
		}
	})
}
