package oci

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// IsManifestType tells manifests and indexes (Docker's and OCI's) from blobs by media type.
func IsManifestType(mt string) bool {
	return slices.Contains(ManifestAccept, mt) && mt != "*/*"
}

// IsIndexType reports whether mt names an index: an OCI image index or a Docker manifest list.
func IsIndexType(mt string) bool {
	return mt == ocispec.MediaTypeImageIndex || mt == MediaTypeDockerManifestList
}

// shape is what decides how a manifest is read: a "config" and a "manifests" that are present
// and not null.
type shape struct {
	Config    *json.RawMessage  `json:"config"`
	Manifests []json.RawMessage `json:"manifests"`
}

// Doc is a manifest or an index, read from its JSON (Docker's schema 2 or OCI's; they carry
// the same fields). Exactly one of Image and Index is set. A document with "manifests" and
// without "config" is an index, whatever its mediaType says (an OCI index need not name its
// type); anything else is an image manifest.
type Doc struct {
	Image *ocispec.Manifest
	Index *ocispec.Index
	// hasConfig: the image manifest names a config (ocispec.Manifest's Config is a value, so
	// it cannot tell "absent" from "empty").
	hasConfig bool
}

// ParseManifest reads a manifest or an index. It fails only on JSON that does not decode into
// the document's shape; it does not validate digests (the caller decides what a bad
// reference means to it).
func ParseManifest(data []byte) (Doc, error) {
	var s shape
	if err := json.Unmarshal(data, &s); err != nil {
		return Doc{}, fmt.Errorf("manifest is not JSON: %w", err)
	}
	if s.Config == nil && s.Manifests != nil {
		var idx ocispec.Index
		if err := json.Unmarshal(data, &idx); err != nil {
			return Doc{}, fmt.Errorf("manifest is not JSON: %w", err)
		}
		return Doc{Index: &idx}, nil
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Doc{}, fmt.Errorf("manifest is not JSON: %w", err)
	}
	return Doc{Image: &m, hasConfig: s.Config != nil}, nil
}

// IsIndex reports whether the document is an index.
func (d Doc) IsIndex() bool { return d.Index != nil }

// Config is an image manifest's config descriptor, nil for an index or a manifest without one.
func (d Doc) Config() *ocispec.Descriptor {
	if d.Image == nil || !d.hasConfig {
		return nil
	}
	return &d.Image.Config
}

// Layers are an image manifest's layers (nil for an index).
func (d Doc) Layers() []ocispec.Descriptor {
	if d.Image == nil {
		return nil
	}
	return d.Image.Layers
}

// Manifests are an index's children (nil for an image manifest).
func (d Doc) Manifests() []ocispec.Descriptor {
	if d.Index == nil {
		return nil
	}
	return d.Index.Manifests
}

// SniffMediaType names the media type of a manifest that came without one (the peer protocol
// carries bytes only): the document's own mediaType field (Docker's manifests always have
// it), else the OCI type its shape says (a non-null "manifests": an index), and
// application/octet-stream for what is not JSON.
func SniffMediaType(data []byte) string {
	var s struct {
		MediaType string            `json:"mediaType"`
		Manifests []json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(data, &s) != nil {
		return "application/octet-stream"
	}
	switch {
	case s.MediaType != "":
		return s.MediaType
	case s.Manifests != nil:
		return ocispec.MediaTypeImageIndex
	}
	return ocispec.MediaTypeImageManifest
}

// ManifestRefs lists what a manifest or index points to, whatever its shape: the config, the
// layers, the child manifests, each with a well-formed digest, in that order (the store keeps
// these alive with the manifest). JSON that is not a manifest references nothing. Only the
// digests are read, so that a descriptor's other fields cannot make its references vanish.
func ManifestRefs(data []byte) []digest.Digest {
	type desc struct {
		Digest digest.Digest `json:"digest"`
	}
	var s struct {
		Config    *desc  `json:"config"`
		Layers    []desc `json:"layers"`
		Manifests []desc `json:"manifests"`
	}
	if json.Unmarshal(data, &s) != nil {
		return nil
	}
	var out []digest.Digest
	if s.Config != nil && s.Config.Digest.Validate() == nil {
		out = append(out, s.Config.Digest)
	}
	for _, l := range slices.Concat(s.Layers, s.Manifests) {
		if l.Digest.Validate() == nil {
			out = append(out, l.Digest)
		}
	}
	return out
}

// ManifestSizes calls add with the digest and size of every descriptor of a manifest or index
// (config, layers, child manifests), whatever its shape; JSON that is not a manifest has none.
func ManifestSizes(data []byte, add func(digest.Digest, int64)) {
	type desc struct {
		Digest digest.Digest `json:"digest"`
		Size   int64         `json:"size"`
	}
	var s struct {
		Config    *desc  `json:"config"`
		Layers    []desc `json:"layers"`
		Manifests []desc `json:"manifests"`
	}
	if json.Unmarshal(data, &s) != nil {
		return
	}
	if s.Config != nil {
		add(s.Config.Digest, s.Config.Size)
	}
	for _, l := range slices.Concat(s.Layers, s.Manifests) {
		add(l.Digest, l.Size)
	}
}
