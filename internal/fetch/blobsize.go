package fetch

import (
	"fmt"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"
	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/internal/ocierr"
)

// A blob download is bounded, whatever its source: by the size the manifest's descriptor gives
// (when this node served or fetched a manifest that references the blob), by the size the
// source announces (Content-Length, a peer's size), which must agree with the descriptor, and
// by store.max_blob_size. Without a bound, an upstream that sends a body that never ends fills
// the disk (seen: 9.3 GiB in 14 s, growing after the only client left).

// sizeMemoEntries bounds the descriptor sizes remembered: about 2 MiB of memory, the layers
// of well over a thousand images.
const sizeMemoEntries = 1 << 14

// Why a download broke its bound (the label of shoal_blob_bound_exceeded_total).
const (
	BoundDescriptor = "descriptor"     // more bytes than the manifest's descriptor says
	BoundLength     = "content_length" // the source announced a size other than the descriptor's
	BoundMax        = "max_blob_size"  // larger than store.max_blob_size
)

// boundError says which bound a download broke, and how.
type boundError struct {
	reason string
	detail string
}

func (e *boundError) Error() string { return ocierr.ErrBlobBound.Error() + ": " + e.detail }
func (e *boundError) Unwrap() error { return ocierr.ErrBlobBound }

// sizeMemo remembers blob sizes from the descriptors of the manifests this node serves or
// fetches, so that a download can be bounded by the size its manifest gives. It holds at most
// max digests, forgetting the oldest first. Two manifests that disagree about a digest's size
// make it forget that size (a manifest in one repository must not be able to break the pulls
// of another): the blob is then bounded by store.max_blob_size only.
type sizeMemo struct {
	mu    sync.Mutex
	max   int
	sizes map[digest.Digest]int64 // -1: manifests disagreed
	ring  []digest.Digest         // insertion order, for forgetting the oldest
	next  int
}

func newSizeMemo(max int) *sizeMemo {
	return &sizeMemo{max: max, sizes: make(map[digest.Digest]int64, max), ring: make([]digest.Digest, 0, max)}
}

// size returns the descriptor size known for d.
func (s *sizeMemo) size(d digest.Digest) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.sizes[d]
	return n, ok && n >= 0
}

func (s *sizeMemo) add(d digest.Digest, n int64) {
	if n < 0 || d.Validate() != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.sizes[d]; ok {
		if old != n {
			s.sizes[d] = -1
		}
		return
	}
	if len(s.ring) < s.max {
		s.ring = append(s.ring, d)
	} else {
		delete(s.sizes, s.ring[s.next])
		s.ring[s.next] = d
		s.next = (s.next + 1) % s.max
	}
	s.sizes[d] = n
}

// learn records the sizes in a manifest's descriptors: an image manifest's config and layers
// (blobs), an index's manifests (fetched as manifests, but a client may ask for them as blobs).
func (s *sizeMemo) learn(manifest []byte) { oci.ManifestSizes(manifest, s.add) }

// checkAnnounced judges the size a source announced for a blob (-1: it did not say) whose
// descriptor size is known (-1: none seen), and returns the size the download should expect.
func (s *spool) checkAnnounced(known, size int64) (int64, error) {
	switch {
	case size >= 0 && known >= 0 && size != known:
		return 0, &boundError{reason: BoundLength, detail: fmt.Sprintf("the source announced %d bytes, the manifest's descriptor says %d", size, known)}
	case size > s.maxBlob && s.maxBlob > 0:
		return 0, &boundError{reason: BoundMax, detail: fmt.Sprintf("the source announced %d bytes, more than store.max_blob_size (%d)", size, s.maxBlob)}
	case size < 0 && known >= 0:
		return known, nil
	}
	return size, nil
}

// overBound reports the bound that n more bytes would break, for a fill that wrote written
// bytes and expects size (-1: unknown).
func (s *spool) overBound(f *Fill, size, written int64, n int) error {
	total := written + int64(n)
	switch {
	case size >= 0 && total > size:
		reason := BoundLength
		if f.known >= 0 {
			reason = BoundDescriptor
		}
		return &boundError{reason: reason, detail: fmt.Sprintf("more than the %d bytes expected", size)}
	case s.maxBlob > 0 && total > s.maxBlob:
		return &boundError{reason: BoundMax, detail: fmt.Sprintf("more than store.max_blob_size (%d bytes)", s.maxBlob)}
	}
	return nil
}

// noteBound logs and counts a download of d stopped by its bound.
func (s *spool) noteBound(ref Ref, d digest.Digest, sources []Source, be *boundError) {
	s.mu.Lock()
	s.bounded[be.reason]++
	s.mu.Unlock()
	s.log.Warn("blob download broke its size bound: its bytes are discarded",
		"registry", ref.Registry, "repo", ref.Repo, "digest", d, "sources", sources, "reason", be.reason, "err", be.detail)
}

// directBound bounds a pass-through download of d (the store is full) from offset pos whose
// source announced size (-1: unknown), by the same rules as a fill: r as is when nothing
// bounds it, else r failing with a boundError past the bound.
func (s *spool) directBound(r io.Reader, d digest.Digest, size, pos int64) (io.Reader, error) {
	known, ok := s.sizes.size(d)
	if !ok {
		known = -1
	}
	announced := size
	size, err := s.checkAnnounced(known, size)
	switch {
	case err != nil:
		return nil, err
	case known >= 0:
		return &boundReader{r: r, left: max(size-pos, 0), reason: BoundDescriptor}, nil
	case announced >= 0:
		return &boundReader{r: r, left: max(size-pos, 0), reason: BoundLength}, nil
	case s.maxBlob > 0:
		return &boundReader{r: r, left: max(s.maxBlob-pos, 0), reason: BoundMax}, nil
	}
	return r, nil
}

// boundReader fails with a boundError once r carries more than left bytes.
type boundReader struct {
	r      io.Reader
	left   int64
	reason string
}

func (b *boundReader) Read(p []byte) (int, error) {
	if int64(len(p)) > b.left {
		p = p[:b.left+1] // one byte past the bound shows an overflow
	}
	n, err := b.r.Read(p)
	if int64(n) > b.left {
		return 0, &boundError{reason: b.reason, detail: "the source sent more bytes than the blob's bound"}
	}
	b.left -= int64(n)
	return n, err
}

// boundExceeded returns the downloads stopped by their bound, by reason.
func (s *spool) boundExceeded() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int64, len(s.bounded))
	for k, v := range s.bounded {
		out[k] = v
	}
	return out
}
