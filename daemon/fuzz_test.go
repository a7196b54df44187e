package daemon

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/oci"
)

// Fuzz targets for everything a client puts in front of the daemon. Seed corpora live in
// testdata/fuzz/<target>/; TestFuzzTargetsBriefly runs every target of the module for a
// bounded time as part of `go test`.

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
		if !validHost(rt.registry) || strings.ContainsAny(rt.registry, "/?#@") {
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

// FuzzParseDigest: whatever shoal accepts as a digest, go-digest accepts too and it names a
// hash shoal can compute, so content can always be verified against it.
func FuzzParseDigest(f *testing.F) {
	for _, s := range []string{"sha256:" + strings.Repeat("a", 64), "sha512:" + strings.Repeat("0", 128),
		"sha256:" + strings.Repeat("A", 64), "sha384:" + strings.Repeat("1", 96), "md5:d41d8cd98f00b204e9800998ecf8427e",
		"sha256:", ":", "sha256:abc", "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := oci.ParseDigest(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error for %q", s)
			}
			return
		}
		if d.Validate() != nil || !d.Algorithm().Available() || string(d) != s {
			t.Fatalf("accepted %q as %q", s, d)
		}
		if !oci.IsDigestRef(s) {
			t.Fatalf("digest %q is not a digest reference", s)
		}
		if h := d.Algorithm().Hash(); h == nil || len(d.Encoded()) != 2*h.Size() {
			t.Fatalf("digest %q: encoded part does not fit its hash", s)
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

// FuzzConfig: any YAML file is either applied or refused with a one-line error naming the
// key; nothing panics. Validate runs too when the file names no files to read (a fuzzed
// path such as /dev/zero must not be opened).
func FuzzConfig(f *testing.F) {
	f.Add(string(DefaultsYAML()))
	for _, s := range []string{
		"listen: 127.0.0.1:6000\ntag_ttl: 1m\nregistries:\n  docker.io:\n    username: bob\n    password: s3cret\n",
		"security:\n  allow_cidr: [10.0.0.0/8, \"::1\"]\n  deny_repo: [docker.io/library/*]\n  rate_limit: 2.5\n  max_header_bytes: 16KiB\n",
		"security:\n  rate_limit: .nan\n", "store:\n  max_size: 1e400GiB\n", "tag_ttl: -1s\n",
		"upstream:\n  proxy: socks5://u:p@127.0.0.1:1080\n", "registries: {\"a b\": {}}\n", "&a [*a]", "listen: [",
		"security:\n  allow_repo: [\"(((\"]\n", "p2p:\n  listen: []\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		c := DefaultConfig()
		err := c.applyYAML([]byte(doc), "fuzz.yaml")
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line config error: %q", err)
			}
			return
		}
		if names := c.secretFiles(); len(names) > 0 || c.Guard.Htpasswd != "" || c.Guard.TLSCert != "" || c.Guard.TLSKey != "" || c.P2P.SwarmKeyFile != "" {
			return
		}
		if err := c.Validate(); err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("multi-line validation error: %q", err)
		}
	})
}
