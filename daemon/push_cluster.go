package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/push"
	"github.com/shoal-mirror/shoal/store"
)

// pushCluster adapts the P2P node and the mirror's peer machinery to push.Cluster: tags as
// signed DHT records, content from peers only. Nothing of the local namespace is ever asked of
// an upstream (a lookup of "shoal.local" would leave the machine).
type pushCluster struct {
	node *p2p.Node
	m    *mirror
	ns   string
}

var _ push.Cluster = (*pushCluster)(nil)

func (c *pushCluster) PublishTag(ctx context.Context, name string, t store.Tag, deleted bool, seq int64) (int64, error) {
	r := p2p.TagRecord{Name: name, Digest: t.Digest, MediaType: t.MediaType, Size: t.Size, Deleted: deleted}
	if seq >= time.Now().UnixNano() {
		r.Seq = seq + 1 // above what this node already saw, whatever its clock says
	}
	got, err := c.node.PublishTag(ctx, r)
	if err != nil && errors.Is(err, context.DeadlineExceeded) {
		// Stored here and on the peers that answered in time: partial success.
		return got.Seq, nil
	}
	return got.Seq, err
}

func (c *pushCluster) LookupTag(ctx context.Context, name string) (store.Tag, bool, int64, error) {
	r, err := c.node.LookupTag(ctx, name)
	if err != nil {
		if errors.Is(err, p2p.ErrNotFound) {
			return store.Tag{}, false, 0, fmt.Errorf("%w: %v", store.ErrNotFound, err)
		}
		return store.Tag{}, false, 0, err
	}
	return store.Tag{Digest: r.Digest, MediaType: r.MediaType, Size: r.Size}, r.Deleted, r.Seq, nil
}

func (c *pushCluster) ManifestFromPeers(ctx context.Context, d digest.Digest) ([]byte, error) {
	data, ok := c.m.src.manifestFromPeers(ctx, d)
	if !ok {
		return nil, fmt.Errorf("%w: no peer holds manifest %s", store.ErrNotFound, d)
	}
	return data, nil
}

func (c *pushCluster) ServeBlobFromPeers(w http.ResponseWriter, r *http.Request, repo string, d digest.Digest) error {
	err := c.m.blob(w, r, route{kind: "blob", registry: c.ns, repo: repo, ref: d.String()})
	if errors.Is(err, p2p.ErrNotFound) || errors.Is(err, store.ErrNotFound) {
		return &ociError{Status: http.StatusNotFound, Code: "BLOB_UNKNOWN", Message: "no node of the swarm holds this blob of the local namespace", Err: err}
	}
	return err
}

// peersOnly opens a blob of the local namespace from the peers that provide it; there is no
// upstream to fall back on.
func (s *sources) peersOnly(d digest.Digest) blobOpener {
	tried := map[string]bool{}
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, string, error) {
		if s.node == nil {
			return nil, 0, "", fmt.Errorf("%w: %s (P2P is off)", store.ErrNotFound, d)
		}
		rc, size, peerID, err := s.fromPeers(ctx, d, offset, tried, maxPeersPerLookup)
		if err != nil {
			return nil, 0, "", err
		}
		return rc, size, "peer:" + peerID, nil
	}
}
