package push

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/store"
)

// upload is one blob upload session: a store writer that hashes what arrives and becomes
// visible only at the final PUT, when the client names the digest.
type upload struct {
	id   string
	repo string

	mu     sync.Mutex // serialises the requests of one session
	w      *store.Writer
	last   time.Time // last request; the sweep drops sessions idle for UploadTimeout
	closed bool
}

func (u *upload) discard() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.closed {
		u.closed = true
		_ = u.w.Close() // aborts: the temporary file goes
	}
}

func errUploadUnknown(id string) *Error {
	return errorf(http.StatusNotFound, oci.CodeBlobUploadUnknown, nil, "upload %s is unknown (finished, cancelled, or dropped after push.upload_timeout)", id)
}

// startUpload answers POST .../blobs/uploads/: a cross-repository mount, a monolithic upload
// (?digest= with the body), or a new session.
func (h *Handler) startUpload(w http.ResponseWriter, r *http.Request, q req) error {
	ctx := r.Context()
	qs := r.URL.Query()
	if m := qs.Get("mount"); m != "" {
		// Content is addressed by digest across the whole namespace: a blob this node holds
		// can be mounted into any repository the client may push to.
		if d, err := oci.ParseDigest(m); err == nil {
			if from := qs.Get("from"); q.host != "" && h.fwd != nil && from != "" {
				// Write-through: the registry mounts it from its own repository.
				mounted, err := h.mountFromRegistry(r, q, d, from)
				if err != nil {
					return err
				}
				if mounted {
					return h.created(w, q, d)
				}
			}
			if _, err := h.st.Stat(ctx, d); err == nil {
				return h.created(w, q, d)
			}
		}
		// Not here: fall back to a new session, as the spec says.
	}
	alg := digest.SHA256
	if d, err := digest.Parse(qs.Get("digest")); err == nil {
		alg = d.Algorithm() // hash with the algorithm the client already named
	}
	u, err := h.newUpload(ctx, path.Join(q.host, q.repo), alg)
	if err != nil {
		return err
	}
	if ds := qs.Get("digest"); ds != "" {
		u.mu.Lock()
		defer u.mu.Unlock()
		return h.finishLocked(w, r, q, u, ds)
	}
	h.accepted(w, q, u, http.StatusAccepted)
	return nil
}

func (h *Handler) newUpload(ctx context.Context, repo string, alg digest.Algorithm) (*upload, error) {
	wr, err := h.st.Ingest(ctx, alg, "application/octet-stream")
	if err != nil {
		return nil, storeErr(err, "upload")
	}
	u := &upload{id: newID(), repo: repo, w: wr, last: time.Now()}
	h.mu.Lock()
	h.uploads[u.id] = u
	h.mu.Unlock()
	return u, nil
}

// session finds an upload and locks it; the caller unlocks.
func (h *Handler) session(q req) (*upload, error) {
	h.mu.Lock()
	u := h.uploads[q.ref]
	h.mu.Unlock()
	if u == nil || u.repo != path.Join(q.host, q.repo) {
		return nil, errUploadUnknown(q.ref)
	}
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil, errUploadUnknown(q.ref)
	}
	u.last = time.Now()
	return u, nil
}

// drop ends a session (the caller holds u.mu): the writer is closed, which removes the
// temporary file unless it was committed.
func (h *Handler) drop(u *upload) {
	h.mu.Lock()
	delete(h.uploads, u.id)
	h.mu.Unlock()
	if !u.closed {
		u.closed = true
		_ = u.w.Close()
	}
}

// accepted writes the answer for a session in progress: where to send more, and how much
// was received (Range: 0-<last byte>, "0-0" before the first byte, as distribution does).
func (h *Handler) accepted(w http.ResponseWriter, q req, u *upload, status int) {
	hd := w.Header()
	hd.Set("Location", location(q.prefix, "blobs/uploads", u.id))
	hd.Set("Docker-Upload-UUID", u.id)
	hd.Set("Range", fmt.Sprintf("0-%d", max(0, u.w.Written()-1)))
	hd.Set("Content-Length", "0")
	hd.Set("OCI-Chunk-Min-Length", "0")
	w.WriteHeader(status)
}

func (h *Handler) created(w http.ResponseWriter, q req, d digest.Digest) error {
	if q.host == "" { // uploaded or mounted again after a DELETE: readable again everywhere
		h.revive(context.Background(), h.blobName(q.repo, d), store.Tag{Digest: d}, false)
	}
	hd := w.Header()
	hd.Set("Location", location(q.prefix, "blobs", d.String()))
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// patchUpload appends a chunk. With Content-Range the chunk must start where the upload
// stands (416 otherwise, with the current Range so the client can resume).
func (h *Handler) patchUpload(w http.ResponseWriter, r *http.Request, q req) error {
	u, err := h.session(q)
	if err != nil {
		return err
	}
	defer u.mu.Unlock()
	if err := checkRange(w, r, q, u); err != nil {
		return err
	}
	if err := h.receive(r, u); err != nil {
		return err
	}
	h.accepted(w, q, u, http.StatusAccepted)
	return nil
}

// checkRange refuses a chunk whose Content-Range does not start where the upload stands (416,
// with the current Range so that the client can resume).
func checkRange(w http.ResponseWriter, r *http.Request, q req, u *upload) error {
	cr := r.Header.Get("Content-Range")
	if cr == "" {
		return nil
	}
	start, end, ok := parseContentRange(cr)
	if ok && start == u.w.Written() && end >= start-1 {
		return nil
	}
	hd := w.Header()
	hd.Set("Location", location(q.prefix, "blobs/uploads", u.id))
	hd.Set("Range", fmt.Sprintf("0-%d", max(0, u.w.Written()-1)))
	hd.Set("Docker-Upload-UUID", u.id)
	return errorf(http.StatusRequestedRangeNotSatisfiable, oci.CodeBlobUploadInvalid, nil,
		"Content-Range %q does not continue the upload, which holds %d bytes", cr, u.w.Written())
}

// receive appends the request body to the upload, within MaxBlobSize. A body that breaks the
// cap ends the session: the client cannot complete it anyway.
func (h *Handler) receive(r *http.Request, u *upload) error {
	limit := h.cfg.MaxBlobSize
	if limit > 0 && r.ContentLength > 0 && u.w.Written()+r.ContentLength > limit {
		h.drop(u)
		return errTooLarge(limit)
	}
	var src io.Reader = r.Body
	if limit > 0 {
		src = io.LimitReader(r.Body, limit-u.w.Written()+1)
	}
	// The writer's ReadFrom reads the body straight into the buffers its hasher works on: one
	// copy (from the socket), large writes, the hash beside them.
	_, err := io.Copy(u.w, src)
	if limit > 0 && u.w.Written() > limit {
		h.drop(u)
		return errTooLarge(limit)
	}
	if err != nil {
		if errors.Is(err, store.ErrNoSpace) {
			h.drop(u)
			return storeErr(err, "upload")
		}
		// The client went away or its body broke: keep what arrived, the client may resume
		// from the Range a status request reports.
		return errorf(http.StatusBadRequest, oci.CodeBlobUploadInvalid, err, "reading the upload's body failed after %d bytes", u.w.Written())
	}
	return nil
}

func errTooLarge(limit int64) *Error {
	return errorf(http.StatusRequestEntityTooLarge, oci.CodeSizeInvalid, nil, "blob is larger than store.max_blob_size (%d bytes); the upload was dropped", limit)
}

// parseContentRange reads "<start>-<end>" (what clients send on PATCH), also with a
// "bytes " prefix.
func parseContentRange(s string) (int64, int64, bool) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "bytes ")
	s, _, _ = strings.Cut(s, "/")
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	return start, end, err1 == nil && err2 == nil && start >= 0
}

// finishUpload answers the final PUT ?digest=: append the body, verify, commit, pin.
func (h *Handler) finishUpload(w http.ResponseWriter, r *http.Request, q req) error {
	u, err := h.session(q)
	if err != nil {
		return err
	}
	defer u.mu.Unlock()
	return h.finishLocked(w, r, q, u, r.URL.Query().Get("digest"))
}

func (h *Handler) finishLocked(w http.ResponseWriter, r *http.Request, q req, u *upload, ds string) error {
	d, err := oci.ParseDigest(ds)
	if err != nil {
		h.drop(u)
		return errorf(http.StatusBadRequest, oci.CodeDigestInvalid, err, "the upload's final PUT needs ?digest=<algorithm:hex>")
	}
	if err := checkRange(w, r, q, u); err != nil {
		return err
	}
	if err := h.receive(r, u); err != nil {
		var pe *Error
		if !errors.As(err, &pe) || pe.Status != http.StatusRequestEntityTooLarge {
			h.drop(u)
		}
		return err
	}
	ctx := r.Context()
	err = u.w.CommitAs(context.WithoutCancel(ctx), d, -1)
	h.drop(u)
	if err != nil {
		return storeErr(err, "blob "+d.String())
	}
	h.pinPushed(ctx, d, q.host == "")
	return h.created(w, q, d)
}

// pinPushed protects a pushed blob from eviction until a manifest references it (then the
// manifest's pin protects it) or UploadTimeout passes without one.
// Write-through blobs (advertise false) are advertised once the upstream took the manifest.
func (h *Handler) pinPushed(ctx context.Context, d digest.Digest, advertise bool) {
	if err := h.st.Pin(context.WithoutCancel(ctx), d); err != nil {
		h.log.Warn("could not pin a pushed blob", "digest", d, "err", err)
	}
	h.mu.Lock()
	h.unreferenced[d] = time.Now()
	h.mu.Unlock()
	if advertise {
		h.onCommit(d)
	}
}

func (h *Handler) uploadStatus(w http.ResponseWriter, r *http.Request, q req) error {
	u, err := h.session(q)
	if err != nil {
		return err
	}
	defer u.mu.Unlock()
	h.accepted(w, q, u, http.StatusNoContent)
	return nil
}

func (h *Handler) cancelUpload(w http.ResponseWriter, r *http.Request, q req) error {
	u, err := h.session(q)
	if err != nil {
		return err
	}
	defer u.mu.Unlock()
	h.drop(u)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// sweepLoop drops uploads idle for UploadTimeout and unpins pushed blobs that no manifest
// referenced within it.
func (h *Handler) sweepLoop() {
	defer close(h.done)
	every := min(h.cfg.UploadTimeout/4, time.Minute)
	t := time.NewTicker(max(every, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case now := <-t.C:
			h.sweep(now)
		}
	}
}

func (h *Handler) sweep(now time.Time) {
	cutoff := now.Add(-h.cfg.UploadTimeout)
	h.mu.Lock()
	var idle []*upload
	for _, u := range h.uploads {
		if u.mu.TryLock() { // a session busy with a request is not idle
			if u.last.Before(cutoff) {
				idle = append(idle, u)
			}
			u.mu.Unlock()
		}
	}
	var orphans []digest.Digest
	for d, at := range h.unreferenced {
		if at.Before(cutoff) {
			orphans = append(orphans, d)
			delete(h.unreferenced, d)
		}
	}
	h.mu.Unlock()
	for _, u := range idle {
		u.mu.Lock()
		h.log.Info("dropping an abandoned upload", "upload", u.id, "repo", u.repo, "bytes", u.w.Written())
		h.drop(u)
		u.mu.Unlock()
	}
	for _, d := range orphans {
		_ = h.st.Unpin(context.Background(), d)
	}
}

// uploadsInProgress is the number of open sessions (tests).
func (h *Handler) uploadsInProgress() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.uploads)
}
