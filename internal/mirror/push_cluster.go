package mirror

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/fetch"
	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/internal/ocierr"
	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/push"
	"github.com/shoal-mirror/shoal/store"
)

// PushCluster adapts the P2P node and the mirror's peer machinery to push.Cluster: tags as
// signed DHT records, content from peers only. Nothing of the local namespace is ever asked of
// an upstream (a lookup of "shoal.local" would leave the machine).
type PushCluster struct {
	node *p2p.Node
	m    *Mirror
	ns   string
}

var _ push.Cluster = (*PushCluster)(nil)

// PushCluster is the cluster side of the push namespace over node (push.Handler.SetCluster;
// its Hold answers the node's replication requests). The mirror must have been built with
// Options.Push.
func (m *Mirror) PushCluster(node *p2p.Node) *PushCluster {
	return &PushCluster{node: node, m: m, ns: m.push.Namespace()}
}

func (c *PushCluster) PublishTag(ctx context.Context, name string, t store.Tag, deleted bool, seq int64) (int64, error) {
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

func (c *PushCluster) LookupTag(ctx context.Context, name string) (store.Tag, bool, int64, error) {
	r, err := c.node.LookupTag(ctx, name)
	if err != nil {
		if errors.Is(err, p2p.ErrNotFound) {
			return store.Tag{}, false, 0, fmt.Errorf("%w: %v", store.ErrNotFound, err)
		}
		return store.Tag{}, false, 0, err
	}
	return store.Tag{Digest: r.Digest, MediaType: r.MediaType, Size: r.Size}, r.Deleted, r.Seq, nil
}

func (c *PushCluster) ManifestFromPeers(ctx context.Context, d digest.Digest) ([]byte, error) {
	data, ok := c.m.fetch.ManifestFromPeers(ctx, d)
	if !ok {
		return nil, fmt.Errorf("%w: no peer holds manifest %s", store.ErrNotFound, d)
	}
	return data, nil
}

func (c *PushCluster) ServeBlobFromPeers(w http.ResponseWriter, r *http.Request, repo string, d digest.Digest) error {
	err := c.m.blob(w, r, route{kind: "blob", registry: c.ns, repo: repo, ref: d.String()})
	if errors.Is(err, p2p.ErrNotFound) || errors.Is(err, store.ErrNotFound) {
		return &ocierr.Error{Status: http.StatusNotFound, Code: "BLOB_UNKNOWN", Message: "no node of the swarm holds this blob of the local namespace", Err: err}
	}
	return err
}

// FetchBlob makes this node hold blob d of the local namespace, from peers, through the same
// download a client's GET or HEAD starts, so that one under way is joined: verified before it
// is stored.
func (c *PushCluster) FetchBlob(ctx context.Context, repo string, d digest.Digest) error {
	ref := fetch.Ref{Registry: c.ns, Repo: repo}
	b, err := c.m.fetch.Blob(ctx, ref, d, c.m.fetch.PeersOnly(d, store.ErrNotFound))
	if err != nil {
		return err
	}
	if b.Stored != nil {
		return b.Stored.Close()
	}
	defer b.Fill.Release()
	_, err = c.m.fetch.WaitStored(ctx, d, nil)
	return err
}

func (c *PushCluster) ListTags(ctx context.Context, prefix string) []string {
	return c.node.ListTags(ctx, prefix)
}

func (c *PushCluster) NudgeTag(ctx context.Context, name string) int {
	return c.node.NudgeTag(ctx, name)
}

// Replicate makes k nodes (this one included) hold the image root tagged name: it asks
// connected peers, nearest to root first (by XOR of hashed IDs, so pushes spread over the
// swarm), until k-1 of them hold it. It returns the number of copies.
func (c *PushCluster) Replicate(ctx context.Context, name string, root digest.Digest, k int, except map[string]bool) int {
	copies := 1 + len(except)
	if k <= copies {
		return copies
	}
	peers := c.node.ConnectedPeers()
	key := sha256.Sum256([]byte(root))
	dist := func(id string) []byte {
		h := sha256.Sum256([]byte(id))
		for i := range h {
			h[i] ^= key[i]
		}
		return h[:]
	}
	slices.SortFunc(peers, func(a, b p2p.Peer) int { return bytes.Compare(dist(a.ID), dist(b.ID)) })
	// Up to three passes over the peers that did not take a copy: a refusal can be passing
	// (the record or a blob not yet findable on a busy node).
	for pass := range 3 {
		var failed []p2p.Peer
		for _, p := range peers {
			if copies >= k {
				return copies
			}
			if except[p.ID] {
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			err := c.node.Replicate(rctx, p, name, root)
			cancel()
			if err != nil {
				c.m.log.Warn("a peer did not take a copy of a pushed image", "peer", p.ID, "image", name, "digest", root, "pass", pass+1, "err", err)
				failed = append(failed, p)
				continue
			}
			copies++
		}
		if copies >= k || len(failed) == 0 {
			break
		}
		peers = failed
		select {
		case <-ctx.Done():
			return copies
		case <-time.After(300 * time.Millisecond):
		}
	}
	return copies
}

// Holders lists the connected peers that provide root (this node excluded).
func (c *PushCluster) Holders(ctx context.Context, root digest.Digest) (map[string]bool, bool) {
	provs, err := c.node.FindProviders(ctx, root, 20)
	if err != nil {
		return nil, false
	}
	live := map[string]bool{}
	for _, p := range c.node.ConnectedPeers() {
		live[p.ID] = true
	}
	out := map[string]bool{}
	self := c.node.ID()
	amFirst := true
	for _, p := range provs {
		if p.ID != self && live[p.ID] {
			out[p.ID] = true
			if p.ID < self {
				amFirst = false
			}
		}
	}
	return out, amFirst
}

// holdRecordWait bounds how long a node asked to hold a copy waits for the tag record that
// names it to be found in the swarm.
const holdRecordWait = 5 * time.Second

// Hold is the receiving side of Replicate: the tag's swarm record must name root; then the
// image (manifests, recursively, and blobs) is fetched from the asking peer, verified, stored,
// its root pinned and everything advertised.
func (c *PushCluster) Hold(ctx context.Context, from p2p.Peer, name string, root digest.Digest) error {
	if c.ns == "" || !strings.HasPrefix(name, c.ns+"/") {
		return c.holdWriteThrough(ctx, from, name, root)
	}
	// The pusher published the record just before it asked; on a busy swarm the record may
	// reach the nodes this lookup asks a moment later, so look again for a few seconds.
	var r p2p.TagRecord
	deadline := time.Now().Add(holdRecordWait)
	for {
		var err error
		r, err = c.node.LookupTag(ctx, name)
		if err == nil && !r.Deleted && r.Digest == root {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no tag record of %s names %s", name, root)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := c.fetchImage(ctx, from, root, 0); err != nil {
		return err
	}
	if err := c.m.store.Pin(ctx, root); err != nil {
		return err
	}
	// The tag too: a holder answers it, and restores copies of what its tags name.
	return c.m.store.PutTag(ctx, name, store.Tag{Digest: root, MediaType: r.MediaType, Size: r.Size, Checked: time.Now()})
}

func (c *PushCluster) fetchImage(ctx context.Context, from p2p.Peer, d digest.Digest, depth int) error {
	if depth > 4 {
		return errors.New("image nests too deep")
	}
	st := c.m.store
	data, err := c.readStored(ctx, d)
	if err != nil {
		data, err = c.fetchBytes(ctx, from, d, oci.MaxManifestSize)
		if err != nil {
			return err
		}
		if err := st.PutSmall(ctx, d, oci.SniffMediaType(data), data); err != nil {
			return err
		}
		c.m.fetch.Advertise(ctx, d)
	}
	var m struct {
		Config *struct{ Digest digest.Digest } `json:"config"`
		Layers []struct {
			Digest digest.Digest
			URLs   []string
		} `json:"layers"`
		Manifests []struct{ Digest digest.Digest } `json:"manifests"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("manifest %s: %w", d, err)
	}
	var refs, blobs []digest.Digest
	if m.Config != nil {
		blobs = append(blobs, m.Config.Digest)
	}
	for _, l := range m.Layers {
		if len(l.URLs) == 0 {
			blobs = append(blobs, l.Digest)
		}
	}
	refs = append(refs, blobs...)
	for _, cm := range m.Manifests {
		refs = append(refs, cm.Digest)
		if err := c.fetchImage(ctx, from, cm.Digest, depth+1); err != nil {
			return err
		}
	}
	for _, b := range blobs {
		if _, err := st.Stat(ctx, b); err == nil {
			continue
		}
		if err := c.fetchBlob(ctx, from, b); err != nil {
			return err
		}
		c.m.fetch.Advertise(ctx, b)
	}
	if len(refs) > 0 {
		return st.SetRefs(ctx, d, refs)
	}
	return nil
}

func (c *PushCluster) readStored(ctx context.Context, d digest.Digest) ([]byte, error) {
	rc, _, err := c.m.store.Reader(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(io.LimitReader(rc, oci.MaxManifestSize+1))
}

func (c *PushCluster) fetchBytes(ctx context.Context, from p2p.Peer, d digest.Digest, limit int64) ([]byte, error) {
	rc, size, err := c.node.Fetch(ctx, from, d, 0)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if size > limit {
		return nil, fmt.Errorf("manifest %s: %d bytes", d, size)
	}
	data, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, err
	}
	if d.Algorithm().FromBytes(data) != d {
		return nil, fmt.Errorf("peer %s sent a manifest that does not match %s", from.ID, d)
	}
	return data, nil
}

func (c *PushCluster) fetchBlob(ctx context.Context, from p2p.Peer, d digest.Digest) error {
	rc, size, err := c.node.Fetch(ctx, from, d, 0)
	if err != nil {
		return err
	}
	defer rc.Close()
	w, err := c.m.store.Writer(ctx, d, "application/octet-stream")
	if err != nil {
		return err
	}
	defer w.Close()
	if _, err := io.Copy(w, io.LimitReader(rc, size+1)); err != nil {
		return err
	}
	return w.Commit(ctx, size) // verified: a peer's wrong bytes never become visible
}

// holdWriteThrough is hold for an image pushed through a peer to a write-through registry
// (name "HOST/REPO:TAG" or "HOST/REPO@DIGEST"): the registry, not a tag record, is the
// authority: it must serve root under that name, and the repository must not be private
// (private stays private). The copy is cache content, as the pushing node's is: not pinned.
func (c *PushCluster) holdWriteThrough(ctx context.Context, from p2p.Peer, name string, root digest.Digest) error {
	host, rest, ok := strings.Cut(name, "/")
	if !ok || !c.m.up.WriteThrough(host) {
		return fmt.Errorf("%s is neither in the local namespace nor in a write-through registry", name)
	}
	repo, ref, byDigest := strings.Cut(rest, "@")
	if !byDigest {
		i := strings.LastIndexByte(rest, ':')
		if i < 0 {
			return fmt.Errorf("%s names no tag", name)
		}
		repo, ref = rest[:i], rest[i+1:]
	}
	if c.m.up.Private(host, repo) {
		return fmt.Errorf("%s/%s is private", host, repo)
	}
	desc, err := c.m.up.HeadManifest(ctx, host, repo, ref)
	if err != nil {
		return fmt.Errorf("the registry does not confirm %s: %w", name, err)
	}
	if desc.Digest != root {
		return fmt.Errorf("the registry names %s for %s, not %s", desc.Digest, name, root)
	}
	if err := c.fetchImage(ctx, from, root, 0); err != nil {
		return err
	}
	if byDigest {
		return nil
	}
	return c.m.store.PutTag(ctx, name, store.Tag{Digest: root, MediaType: desc.MediaType, Size: desc.Size, Checked: time.Now()})
}
