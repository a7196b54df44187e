package daemon

import (
	"strings"
	"testing"

	"github.com/shoal-mirror/shoal/internal/oci"
)

// Fuzz targets for everything a client puts in front of the daemon. Seed corpora live in
// testdata/fuzz/<target>/; TestFuzzTargetsBriefly runs every target of the module for a
// bounded time as part of `go test`.

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
