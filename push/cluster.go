package push

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/store"
)

// Cluster is the swarm as the push side uses it; the daemon adapts its P2P node. Tags travel
// as signed records (the newest wins on every node); content travels by digest from the
// peers that hold it, verified like any peer content.
type Cluster interface {
	// PublishTag announces that name resolves to t (or, deleted, that it is gone), with a
	// sequence above seq; it returns the sequence published.
	PublishTag(ctx context.Context, name string, t store.Tag, deleted bool, seq int64) (int64, error)
	// LookupTag finds the swarm's newest record of name: store.ErrNotFound when there is
	// none.
	LookupTag(ctx context.Context, name string) (t store.Tag, deleted bool, seq int64, err error)
	// ManifestFromPeers fetches a manifest by digest from a peer, verified.
	ManifestFromPeers(ctx context.Context, d digest.Digest) ([]byte, error)
	// ServeBlobFromPeers answers a blob request from peers only (never an upstream),
	// storing the verified blob.
	ServeBlobFromPeers(w http.ResponseWriter, r *http.Request, repo string, d digest.Digest) error
	// Replicate asks peers (none in except, which already hold it) to hold the image root
	// tagged name until k nodes do; it returns the number of copies.
	Replicate(ctx context.Context, name string, root digest.Digest, k int, except map[string]bool) int
	// Holders lists the live peers that hold root, and whether this node comes first among
	// them (the one that restores missing copies).
	Holders(ctx context.Context, root digest.Digest) (holders map[string]bool, first bool)
	// ListTags returns the tag names under prefix that this node or any live peer holds,
	// sorted (deleted ones possibly among them: the records decide).
	ListTags(ctx context.Context, prefix string) []string
	// FetchBlob makes this node hold blob d from peers (verified), joining a download a
	// client's HEAD or GET of it started.
	FetchBlob(ctx context.Context, repo string, d digest.Digest) error
	// NudgeTag tells the live peers that the record of name changed (they look it up and
	// call Nudged); it returns how many handled it.
	NudgeTag(ctx context.Context, name string) int
}

// SetCluster connects the handler to the swarm (before it serves) and starts restoring
// copies of pushed images (see LocalReplicas).
func (h *Handler) SetCluster(c Cluster) {
	h.cluster = c
	if h.cfg.LocalReplicas > 1 {
		h.repairDone = make(chan struct{})
		go h.repairLoop()
	}
}

const (
	lookupTimeout  = time.Second      // a tag lookup in the swarm
	publishTimeout = 2 * time.Second  // a tag publish before the push answers
	hdrStale       = "X-Shoal-Stale"  // "true": the swarm had no record; the cached tag was served
	hdrCopies      = "X-Shoal-Copies" // nodes known to hold a pushed manifest (this one included)
)

// publish announces a tag change to the swarm; a failure leaves the local change in place
// (the node still serves it) and is logged.
func (h *Handler) publish(ctx context.Context, name string, t store.Tag, deleted bool) {
	if h.cluster == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	h.mu.Lock()
	seq := h.seqs[name]
	h.mu.Unlock()
	got, err := h.cluster.PublishTag(ctx, name, t, deleted, seq)
	if err != nil {
		h.log.Warn("could not publish a tag to the swarm; other nodes resolve it once this node publishes again", "tag", name, "err", err)
		return
	}
	h.mu.Lock()
	h.seqs[name] = max(h.seqs[name], got)
	h.mu.Unlock()
}

// resolveTag maps a tag of the namespace to a digest: the local record while younger than
// TagTTL, else the swarm's newest record (stored locally), else the local record marked stale.
func (h *Handler) resolveTag(ctx context.Context, name string) (digest.Digest, bool, error) {
	local, lerr := h.st.GetTag(ctx, name)
	if h.cluster == nil || (lerr == nil && time.Since(local.Checked) < h.cfg.TagTTL) {
		if lerr != nil {
			return "", false, lerr
		}
		return local.Digest, false, nil
	}
	type found struct {
		t       store.Tag
		deleted bool
		seq     int64
	}
	v, err, _ := h.flight.Do(name, func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
		defer cancel()
		t, deleted, seq, err := h.cluster.LookupTag(lctx, name)
		return found{t, deleted, seq}, err
	})
	if err != nil {
		if lerr == nil {
			if !errors.Is(err, store.ErrNotFound) {
				h.log.Debug("tag lookup in the swarm failed; serving the cached tag", "tag", name, "err", err)
			}
			return local.Digest, true, nil
		}
		return "", false, lerr
	}
	f := v.(found)
	h.mu.Lock()
	known := h.seqs[name]
	if f.seq >= known {
		h.seqs[name] = f.seq
	}
	h.mu.Unlock()
	wctx := context.WithoutCancel(ctx)
	switch {
	case f.seq < known && lerr == nil: // the swarm lags behind what this node pushed or saw
		return local.Digest, false, nil
	case f.deleted:
		if lerr == nil {
			_ = h.st.DeleteTag(wctx, name)
		}
		return "", false, store.ErrNotFound
	}
	f.t.Checked = time.Now()
	if err := h.st.PutTag(wctx, name, f.t); err != nil {
		h.log.Warn("could not record a tag", "tag", name, "err", err)
	}
	return f.t.Digest, false, nil
}

// manifestFromSwarm fetches a manifest this node does not hold from peers, stores and pins it
// (what was pushed into the cluster is never evicted on any node that holds it).
func (h *Handler) manifestFromSwarm(ctx context.Context, d digest.Digest) error {
	if h.cluster == nil {
		return store.ErrNotFound
	}
	_, err, _ := h.flight.Do("manifest\x00"+d.String(), func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		data, err := h.cluster.ManifestFromPeers(fctx, d)
		if err != nil {
			return nil, err
		}
		if d.Algorithm().FromBytes(data) != d {
			return nil, errors.New("peer manifest does not match its digest")
		}
		var m manifestShape
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, err
		}
		mt := oci.SniffMediaType(data)
		if err := h.st.PutSmall(fctx, d, mt, data); err != nil {
			return nil, err
		}
		var refs []digest.Digest
		if m.Config != nil {
			refs = append(refs, m.Config.Digest)
		}
		for _, ds := range append(m.Layers, m.Manifests...) {
			if len(ds.URLs) == 0 {
				refs = append(refs, ds.Digest)
			}
		}
		if len(refs) > 0 {
			_ = h.st.SetRefs(fctx, d, refs)
		}
		_ = h.st.Pin(fctx, d)
		h.onCommit(d)
		return nil, nil
	})
	return err
}

// HeldTags lists the tags of the namespace this node holds (pushed here, copied here or
// resolved here): the node keeps their swarm records alive (p2p.Node.SetHeldTags).
func (h *Handler) HeldTags() []string {
	if h.cfg.Namespace == "" {
		return nil
	}
	names := h.st.TagNames(h.cfg.Namespace + "/")
	return slices.DeleteFunc(names, func(n string) bool { return strings.Contains(n, "@") })
}

// replicate makes LocalReplicas nodes hold a pushed image before the push answers.
func (h *Handler) replicate(ctx context.Context, name string, root digest.Digest) int {
	if h.cluster == nil || h.cfg.LocalReplicas <= 1 {
		return 1
	}
	return h.cluster.Replicate(context.WithoutCancel(ctx), name, root, h.cfg.LocalReplicas, nil)
}

// repairLoop restores copies of pushed images when holders leave: for every tag of the
// namespace this node holds, the first of the live holders asks more peers until
// LocalReplicas nodes hold it again.
func (h *Handler) repairLoop() {
	defer close(h.repairDone)
	t := time.NewTicker(h.cfg.RepairInterval)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			h.repair()
		}
	}
}

func (h *Handler) repair() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	go func() {
		select {
		case <-h.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for _, name := range h.st.TagNames(h.cfg.Namespace + "/") {
		if strings.Contains(name, "@") || ctx.Err() != nil {
			continue
		}
		t, err := h.st.GetTag(ctx, name)
		if err != nil {
			continue
		}
		if _, err := h.st.Stat(ctx, t.Digest); err != nil {
			continue
		}
		holders, first := h.cluster.Holders(ctx, t.Digest)
		if holders == nil || !first || 1+len(holders) >= h.cfg.LocalReplicas {
			continue
		}
		n := h.cluster.Replicate(ctx, name, t.Digest, h.cfg.LocalReplicas, holders)
		h.log.Info("restored copies of a pushed image", "image", name, "digest", t.Digest, "copies", n, "want", h.cfg.LocalReplicas)
	}
}

// digestName is the record name of manifest d of repo: a tombstone under it says the manifest
// was deleted from the namespace (DELETE by digest), a newer live record that it was pushed
// again. "@" never appears in a tag, so these never mix with tags.
func (h *Handler) digestName(repo string, d digest.Digest) string {
	return h.cfg.Namespace + "/" + repo + "@" + d.String()
}

// blobName is the record name of blob d of repo deleted from the namespace (DELETE of a blob):
// a tombstone under it, a newer live record when it is uploaded again.
func (h *Handler) blobName(repo string, d digest.Digest) string {
	return h.cfg.Namespace + "/" + repo + "@blobs/" + d.String()
}

// manifestDeleted reports whether manifest d of repo was deleted from the namespace: as this
// node knows, or, with look, as the swarm's record says (one lookup).
func (h *Handler) manifestDeleted(ctx context.Context, repo string, d digest.Digest, look bool) bool {
	return h.deleted(ctx, h.digestName(repo, d), look)
}

// deleted reports whether record name (digestName or blobName) is a delete: as this node's
// store says, or, with look, as the swarm's record says (one lookup; a tombstone found is kept).
func (h *Handler) deleted(ctx context.Context, name string, look bool) bool {
	if h.isTombstoned(ctx, name) {
		return true
	}
	if !look || h.cluster == nil {
		return false
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
	defer cancel()
	_, deleted, seq, err := h.cluster.LookupTag(lctx, name)
	if err != nil {
		return false
	}
	h.mu.Lock()
	h.seqs[name] = max(h.seqs[name], seq)
	h.mu.Unlock()
	if deleted {
		h.tombstone(ctx, name, seq)
	}
	return deleted
}

// revive undoes a delete of record name on this node and in the swarm, when there was one:
// the content was pushed again (a manifest PUT, a blob upload or mount). It publishes a live
// record newer than the tombstone and tells the peers. With look the swarm's record is asked
// when this node knows of no delete (a manifest PUT); a blob upload asks only the store, so
// that uploads cost no lookup each.
func (h *Handler) revive(ctx context.Context, name string, t store.Tag, look bool) {
	if !h.deleted(ctx, name, look) {
		return
	}
	h.untombstone(ctx, name)
	h.publish(ctx, name, t, false)
	if h.cluster != nil {
		h.cluster.NudgeTag(context.WithoutCancel(ctx), name)
	}
}

// tombstone records, in the store, that manifest record name (digestName) was deleted: the
// node answers reads of it by digest 404 after a restart too, whether or not it still holds
// the bytes (a copy another repository names, or one kept as cache), until it is pushed again.
func (h *Handler) tombstone(ctx context.Context, name string, seq int64) {
	err := h.st.PutTombstone(context.WithoutCancel(ctx), name, store.Tombstone{Seq: seq, Seen: time.Now()})
	if err != nil {
		h.log.Warn("could not record a deleted manifest; the swarm's record still says so", "name", name, "err", err)
	}
}

// untombstone forgets that name was deleted (it was pushed again).
func (h *Handler) untombstone(ctx context.Context, name string) {
	if err := h.st.DeleteTombstone(context.WithoutCancel(ctx), name); err != nil {
		h.log.Warn("could not forget a deleted manifest", "name", name, "err", err)
	}
}

func (h *Handler) isTombstoned(ctx context.Context, name string) bool {
	_, err := h.st.GetTombstone(ctx, name)
	return err == nil
}

// Nudged is told by a peer that the record of name changed. For a manifest deleted by digest
// (its record a tombstone) this node drops the manifest from what it keeps: unpinned (cache
// now, evictable), the namespace's tags naming it forgotten, reads by digest answered 404; a
// live record (pushed again) makes it readable again. For a deleted blob it drops the blob's
// pin and removes the copy unless content it holds still references it (then it stays as
// cache: an image this node holds would break), and answers reads of it 404.
func (h *Handler) Nudged(ctx context.Context, name string) {
	repoAt, ds, ok := strings.Cut(name, "@")
	if !ok || !strings.HasPrefix(repoAt, h.cfg.Namespace+"/") || h.cluster == nil {
		return
	}
	ds, blob := strings.CutPrefix(ds, "blobs/")
	d, err := digest.Parse(ds)
	if err != nil {
		return
	}
	_, deleted, seq, err := h.cluster.LookupTag(ctx, name)
	if err != nil {
		return
	}
	h.mu.Lock()
	h.seqs[name] = max(h.seqs[name], seq)
	h.mu.Unlock()
	if !deleted { // pushed again
		h.untombstone(ctx, name)
		return
	}
	h.tombstone(ctx, name, seq)
	if !blob {
		h.dropManifest(ctx, repoAt, d)
		return
	}
	h.mu.Lock()
	delete(h.unreferenced, d)
	h.mu.Unlock()
	if h.st.Referenced(d) {
		_ = h.st.Unpin(ctx, d)
		return
	}
	_ = h.st.Delete(ctx, d)
}

// dropManifest forgets the tags of repo (the namespace's "<ns>/<repo>") on this node that name
// d, and unpins d unless a tag of another repository still names it (named).
func (h *Handler) dropManifest(ctx context.Context, repo string, d digest.Digest) (named bool) {
	for _, n := range h.HeldTags() {
		t, err := h.st.GetTag(ctx, n)
		if err != nil || t.Digest != d {
			continue
		}
		if strings.HasPrefix(n, repo+":") {
			_ = h.st.DeleteTag(ctx, n)
		} else {
			named = true
		}
	}
	if !named {
		_ = h.st.Unpin(ctx, d)
	}
	return named
}
