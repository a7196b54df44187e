package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// testImage describes an image seeded into the upstream: what a client pulling Repo:Tag must end
// up with.
type testImage struct {
	Repo, Tag string
	Digest    string // digest of the tag's manifest (an index for multi-arch images)
	MediaType string
	Size      int64
	// Manifests are the platform manifests of an index (empty for a single manifest).
	Manifests []string
	// Blobs are all config and layer digests, across platforms.
	Blobs []string
	// AMD64 are the config and layer digests of the linux/amd64 image (what ctr pulls by default).
	AMD64         []string
	AMD64Manifest string
	// Layers are the layer digests only (all platforms), with their sizes.
	Layers     []string
	LayerSizes map[string]int64
}

// Ref returns repo:tag.
func (ti testImage) Ref() string { return ti.Repo + ":" + ti.Tag }

// imageSpec says how to build a deterministic test image.
type imageSpec struct {
	repo, tag string
	seed      uint64
	layers    int
	size      int64 // random payload bytes per layer
	gzip      bool
	oci       bool
	platforms []v1.Platform // empty: a single linux/amd64 manifest
}

// memLayer is a layer held in memory; its DiffID is the digest of the uncompressed tar, so that
// containerd's and dockerd's unpack checks pass.
type memLayer struct {
	blob   []byte
	diffID v1.Hash
	mt     types.MediaType
}

func sha(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

func (l *memLayer) Digest() (v1.Hash, error) { return sha(l.blob), nil }
func (l *memLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *memLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.blob)), nil
}
func (l *memLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, fmt.Errorf("memLayer: not needed")
}
func (l *memLayer) Size() (int64, error)                { return int64(len(l.blob)), nil }
func (l *memLayer) MediaType() (types.MediaType, error) { return l.mt, nil }

// randomLayer builds a tar with one text file and size bytes of seeded random data.
func randomLayer(seed uint64, size int64, gz, oci bool) (*memLayer, error) {
	var tb bytes.Buffer
	tb.Grow(int(size) + 4096)
	tw := tar.NewWriter(&tb)
	txt := []byte(fmt.Sprintf("layer seed %d size %d\n", seed, size))
	if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("layer-%d.txt", seed), Mode: 0o644, Size: int64(len(txt)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	tw.Write(txt)
	if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data-%d.bin", seed), Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	var key [32]byte
	key[0], key[1] = byte(seed), byte(seed>>8)
	if _, err := io.CopyN(tw, rand.NewChaCha8(key), size); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	l := &memLayer{blob: tb.Bytes(), diffID: sha(tb.Bytes())}
	switch {
	case gz && oci:
		l.mt = types.OCILayer
	case gz:
		l.mt = types.DockerLayer
	case oci:
		l.mt = types.OCIUncompressedLayer
	default:
		l.mt = types.DockerUncompressedLayer
	}
	if gz {
		var gb bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gb, gzip.BestSpeed)
		zw.Write(tb.Bytes())
		if err := zw.Close(); err != nil {
			return nil, err
		}
		l.blob = gb.Bytes()
	}
	return l, nil
}

func buildImage(sp imageSpec, seed uint64, plat v1.Platform) (v1.Image, error) {
	var img v1.Image = empty.Image
	if sp.oci {
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	}
	for i := 0; i < sp.layers; i++ {
		l, err := randomLayer(seed*1000+uint64(i), sp.size, sp.gzip, sp.oci)
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = plat.OS, plat.Architecture, plat.Variant
	cf.Config.Cmd = []string{"/bin/true"}
	return mutate.ConfigFile(img, cf)
}

// seedImage builds sp and pushes it to the registry at addr (plain HTTP).
func seedImage(addr string, sp imageSpec) (testImage, error) {
	ti := testImage{Repo: sp.repo, Tag: sp.tag, LayerSizes: map[string]int64{}}
	ref, err := name.ParseReference(addr+"/"+sp.repo+":"+sp.tag, name.Insecure)
	if err != nil {
		return ti, err
	}
	addImage := func(img v1.Image, amd64 bool) error {
		m, err := img.Manifest()
		if err != nil {
			return err
		}
		ti.Blobs = append(ti.Blobs, m.Config.Digest.String())
		if amd64 {
			ti.AMD64 = append(ti.AMD64, m.Config.Digest.String())
		}
		for _, l := range m.Layers {
			ti.Blobs = append(ti.Blobs, l.Digest.String())
			ti.Layers = append(ti.Layers, l.Digest.String())
			ti.LayerSizes[l.Digest.String()] = l.Size
			if amd64 {
				ti.AMD64 = append(ti.AMD64, l.Digest.String())
			}
		}
		return nil
	}
	if len(sp.platforms) == 0 {
		img, err := buildImage(sp, sp.seed, v1.Platform{OS: "linux", Architecture: "amd64"})
		if err != nil {
			return ti, err
		}
		if err := remote.Write(ref, img); err != nil {
			return ti, fmt.Errorf("push %s: %w", ref, err)
		}
		if err := addImage(img, true); err != nil {
			return ti, err
		}
		d, _ := img.Digest()
		mt, _ := img.MediaType()
		sz, _ := img.Size()
		ti.Digest, ti.MediaType, ti.Size, ti.AMD64Manifest = d.String(), string(mt), sz, d.String()
		return ti, nil
	}
	// The index is written by hand, as registries' clients write them (no artifactType): older
	// clients such as skopeo 1.9 rewrite an index with fields they do not know, changing its digest.
	idx := rawIndex{SchemaVersion: 2, MediaType: string(types.OCIImageIndex)}
	if !sp.oci {
		idx.MediaType = string(types.DockerManifestList)
	}
	for i, pl := range sp.platforms {
		img, err := buildImage(sp, sp.seed+uint64(i)*100, pl)
		if err != nil {
			return ti, err
		}
		d, _ := img.Digest()
		if err := remote.Write(ref.Context().Digest(d.String()), img); err != nil {
			return ti, fmt.Errorf("push %s@%s: %w", ref, d, err)
		}
		mt, _ := img.MediaType()
		sz, _ := img.Size()
		idx.Manifests = append(idx.Manifests, rawDescriptor{MediaType: string(mt), Size: sz, Digest: d.String(),
			Platform: &rawPlatform{Architecture: pl.Architecture, OS: pl.OS, Variant: pl.Variant}})
		amd64 := pl.OS == "linux" && pl.Architecture == "amd64"
		if err := addImage(img, amd64); err != nil {
			return ti, err
		}
		ti.Manifests = append(ti.Manifests, d.String())
		if amd64 {
			ti.AMD64Manifest = d.String()
		}
	}
	raw, err := json.Marshal(idx)
	if err != nil {
		return ti, err
	}
	if err := remote.Put(ref, rawManifest{raw: raw, mt: types.MediaType(idx.MediaType)}); err != nil {
		return ti, fmt.Errorf("push %s: %w", ref, err)
	}
	ti.Digest, ti.MediaType, ti.Size = bytesDigest(raw), idx.MediaType, int64(len(raw))
	return ti, nil
}

type rawIndex struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Manifests     []rawDescriptor `json:"manifests"`
}

type rawDescriptor struct {
	MediaType string       `json:"mediaType"`
	Size      int64        `json:"size"`
	Digest    string       `json:"digest"`
	Platform  *rawPlatform `json:"platform,omitempty"`
}

type rawPlatform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Variant      string `json:"variant,omitempty"`
}

// rawManifest pushes manifest bytes as they are.
type rawManifest struct {
	raw []byte
	mt  types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.raw, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }

var (
	amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
)

// seededImages are the images every test can pull from the shared upstream.
type seededImages struct {
	Small    testImage // test/small:v1: OCI manifest, 3 small gzip layers
	Multi    testImage // test/multi:v1: OCI index, 2 platforms
	DockerML testImage // test/dockerml:v1: Docker manifest list, 2 platforms
	Hello    testImage // library/hello:v1: Docker manifest list (docker.io/library/hello:v1)
	Big      testImage // test/big:v1: one 110 MiB uncompressed layer
	Conc     testImage // test/conc:v1: 3 layers of 6 MiB, for concurrent pulls
	Private  testImage // private/small:v1: needs credentials on the token upstream
}

func seedAll(addr string) (seededImages, error) {
	var s seededImages
	specs := []struct {
		dst *testImage
		sp  imageSpec
	}{
		{&s.Small, imageSpec{repo: "test/small", tag: "v1", seed: 1, layers: 3, size: 16 << 10, gzip: true, oci: true}},
		{&s.Multi, imageSpec{repo: "test/multi", tag: "v1", seed: 2, layers: 2, size: 64 << 10, gzip: true, oci: true, platforms: []v1.Platform{amd64, arm64}}},
		{&s.DockerML, imageSpec{repo: "test/dockerml", tag: "v1", seed: 3, layers: 1, size: 32 << 10, gzip: true, platforms: []v1.Platform{amd64, arm64}}},
		{&s.Hello, imageSpec{repo: "library/hello", tag: "v1", seed: 4, layers: 2, size: 32 << 10, gzip: true, platforms: []v1.Platform{amd64, arm64}}},
		{&s.Big, imageSpec{repo: "test/big", tag: "v1", seed: 5, layers: 1, size: 110 << 20, oci: true}},
		{&s.Conc, imageSpec{repo: "test/conc", tag: "v1", seed: 6, layers: 3, size: 6 << 20, oci: true}},
		{&s.Private, imageSpec{repo: "private/small", tag: "v1", seed: 7, layers: 1, size: 8 << 10, gzip: true, oci: true}},
	}
	for _, x := range specs {
		ti, err := seedImage(addr, x.sp)
		if err != nil {
			return s, err
		}
		*x.dst = ti
	}
	// More tags on test/small, for tags/list pagination.
	for _, tag := range []string{"v2", "v3"} {
		src, err := name.ParseReference(addr+"/"+s.Small.Ref(), name.Insecure)
		if err != nil {
			return s, err
		}
		desc, err := remote.Get(src)
		if err != nil {
			return s, err
		}
		if err := remote.Tag(src.Context().Tag(tag), desc); err != nil {
			return s, fmt.Errorf("tag %s: %w", tag, err)
		}
	}
	return s, nil
}
