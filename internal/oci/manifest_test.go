package oci

import (
	"errors"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var (
	dCfg = digest.FromString("config")
	dL1  = digest.FromString("layer1")
	dL2  = digest.FromString("layer2")
	dM1  = digest.FromString("child1")
)

func TestSniffMediaType(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"docker manifest names itself", `{"mediaType":"` + MediaTypeDockerManifest + `","config":{}}`, MediaTypeDockerManifest},
		{"docker list names itself", `{"mediaType":"` + MediaTypeDockerManifestList + `","manifests":[]}`, MediaTypeDockerManifestList},
		{"oci index without mediaType", `{"schemaVersion":2,"manifests":[]}`, ocispec.MediaTypeImageIndex},
		{"oci manifest without mediaType", `{"schemaVersion":2,"config":{},"layers":[]}`, ocispec.MediaTypeImageManifest},
		// fetch.SniffManifestType called this an index: "manifests": null lists no child.
		{"null manifests is no index", `{"schemaVersion":2,"manifests":null,"layers":[]}`, ocispec.MediaTypeImageManifest},
		{"not JSON", `not json`, "application/octet-stream"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := SniffMediaType([]byte(c.in)); got != c.want {
				t.Errorf("SniffMediaType(%s) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}

func TestManifestRefs(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     []digest.Digest
	}{
		{"image", `{"config":{"digest":"` + dCfg.String() + `"},"layers":[{"digest":"` + dL1.String() + `"},{"digest":"` + dL2.String() + `"}]}`, []digest.Digest{dCfg, dL1, dL2}},
		{"index", `{"manifests":[{"digest":"` + dM1.String() + `","platform":{"os":"linux","architecture":"amd64"}}]}`, []digest.Digest{dM1}},
		{"bad digests skipped", `{"config":{"digest":"sha256:nope"},"layers":[{"digest":""},{"digest":"` + dL1.String() + `"}]}`, []digest.Digest{dL1}},
		// Only digests are read: a descriptor field of the wrong type does not hide the references.
		{"odd size kept", `{"layers":[{"digest":"` + dL1.String() + `","size":"12"}]}`, []digest.Digest{dL1}},
		{"not JSON", `[`, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := ManifestRefs([]byte(c.in)); !slices.Equal(got, c.want) {
				t.Errorf("ManifestRefs = %v, want %v", got, c.want)
			}
		})
	}
}

func TestManifestSizes(t *testing.T) {
	got := map[digest.Digest]int64{}
	ManifestSizes([]byte(`{"config":{"digest":"`+dCfg.String()+`","size":7},"layers":[{"digest":"`+dL1.String()+`","size":9}],"manifests":[{"digest":"`+dM1.String()+`","size":11}]}`),
		func(d digest.Digest, n int64) { got[d] = n })
	if len(got) != 3 || got[dCfg] != 7 || got[dL1] != 9 || got[dM1] != 11 {
		t.Errorf("ManifestSizes = %v", got)
	}
}

func TestParseManifest(t *testing.T) {
	t.Run("image", func(t *testing.T) {
		doc, err := ParseManifest([]byte(`{"schemaVersion":2,"mediaType":"` + MediaTypeDockerManifest + `","config":{"mediaType":"` + MediaTypeDockerConfig + `","digest":"` + dCfg.String() + `","size":7},"layers":[{"digest":"` + dL1.String() + `","size":9}]}`))
		if err != nil {
			t.Fatal(err)
		}
		if doc.IsIndex() || doc.Config() == nil || doc.Config().Digest != dCfg || doc.Config().MediaType != MediaTypeDockerConfig || len(doc.Layers()) != 1 || doc.Layers()[0].Size != 9 || doc.Manifests() != nil {
			t.Errorf("doc = %+v", doc)
		}
	})
	t.Run("index", func(t *testing.T) {
		doc, err := ParseManifest([]byte(`{"schemaVersion":2,"manifests":[{"digest":"` + dM1.String() + `","platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}`))
		if err != nil {
			t.Fatal(err)
		}
		if !doc.IsIndex() || doc.Config() != nil || doc.Layers() != nil || len(doc.Manifests()) != 1 || FormatPlatform(doc.Manifests()[0].Platform) != "linux/arm64/v8" {
			t.Errorf("doc = %+v", doc)
		}
	})
	t.Run("config wins over manifests", func(t *testing.T) {
		doc, err := ParseManifest([]byte(`{"config":{"digest":"` + dCfg.String() + `"},"manifests":[]}`))
		if err != nil || doc.IsIndex() || doc.Config() == nil {
			t.Errorf("doc = %+v, %v", doc, err)
		}
	})
	t.Run("no config", func(t *testing.T) {
		doc, err := ParseManifest([]byte(`{"layers":[]}`))
		if err != nil || doc.IsIndex() || doc.Config() != nil {
			t.Errorf("doc = %+v, %v", doc, err)
		}
	})
	t.Run("not JSON", func(t *testing.T) {
		if _, err := ParseManifest([]byte(`{"layers":`)); err == nil {
			t.Error("no error")
		}
	})
}

func TestIsManifestType(t *testing.T) {
	for _, mt := range []string{MediaTypeDockerManifest, MediaTypeDockerManifestList, ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex} {
		if !IsManifestType(mt) {
			t.Errorf("IsManifestType(%q) = false", mt)
		}
	}
	for _, mt := range []string{"*/*", "", ocispec.MediaTypeImageLayerGzip, MediaTypeDockerConfig} {
		if IsManifestType(mt) {
			t.Errorf("IsManifestType(%q) = true", mt)
		}
	}
	if !IsIndexType(MediaTypeDockerManifestList) || !IsIndexType(ocispec.MediaTypeImageIndex) || IsIndexType(ocispec.MediaTypeImageManifest) {
		t.Error("IsIndexType")
	}
}

func TestParsePlatform(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"linux/amd64", "linux/amd64"},
		{"linux/arm64/v8", "linux/arm64/v8"},
		{"linux/arm/v7", "linux/arm/v7"},
		{"linux/x86_64", "linux/amd64"},
		{"Linux/AArch64", "linux/arm64"},
		{"windows/amd64", "windows/amd64"},
	} {
		p, err := ParsePlatform(c.in)
		if err != nil || FormatPlatform(&p) != c.want {
			t.Errorf("ParsePlatform(%q) = %q, %v; want %q", c.in, FormatPlatform(&p), err, c.want)
		}
	}
	for _, in := range []string{"", "linux", "amd64", "linux/", "/amd64", "linux/arm/v7/x", "linux/amd 64", "linux/*"} {
		if _, err := ParsePlatform(in); !errors.Is(err, ErrPlatformInvalid) {
			t.Errorf("ParsePlatform(%q) = %v, want ErrPlatformInvalid", in, err)
		}
	}
}

func TestMatchPlatform(t *testing.T) {
	plat := func(os, arch, variant string) *ocispec.Platform {
		return &ocispec.Platform{OS: os, Architecture: arch, Variant: variant}
	}
	for _, c := range []struct {
		want  string
		got   *ocispec.Platform
		match bool
	}{
		{"linux/amd64", plat("linux", "amd64", ""), true},
		{"linux/amd64", plat("linux", "arm64", ""), false},
		{"linux/amd64", plat("windows", "amd64", ""), false},
		{"linux/amd64", nil, false},
		// arm64 is arm64/v8: an index may name the variant or not (docker buildx names it,
		// ko and crane images often do not).
		{"linux/arm64/v8", plat("linux", "arm64", ""), true},
		{"linux/arm64/v8", plat("linux", "arm64", "v8"), true},
		{"linux/arm64", plat("linux", "arm64", "v8"), true},
		{"linux/aarch64", plat("linux", "arm64", "v8"), true},
		{"linux/x86_64", plat("linux", "amd64", ""), true},
		// arm is arm/v7 (what docker pull --platform linux/arm runs); v6 is another platform.
		{"linux/arm", plat("linux", "arm", "v7"), true},
		{"linux/arm", plat("linux", "arm", "v6"), false},
		{"linux/arm/v7", plat("linux", "arm", ""), true},
		{"linux/arm/v6", plat("linux", "arm", "v7"), false},
	} {
		want, err := ParsePlatform(c.want)
		if err != nil {
			t.Fatal(err)
		}
		if got := MatchPlatform(want, c.got); got != c.match {
			t.Errorf("MatchPlatform(%s, %s) = %v, want %v", c.want, FormatPlatform(c.got), got, c.match)
		}
	}
}
