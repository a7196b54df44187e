package push

import (
	"context"
	"encoding/json"
	"io"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/oci"
)

// LocalUsage is what this node's store holds for the local namespace: the images its tags
// name (pushed here, copies, or pulled from peers), apart from cached upstream content.
type LocalUsage struct {
	Tags   int   // tags of the namespace this node holds
	Images int   // distinct manifests they name that the store holds
	Pinned int   // of those, pinned (never evicted by LRU or TTL)
	Bytes  int64 // their manifests, child manifests and blobs, each counted once
	// Digests is every digest counted in Bytes.
	Digests map[digest.Digest]bool
}

// LocalUsage sums what the store holds for the namespace's tags.
func (h *Handler) LocalUsage(ctx context.Context) LocalUsage {
	u := LocalUsage{Digests: map[digest.Digest]bool{}}
	roots := map[digest.Digest]bool{}
	for _, name := range h.HeldTags() {
		t, err := h.st.GetTag(ctx, name)
		if err != nil {
			continue
		}
		u.Tags++
		roots[t.Digest] = true
	}
	for root := range roots {
		info, err := h.st.Stat(ctx, root)
		if err != nil {
			continue
		}
		u.Images++
		if info.Pinned {
			u.Pinned++
		}
		h.sumImage(ctx, root, &u, 0)
	}
	return u
}

func (h *Handler) sumImage(ctx context.Context, d digest.Digest, u *LocalUsage, depth int) {
	if u.Digests[d] || depth > 4 {
		return
	}
	info, err := h.st.Stat(ctx, d)
	if err != nil {
		return
	}
	u.Digests[d] = true
	u.Bytes += info.Size
	if info.Size > oci.MaxManifestSize || !strings.Contains(info.MediaType, "manifest") && !strings.Contains(info.MediaType, "index") {
		return // a blob
	}
	rc, _, err := h.st.Reader(ctx, d)
	if err != nil {
		return
	}
	data, err := io.ReadAll(io.LimitReader(rc, oci.MaxManifestSize+1))
	rc.Close()
	var m manifestShape
	if err != nil || json.Unmarshal(data, &m) != nil || m.Config == nil && m.Manifests == nil {
		return // a blob, or not a manifest
	}
	if m.Config != nil {
		h.sumImage(ctx, m.Config.Digest, u, depth+1)
	}
	for _, ds := range m.Layers {
		if len(ds.URLs) == 0 {
			h.sumImage(ctx, ds.Digest, u, depth+1)
		}
	}
	for _, ds := range m.Manifests {
		h.sumImage(ctx, ds.Digest, u, depth+1)
	}
}
