package oci

import (
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ErrPlatformInvalid classifies a platform an operator wrote that is not os/arch[/variant].
var ErrPlatformInvalid = errors.New("invalid platform")

// ParsePlatform reads a platform as an operator writes it, os/arch[/variant] ("linux/amd64",
// "linux/arm64/v8", "linux/arm/v7"), with containerd's parser: names are lowercased, and
// containerd's aliases are taken (x86_64 is amd64, aarch64 is arm64, armhf is arm/v7). Unlike
// containerd, an OS or an architecture alone is refused: an operator who asks for a platform
// names both (shoal does not guess them from the host it runs on).
func ParsePlatform(s string) (ocispec.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return ocispec.Platform{}, fmt.Errorf("%w: platform %q: want os/arch[/variant], e.g. linux/amd64", ErrPlatformInvalid, s)
	}
	p, err := platforms.Parse(s)
	if err != nil {
		return ocispec.Platform{}, fmt.Errorf("%w: platform %q: want os/arch[/variant], e.g. linux/amd64 (%v)", ErrPlatformInvalid, s, err)
	}
	return p, nil
}

// MatchPlatform reports whether an index's child for platform got (nil: the child names none)
// is the one for want, by containerd's rule (platforms.NewMatcher): the same OS, architecture
// and variant once both are normalised, so that arm64 and arm64/v8 are one platform, arm and
// arm/v7 are one, and arm/v6 is another.
func MatchPlatform(want ocispec.Platform, got *ocispec.Platform) bool {
	return got != nil && platforms.NewMatcher(want).Match(*got)
}

// FormatPlatform writes a platform as os/arch[/variant], "" for none.
func FormatPlatform(p *ocispec.Platform) string {
	if p == nil {
		return ""
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// DefaultPlatform is the platform of the host shoal runs on, as containerd reckons it (on
// 32-bit arm, with the CPU's variant): the one `docker load` or containerd on this node would
// run. On arm64 it is arm64/v8 whatever the CPU says: images name arm64 (or arm64/v8) only,
// and a v9 CPU runs them.
func DefaultPlatform() ocispec.Platform {
	p := platforms.DefaultSpec()
	if p.Architecture == "arm64" {
		p.Variant = "v8"
	}
	return p
}
