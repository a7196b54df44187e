package oci

import (
	"strings"
	"testing"
)

// Whatever a registry or a peer sends, reading it as a manifest never panics, yields exactly
// one shape, and lists only well-formed references.
func FuzzParseManifest(f *testing.F) {
	for _, s := range []string{
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"` + dCfg.String() + `","size":7},"layers":[{"digest":"` + dL1.String() + `","size":9}]}`,
		`{"schemaVersion":2,"manifests":[{"digest":"` + dM1.String() + `","platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}`,
		`{"manifests":null,"config":null}`, `[]`, `null`, `{"layers":[{"digest":"sha256:x","size":"1"}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		doc, err := ParseManifest(data)
		if err == nil && (doc.Image == nil) == (doc.Index == nil) {
			t.Fatalf("ParseManifest(%q): image %v, index %v", data, doc.Image != nil, doc.Index != nil)
		}
		for _, d := range ManifestRefs(data) {
			if d.Validate() != nil {
				t.Fatalf("ManifestRefs(%q) lists %q", data, d)
			}
		}
		if err == nil && doc.IsIndex() && !IsIndexType(SniffMediaType(data)) && !strings.Contains(strings.ToLower(string(data)), "mediatype") {
			t.Fatalf("SniffMediaType(%q) = %q for an index", data, SniffMediaType(data))
		}
	})
}

// A platform that parses is written back as one that parses to the same platform, and
// matches itself.
func FuzzParsePlatform(f *testing.F) {
	for _, s := range []string{"linux/amd64", "linux/arm64/v8", "linux/arm", "Linux/AArch64", "windows(10.0.17763)/amd64", "linux/arm/7", "a/b/c/d", "linux//v7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePlatform(s)
		if err != nil {
			return
		}
		if !MatchPlatform(p, &p) {
			t.Fatalf("ParsePlatform(%q) = %+v does not match itself", s, p)
		}
		q, err := ParsePlatform(FormatPlatform(&p))
		if err != nil || q.OS != p.OS || q.Architecture != p.Architecture || q.Variant != p.Variant {
			t.Fatalf("ParsePlatform(%q) = %+v, written %q, read back %+v, %v", s, p, FormatPlatform(&p), q, err)
		}
	})
}
