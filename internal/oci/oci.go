package oci

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// MaxManifestSize is the largest manifest shoal fetches, stores or serves (containerd's limit).
const MaxManifestSize = 4 << 20

// Docker's media types (Image Manifest V2, Schema 2), which image-spec does not define; for
// OCI's use image-spec's (ocispec.MediaTypeImageManifest, …).
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
)

// ManifestAccept is the Accept list sent upstream for every manifest request, so that the
// upstream never converts a manifest (a conversion changes its digest).
var ManifestAccept = []string{
	MediaTypeDockerManifest,
	MediaTypeDockerManifestList,
	ocispec.MediaTypeImageManifest,
	ocispec.MediaTypeImageIndex,
	"*/*",
}

// pathComponent is the OCI distribution spec's path-component grammar, anchored.
var pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`)

// ErrNameInvalid and friends classify bad client input; daemon maps them to OCI error codes.
var (
	ErrNameInvalid   = errors.New("invalid repository name")
	ErrDigestInvalid = errors.New("invalid digest")
	ErrTagInvalid    = errors.New("invalid tag")
)

// ValidateRepo checks a repository path (without registry host) against the OCI name grammar.
func ValidateRepo(name string) error {
	if name == "" || len(name) > reference.NameTotalLengthMax {
		return fmt.Errorf("%w: %q: length must be 1..%d", ErrNameInvalid, truncate(name), reference.NameTotalLengthMax)
	}
	// reference.NameRegexp admits a leading domain; shoal routes hosts itself, so a
	// repository here is path components only.
	for _, c := range strings.Split(name, "/") {
		if !pathComponent.MatchString(c) {
			return fmt.Errorf("%w: %q", ErrNameInvalid, truncate(name))
		}
	}
	return nil
}

// ParseDigest parses and validates a digest (algorithm registered and encoded part well formed).
func ParseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrDigestInvalid, truncate(s), err)
	}
	return d, nil
}

// IsDigestRef reports whether a manifest reference looks like a digest rather than a tag.
func IsDigestRef(ref string) bool { return strings.Contains(ref, ":") }

// ValidateTag checks a tag against the OCI grammar.
func ValidateTag(tag string) error {
	if !reference.TagRegexp.MatchString(tag) || reference.TagRegexp.FindString(tag) != tag {
		return fmt.Errorf("%w: %q", ErrTagInvalid, truncate(tag))
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
