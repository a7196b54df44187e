package push

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
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
	// StatBlob asks the registry for a blob's size without downloading it.
	StatBlob(ctx context.Context, host, repo string, d digest.Digest) (size int64, ok bool, err error)
	// MountBlob asks the registry to mount d from another of its repositories.
	MountBlob(ctx context.Context, host, repo string, d digest.Digest, from string) (bool, error)
	// Delete deletes "manifests/REF" or "blobs/DIGEST" in the registry.
	Delete(ctx context.Context, host, repo, sub string) error
}

// SetWriteThrough enables ServeWriteThrough. accepted is called once the upstream took a
// manifest, with the digests of it and of the content this node holds for it (the daemon
// decides whether peers may fetch them: private stays private); it reports whether they may,
// and then LocalReplicas nodes get a copy before the push answers.
func (h *Handler) SetWriteThrough(f Forwarder, accepted func(ctx context.Context, host, repo string, held []digest.Digest) (shared bool)) {
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
	if q.kind+" "+r.Method == "blob HEAD" { // a read: the mirror's policy, no push rights
		return h.headWriteThroughBlob(w, r, q)
	}
	if err := h.authorize(c, host+"/"+q.repo); err != nil {
		return err
	}
	if ok, err := h.serveUpload(w, r, q); ok {
		return err
	}
	switch q.kind + " " + r.Method {
	case "manifest PUT":
		return h.putManifest(w, r, q)
	case "manifest DELETE", "blob DELETE":
		return h.deleteWriteThrough(w, r, q)
	}
	return errorf(http.StatusMethodNotAllowed, oci.CodeUnsupported, nil, "%s is not supported for write-through to %s", r.Method, host)
}

// headWriteThroughBlob answers HEAD of a blob of a write-through registry: from the store when
// this node holds it, else from the registry's own HEAD. Clients ask before every upload;
// the mirror's miss would download the whole blob to answer.
func (h *Handler) headWriteThroughBlob(w http.ResponseWriter, r *http.Request, q req) error {
	d := digest.Digest(q.ref)
	size, source := int64(0), "store"
	if info, err := h.st.Stat(r.Context(), d); err == nil {
		size = info.Size
	} else {
		n, ok, err := h.fwd.StatBlob(r.Context(), q.host, q.repo, d)
		if err != nil {
			return err
		}
		if !ok {
			return errorf(http.StatusNotFound, oci.CodeBlobUnknown, nil, "%s/%s holds no blob %s", q.host, q.repo, d)
		}
		size, source = n, "upstream"
	}
	hd := w.Header()
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Content-Length", strconv.FormatInt(size, 10))
	hd.Set("Accept-Ranges", "bytes")
	hd.Set("X-Shoal-Source", source)
	w.WriteHeader(http.StatusOK)
	return nil
}

// deleteWriteThrough passes a DELETE to the registry; only when it accepted does this node
// forget its copy (a manifest's tags, the manifest or blob bytes).
func (h *Handler) deleteWriteThrough(w http.ResponseWriter, r *http.Request, q req) error {
	if !h.cfg.AllowDelete {
		return errorf(http.StatusMethodNotAllowed, oci.CodeUnsupported, nil, "deletes are off (push.allow_delete)")
	}
	ctx := r.Context()
	sub := "manifests/" + q.ref
	if q.kind == "blob" {
		sub = "blobs/" + q.ref
	}
	if err := h.fwd.Delete(ctx, q.host, q.repo, sub); err != nil {
		return fmt.Errorf("%s refused the DELETE (registries may turn deletes off); nothing was deleted here: %w", q.host, err)
	}
	wctx := context.WithoutCancel(ctx)
	if q.kind == "manifest" && !oci.IsDigestRef(q.ref) {
		_ = h.st.DeleteTag(wctx, q.host+"/"+q.repo+":"+q.ref)
	} else {
		_ = h.st.Delete(wctx, digest.Digest(q.ref)) // with the tags naming it
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// mountFromRegistry passes a cross-repository mount to a write-through registry; from is the
// source repository as the client named it (with the registry host in the path, or bare with
// ?ns=). False: the registry did not mount it (the caller goes on as without a mount).
func (h *Handler) mountFromRegistry(r *http.Request, q req, d digest.Digest, from string) (bool, error) {
	if r.URL.Query().Get("ns") == "" {
		var ok bool
		if from, ok = strings.CutPrefix(from, q.host+"/"); !ok {
			return false, nil // a mount from another registry: the registry cannot do it
		}
	}
	if oci.ValidateRepo(from) != nil {
		return false, nil
	}
	return h.fwd.MountBlob(r.Context(), q.host, q.repo, d, from)
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
	shared := false
	if h.onForwarded != nil {
		shared = h.onForwarded(wctx, q.host, q.repo, append(held, f.digest))
	}
	hd := w.Header()
	if shared && len(f.missing) == 0 {
		// Copies, as for the local namespace: the rollout right after is served by peers
		// even when this node leaves. The asked peers check with the registry.
		ref := ":" + q.ref
		if oci.IsDigestRef(q.ref) {
			ref = "@" + q.ref
		}
		hd.Set(hdrCopies, strconv.Itoa(h.replicate(ctx, q.host+"/"+q.repo+ref, f.digest)))
	}
	hd.Set("Location", location(q.prefix, "manifests", f.digest.String()))
	hd.Set("Docker-Content-Digest", f.digest.String())
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// WritesThrough reports whether the write-through side answers r when it names a registry
// configured for it: writes, upload sessions, and HEAD of a blob (answered from the registry's
// HEAD, not by downloading the blob). Other reads are the mirror's.
func WritesThrough(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet:
		return strings.Contains(r.URL.Path, "/blobs/uploads/")
	case http.MethodHead:
		return strings.Contains(r.URL.Path, "/blobs/")
	}
	return true
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
