package push

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/opencontainers/go-digest"

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
}

// SetCluster connects the handler to the swarm (before it serves).
func (h *Handler) SetCluster(c Cluster) { h.cluster = c }

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
		mt := m.MediaType
		if mt == "" {
			mt = "application/vnd.oci.image.manifest.v1+json"
			if m.Manifests != nil {
				mt = "application/vnd.oci.image.index.v1+json"
			}
		}
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
