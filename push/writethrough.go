package push

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/store"
)

// Forwarder sends pushed content to an upstream registry configured for write-through
// (upstream.Client).
type Forwarder interface {
	HasBlob(ctx context.Context, host, repo string, d digest.Digest) (bool, error)
	PushBlob(ctx context.Context, host, repo string, d digest.Digest, size int64, open func() (io.ReadCloser, error)) error
	PutManifest(ctx context.Context, host, repo, ref, mediaType string, data []byte) (digest.Digest, error)
}

// SetWriteThrough enables ServeWriteThrough. accepted is called once the upstream took a
// manifest, with the digests of it and of the content this node holds for it (the daemon
// decides whether peers may fetch them: private stays private).
func (h *Handler) SetWriteThrough(f Forwarder, accepted func(ctx context.Context, host, repo string, held []digest.Digest)) {
	h.fwd, h.onForwarded = f, accepted
}

// ServeWriteThrough answers a write to an upstream registry configured for write-through:
// uploads are received, verified and stored as in the local namespace; a manifest PUT is
// verified, forwarded with the blobs the upstream lacks, and stored and tagged here only when
// the upstream accepted it. Reads are the mirror's.
func (h *Handler) ServeWriteThrough(w http.ResponseWriter, r *http.Request, c Client, host string) error {
	if h.fwd == nil {
		return errorf(http.StatusMethodNotAllowed, oci.CodeUnsupported, nil, "write-through is not enabled")
	}
	q, err := h.parse(r, host)
	if err != nil {
		return err
	}
	q.host = host
	if err := h.authorize(c, host+"/"+q.repo); err != nil {
		return err
	}
	if ok, err := h.serveUpload(w, r, q); ok {
		return err
	}
	if q.kind+" "+r.Method == "manifest PUT" {
		return h.putManifest(w, r, q)
	}
	return errorf(http.StatusMethodNotAllowed, oci.CodeUnsupported, nil, "%s is not supported for write-through to %s", r.Method, host)
}

// forwarded is a verified manifest on its way to the upstream.
type forwarded struct {
	data      []byte
	digest    digest.Digest
	mediaType string
	refs      []digest.Digest // content it references (blobs, or child manifests of an index)
	missing   []string        // refs this node does not hold
	index     bool
}

// forwardManifest sends the blobs the upstream lacks, then the manifest; only when the
// upstream answered 2xx does this node store and tag it and announce what it holds.
func (h *Handler) forwardManifest(w http.ResponseWriter, r *http.Request, q req, f forwarded) error {
	ctx := r.Context()
	if !f.index {
		for _, ref := range f.refs {
			has, err := h.fwd.HasBlob(ctx, q.host, q.repo, ref)
			if err != nil {
				return err
			}
			held := !slices.Contains(f.missing, ref.String())
			switch {
			case has:
			case !held:
				return errorf(http.StatusBadRequest, oci.CodeManifestBlobUnknown, nil,
					"manifest references %s, which neither this node nor %s holds; nothing was pushed", ref, q.host)
			default:
				info, err := h.st.Stat(ctx, ref)
				if err != nil {
					return storeErr(err, "blob "+ref.String())
				}
				open := func() (io.ReadCloser, error) {
					rc, _, err := h.st.Reader(ctx, ref)
					return rc, err
				}
				if err := h.fwd.PushBlob(ctx, q.host, q.repo, ref, info.Size, open); err != nil {
					return err
				}
			}
		}
	}
	ud, err := h.fwd.PutManifest(ctx, q.host, q.repo, q.ref, f.mediaType, f.data)
	if err != nil {
		return err
	}
	if ud != f.digest {
		h.log.Warn("upstream answered another manifest digest", "registry", q.host, "repo", q.repo, "want", f.digest, "got", ud)
	}
	wctx := context.WithoutCancel(ctx)
	if err := h.st.PutSmall(wctx, f.digest, f.mediaType, f.data); err != nil {
		return storeErr(err, "manifest")
	}
	var held []digest.Digest
	for _, ref := range f.refs {
		if !slices.Contains(f.missing, ref.String()) {
			held = append(held, ref)
		}
	}
	if len(held) > 0 {
		if err := h.st.SetRefs(wctx, f.digest, held); err != nil {
			return storeErr(err, "manifest references")
		}
	}
	// The content is now a cached copy of the upstream's: it may be evicted like any other.
	h.mu.Lock()
	for _, ref := range held {
		if _, ok := h.unreferenced[ref]; ok {
			delete(h.unreferenced, ref)
			_ = h.st.Unpin(wctx, ref)
		}
	}
	h.mu.Unlock()
	if !oci.IsDigestRef(q.ref) {
		name := q.host + "/" + q.repo + ":" + q.ref
		t := store.Tag{Digest: f.digest, MediaType: f.mediaType, Size: int64(len(f.data)), Checked: time.Now()}
		if err := h.st.PutTag(wctx, name, t); err != nil {
			return storeErr(err, "tag")
		}
	}
	if h.onForwarded != nil {
		h.onForwarded(wctx, q.host, q.repo, append(held, f.digest))
	}
	hd := w.Header()
	hd.Set("Location", location(q.prefix, "manifests", f.digest.String()))
	hd.Set("Docker-Content-Digest", f.digest.String())
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// WriteThroughHost returns the registry a write request names when it is not the local
// namespace: ?ns=, else the path's first element when it looks like a host.
func WriteThroughHost(r *http.Request) string {
	if ns := r.URL.Query().Get("ns"); ns != "" {
		return ns
	}
	first, _, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v2/"), "/")
	if !ok || !strings.ContainsAny(first, ".:") && first != "localhost" {
		return ""
	}
	return first
}
