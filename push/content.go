package push

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/store"
)

func (h *Handler) getBlob(w http.ResponseWriter, r *http.Request, q req) error {
	d := digest.Digest(q.ref)
	if h.deleted(r.Context(), h.blobName(q.repo, d), false) {
		return errorf(http.StatusNotFound, oci.CodeBlobUnknown, nil, "blob %s was deleted from %s/%s", d, h.cfg.Namespace, q.repo)
	}
	rc, _, err := h.st.Reader(r.Context(), d)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) && h.cluster != nil {
			return h.cluster.ServeBlobFromPeers(w, r, q.repo, d)
		}
		if errors.Is(err, store.ErrNotFound) {
			return errorf(http.StatusNotFound, oci.CodeBlobUnknown, nil, "blob %s is not in the local namespace", d)
		}
		return err
	}
	defer rc.Close()
	hd := w.Header()
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Etag", `"`+d.String()+`"`)
	hd.Set("X-Shoal-Source", "store")
	// ServeContent answers Range requests (206, 416) and HEAD; the content is verified.
	http.ServeContent(w, r, "", time.Time{}, rc)
	return nil
}

// deleteBlob deletes a blob from the namespace on every node, as a manifest DELETE does: a
// tombstone record under blobName (reads of it answer 404, a second DELETE too, until it is
// uploaded again), the bytes on this node, and the peers are told: they drop its pin and remove
// their copy unless a manifest they hold references it (Nudged).
func (h *Handler) deleteBlob(w http.ResponseWriter, r *http.Request, q req) error {
	if !h.cfg.AllowDelete {
		return errorf(http.StatusMethodNotAllowed, oci.CodeUnsupported, nil, "deletes are off (push.allow_delete)")
	}
	ctx := r.Context()
	d := digest.Digest(q.ref)
	unknown := errorf(http.StatusNotFound, oci.CodeBlobUnknown, nil, "blob %s is not in %s/%s", d, h.cfg.Namespace, q.repo)
	name := h.blobName(q.repo, d)
	if h.deleted(ctx, name, true) {
		return unknown
	}
	if _, err := h.st.Stat(ctx, d); err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if h.cluster == nil {
			return unknown
		}
		hctx, cancel := context.WithTimeout(ctx, lookupTimeout)
		holders, _ := h.cluster.Holders(hctx, d)
		cancel()
		if len(holders) == 0 {
			return unknown
		}
	}
	wctx := context.WithoutCancel(ctx)
	h.mu.Lock()
	seq := h.seqs[name]
	delete(h.unreferenced, d)
	h.mu.Unlock()
	h.tombstone(wctx, name, seq)
	h.publish(wctx, name, store.Tag{Digest: d}, true)
	if err := h.st.Delete(wctx, d); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if h.cluster != nil {
		h.cluster.NudgeTag(wctx, name)
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// resolve maps a manifest reference of the namespace to a digest; stale says the swarm had no
// record and the node's cached one was used.
func (h *Handler) resolve(ctx context.Context, q req) (d digest.Digest, stale bool, err error) {
	if oci.IsDigestRef(q.ref) {
		return digest.Digest(q.ref), false, nil
	}
	d, stale, err = h.resolveTag(ctx, q.tagName(h.cfg.Namespace, q.ref))
	if err != nil {
		return "", false, errorf(http.StatusNotFound, oci.CodeManifestUnknown, nil, "tag %s is not in %s/%s", q.ref, h.cfg.Namespace, q.repo)
	}
	return d, stale, nil
}

func (h *Handler) getManifest(w http.ResponseWriter, r *http.Request, q req) error {
	ctx := r.Context()
	d, stale, err := h.resolve(ctx, q)
	if err != nil {
		return err
	}
	byDigest := oci.IsDigestRef(q.ref)
	if byDigest && h.manifestDeleted(ctx, q.repo, d, false) {
		return errorf(http.StatusNotFound, oci.CodeManifestUnknown, nil, "manifest %s was deleted from %s/%s", d, h.cfg.Namespace, q.repo)
	}
	rc, info, err := h.st.Reader(ctx, d)
	if errors.Is(err, store.ErrNotFound) && h.cluster != nil && !(byDigest && h.manifestDeleted(ctx, q.repo, d, true)) {
		if ferr := h.manifestFromSwarm(ctx, d); ferr == nil {
			rc, info, err = h.st.Reader(ctx, d)
		}
	}
	if stale {
		w.Header().Set(hdrStale, "true")
	}
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return errorf(http.StatusNotFound, oci.CodeManifestUnknown, nil, "manifest %s is not in the local namespace", d)
		}
		return err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, oci.MaxManifestSize+1))
	if err != nil {
		return err
	}
	hd := w.Header()
	hd.Set("Content-Type", info.MediaType)
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("Content-Length", strconv.Itoa(len(data)))
	hd.Set("Etag", `"`+d.String()+`"`)
	hd.Set("X-Shoal-Source", "store")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(data)
	}
	return nil
}

// manifestShape is what shoal reads of a pushed manifest or index: the fields of image-spec's
// Manifest and Index at once, so that whatever a document lists is checked, whichever shape
// it claims.
type manifestShape struct {
	SchemaVersion int                  `json:"schemaVersion"`
	MediaType     string               `json:"mediaType"`
	ArtifactType  string               `json:"artifactType"`
	Annotations   map[string]string    `json:"annotations"`
	Config        *ocispec.Descriptor  `json:"config"`
	Layers        []ocispec.Descriptor `json:"layers"`
	Manifests     []ocispec.Descriptor `json:"manifests"`
	Subject       *ocispec.Descriptor  `json:"subject"`
}

// putManifest verifies a manifest (its digest when pushed by digest, its JSON, that every blob
// and child manifest it references is held here), then stores, pins and tags it.
func (h *Handler) putManifest(w http.ResponseWriter, r *http.Request, q req) error {
	ctx := r.Context()
	if r.ContentLength > oci.MaxManifestSize {
		return errorf(http.StatusRequestEntityTooLarge, oci.CodeSizeInvalid, nil, "manifest is larger than %d bytes", oci.MaxManifestSize)
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, oci.MaxManifestSize+1))
	if err != nil {
		return errorf(http.StatusBadRequest, oci.CodeManifestInvalid, err, "reading the manifest failed")
	}
	if len(data) > oci.MaxManifestSize {
		return errorf(http.StatusRequestEntityTooLarge, oci.CodeSizeInvalid, nil, "manifest is larger than %d bytes", oci.MaxManifestSize)
	}
	d := digest.SHA256.FromBytes(data)
	if oci.IsDigestRef(q.ref) {
		want := digest.Digest(q.ref)
		if got := want.Algorithm().FromBytes(data); got != want {
			return errorf(http.StatusBadRequest, oci.CodeDigestInvalid, nil, "manifest hashes to %s, not %s; nothing was stored", got, want)
		}
		d = want
	}
	var m manifestShape
	if err := json.Unmarshal(data, &m); err != nil {
		return errorf(http.StatusBadRequest, oci.CodeManifestInvalid, err, "manifest is not valid JSON")
	}
	mt := r.Header.Get("Content-Type")
	if i := strings.IndexByte(mt, ';'); i >= 0 {
		mt = strings.TrimSpace(mt[:i])
	}
	if mt == "" {
		mt = oci.SniffMediaType(data)
	}
	if m.MediaType != "" && m.MediaType != mt {
		return errorf(http.StatusBadRequest, oci.CodeManifestInvalid, nil, "Content-Type %s differs from the manifest's mediaType %s", mt, m.MediaType)
	}
	var refs []digest.Digest
	var missing []string
	check := func(ds ocispec.Descriptor) error {
		if err := ds.Digest.Validate(); err != nil {
			return errorf(http.StatusBadRequest, oci.CodeManifestInvalid, err, "manifest references an invalid digest %q", ds.Digest)
		}
		if len(ds.URLs) > 0 { // a non-distributable layer lives at its URLs, not here
			return nil
		}
		refs = append(refs, ds.Digest)
		info, err := h.st.Stat(ctx, ds.Digest)
		if err != nil {
			missing = append(missing, ds.Digest.String())
		} else if ds.Size > 0 && info.Size != ds.Size {
			return errorf(http.StatusBadRequest, oci.CodeManifestInvalid, nil, "manifest says %s has %d bytes; it has %d", ds.Digest, ds.Size, info.Size)
		}
		return nil
	}
	if m.Config != nil {
		if err := check(*m.Config); err != nil {
			return err
		}
	}
	for _, l := range slices.Concat(m.Layers, m.Manifests) {
		if err := check(l); err != nil {
			return err
		}
	}
	if q.host != "" {
		return h.forwardManifest(w, r, q, forwarded{data: data, digest: d, mediaType: mt, refs: refs, missing: missing, index: m.Manifests != nil})
	}
	if len(missing) > 0 && h.cluster != nil {
		missing = h.fetchMissing(ctx, q.repo, missing, m.Manifests != nil)
	}
	if len(missing) > 0 {
		return errorf(http.StatusBadRequest, oci.CodeManifestBlobUnknown, nil,
			"manifest references content not pushed to this node: %s; nothing was stored", strings.Join(missing, ", "))
	}
	wctx := context.WithoutCancel(ctx)
	if err := h.st.PutSmall(wctx, d, mt, data); err != nil {
		return storeErr(err, "manifest")
	}
	if len(refs) > 0 {
		if err := h.st.SetRefs(wctx, d, refs); err != nil {
			return storeErr(err, "manifest references")
		}
	}
	if err := h.st.Pin(wctx, d); err != nil {
		return storeErr(err, "manifest pin")
	}
	// Referenced blobs are now protected through the manifest's pin: their own pins go, so
	// that deleting the manifest lets them be evicted.
	h.mu.Lock()
	for _, ref := range refs {
		if _, ok := h.unreferenced[ref]; ok {
			delete(h.unreferenced, ref)
			_ = h.st.Unpin(wctx, ref)
		}
	}
	h.mu.Unlock()
	h.onCommit(d) // peers can fetch it before the tag names it anywhere
	// Pushed again after a DELETE by digest: a live record newer than the tombstone.
	h.revive(ctx, h.digestName(q.repo, d), store.Tag{Digest: d, MediaType: mt, Size: int64(len(data))}, true)
	if !oci.IsDigestRef(q.ref) {
		name := q.tagName(h.cfg.Namespace, q.ref)
		t := store.Tag{Digest: d, MediaType: mt, Size: int64(len(data)), Checked: time.Now()}
		if err := h.st.PutTag(wctx, name, t); err != nil {
			return storeErr(err, "tag")
		}
		h.publish(ctx, name, t, false)
		w.Header().Set(hdrCopies, strconv.Itoa(h.replicate(ctx, name, d)))
	}
	if m.Subject != nil && m.Subject.Digest.Validate() == nil {
		// The referrers API's index: a tag-like record per (subject, referrer) that the store
		// drops with the referrer.
		t := store.Tag{Digest: d, MediaType: mt, Size: int64(len(data)), Checked: time.Now()}
		if err := h.st.PutTag(wctx, h.referrerKey(q.repo, m.Subject.Digest)+d.String(), t); err != nil {
			return storeErr(err, "referrer")
		}
	}
	hd := w.Header()
	hd.Set("Location", location(q.prefix, "manifests", d.String()))
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("Content-Length", "0")
	if m.Subject != nil {
		hd.Set("OCI-Subject", m.Subject.Digest.String())
	}
	w.WriteHeader(http.StatusCreated)
	return nil
}

// fetchMissing brings content a pushed manifest references from the peers that hold it: a
// client that asked this node whether it has a blob (HEAD) was answered from the swarm and
// uploads nothing, so the blob may still be on its way here. It returns what is still missing.
func (h *Handler) fetchMissing(ctx context.Context, repo string, missing []string, index bool) []string {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	var still []string
	for _, s := range missing {
		d := digest.Digest(s)
		var err error
		if index {
			err = h.manifestFromSwarm(fctx, d)
		} else {
			err = h.cluster.FetchBlob(fctx, repo, d)
		}
		if err != nil {
			h.log.Info("content a pushed manifest references is not on this node nor to be had from peers", "digest", d, "err", err)
			still = append(still, s)
		}
	}
	return still
}

// deleteManifest deletes a manifest by digest (with every tag naming it) or just a tag.
func (h *Handler) deleteManifest(w http.ResponseWriter, r *http.Request, q req) error {
	if !h.cfg.AllowDelete {
		return errorf(http.StatusMethodNotAllowed, oci.CodeUnsupported, nil, "deletes are off (push.allow_delete)")
	}
	ctx := r.Context()
	if !oci.IsDigestRef(q.ref) {
		name := q.tagName(h.cfg.Namespace, q.ref)
		if _, _, err := h.resolveTag(ctx, name); err != nil {
			return errorf(http.StatusNotFound, oci.CodeManifestUnknown, nil, "tag %s is not in %s/%s", q.ref, h.cfg.Namespace, q.repo)
		}
		if err := h.st.DeleteTag(ctx, name); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		h.publish(ctx, name, store.Tag{}, true) // a tombstone: deleted on every node
		w.WriteHeader(http.StatusAccepted)
		return nil
	}
	return h.deleteByDigest(w, r, q)
}

// deleteByDigest deletes a manifest from the namespace on every node: a tombstone record for
// it (reads by digest answer 404 everywhere, until it is pushed again), tombstones for the
// repository's tags that name it (found on any node), the bytes on this node, and the nodes
// that hold it are told (they unpin it: cache now, evictable).
func (h *Handler) deleteByDigest(w http.ResponseWriter, r *http.Request, q req) error {
	ctx := r.Context()
	d := digest.Digest(q.ref)
	unknown := errorf(http.StatusNotFound, oci.CodeManifestUnknown, nil, "manifest %s is not in %s/%s", d, h.cfg.Namespace, q.repo)
	if h.manifestDeleted(ctx, q.repo, d, true) {
		return unknown
	}
	if _, err := h.st.Stat(ctx, d); err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if h.cluster == nil {
			return unknown
		}
		fctx, cancel := context.WithTimeout(ctx, lookupTimeout)
		_, err := h.cluster.ManifestFromPeers(fctx, d)
		cancel()
		if err != nil {
			return unknown
		}
	}
	wctx := context.WithoutCancel(ctx)
	name := h.digestName(q.repo, d)
	h.mu.Lock()
	seq := h.seqs[name]
	h.mu.Unlock()
	h.tombstone(wctx, name, seq)
	h.publish(wctx, name, store.Tag{Digest: d}, true)
	prefix := h.cfg.Namespace + "/" + q.repo + ":"
	names := h.st.TagNames(prefix)
	if h.cluster != nil {
		names = h.cluster.ListTags(ctx, prefix)
	}
	for _, n := range names {
		if td, _, err := h.resolveTag(wctx, n); err == nil && td == d {
			_ = h.st.DeleteTag(wctx, n)
			h.publish(wctx, n, store.Tag{}, true)
		}
	}
	// The bytes go unless another repository of the namespace still names them here.
	if !h.dropManifest(wctx, h.cfg.Namespace+"/"+q.repo, d) {
		if err := h.st.Delete(wctx, d); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	if h.cluster != nil {
		h.cluster.NudgeTag(wctx, name)
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// listTags answers tags/list with the n/last pagination of the spec: the tags of the
// repository pushed on any node of the swarm (this node's and its peers'), never an upstream's,
// without the ones deleted since (each listed tag resolves).
func (h *Handler) listTags(w http.ResponseWriter, r *http.Request, q req) error {
	ctx := r.Context()
	prefix := h.cfg.Namespace + "/" + q.repo + ":"
	var names []string
	if h.cluster != nil {
		names = h.cluster.ListTags(ctx, prefix)
	} else {
		names = h.st.TagNames(prefix)
	}
	tags := make([]string, 0, len(names))
	for _, n := range names {
		tags = append(tags, strings.TrimPrefix(n, prefix))
	}
	slices.Sort(tags)
	tags = slices.Compact(tags)
	qs := r.URL.Query()
	if last := qs.Get("last"); last != "" {
		i, _ := slices.BinarySearch(tags, last)
		for i < len(tags) && tags[i] <= last {
			i++
		}
		tags = tags[i:]
	}
	limit := -1
	if ns := qs.Get("n"); ns != "" {
		n, err := strconv.Atoi(ns)
		if err != nil || n < 0 {
			return errorf(http.StatusBadRequest, oci.CodePaginationNumberInvalid, err, "n must be a non-negative number")
		}
		limit = n
	}
	// Keep the tags that still resolve (a peer may hold one deleted since), one page and one
	// more (to know whether a next page exists), resolving up to 8 at once.
	var page []string
	for len(tags) > 0 && (limit < 0 || len(page) <= limit) {
		chunk := tags[:min(len(tags), max(8, limit+1-len(page)))]
		tags = tags[len(chunk):]
		ok := make([]bool, len(chunk))
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		for i, tag := range chunk {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				_, _, err := h.resolveTag(ctx, prefix+tag)
				ok[i] = err == nil
			})
		}
		wg.Wait()
		for i, tag := range chunk {
			if ok[i] {
				page = append(page, tag)
			}
		}
	}
	if len(page) == 0 && qs.Get("last") == "" && limit != 0 {
		return errorf(http.StatusNotFound, oci.CodeNameUnknown, nil, "%s/%s has no tags", h.cfg.Namespace, q.repo)
	}
	if limit >= 0 && len(page) > limit {
		page = page[:limit]
		if limit > 0 {
			w.Header().Set("Link", `<`+q.prefix+`/tags/list?n=`+strconv.Itoa(limit)+`&last=`+url.QueryEscape(page[limit-1])+`>; rel="next"`)
		}
	}
	if page == nil {
		page = []string{}
	}
	body, _ := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{strings.TrimPrefix(q.prefix, "/v2/"), page})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
	return nil
}

// referrerKey is the prefix of the records naming the referrers of subject in repo. "@" cannot
// appear in a repository or tag, so these never mix with tags.
func (h *Handler) referrerKey(repo string, subject digest.Digest) string {
	return h.cfg.Namespace + "/" + repo + "@referrers/" + subject.String() + "/"
}

// referrers answers the referrers API: an image index of the manifests whose subject is the
// digest, filtered by ?artifactType=.
func (h *Handler) referrers(w http.ResponseWriter, r *http.Request, q req) error {
	ctx := r.Context()
	filter := r.URL.Query().Get("artifactType")
	list := []ocispec.Descriptor{}
	prefix := h.referrerKey(q.repo, digest.Digest(q.ref))
	for _, n := range h.st.TagNames(prefix) {
		t, err := h.st.GetTag(ctx, n)
		if err != nil {
			continue
		}
		rc, _, err := h.st.Reader(ctx, t.Digest)
		if err != nil {
			continue // deleted since
		}
		data, err := io.ReadAll(io.LimitReader(rc, oci.MaxManifestSize+1))
		rc.Close()
		var m manifestShape
		if err != nil || json.Unmarshal(data, &m) != nil {
			continue
		}
		at := m.ArtifactType
		if at == "" && m.Config != nil {
			at = m.Config.MediaType
		}
		if filter != "" && at != filter {
			continue
		}
		list = append(list, ocispec.Descriptor{MediaType: t.MediaType, Digest: t.Digest, Size: t.Size, ArtifactType: at, Annotations: m.Annotations})
	}
	body, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: list})
	hd := w.Header()
	hd.Set("Content-Type", ocispec.MediaTypeImageIndex)
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	if filter != "" {
		hd.Set("OCI-Filters-Applied", "artifactType")
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
	return nil
}
