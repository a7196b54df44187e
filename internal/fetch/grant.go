package fetch

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/p2p"
)

// The designated node as a rendezvous, not a detour. A lone cold pull used to pay a detour:
// the asker X asked the designated node Y, Y fetched from the upstream and streamed to X over
// libp2p, and X's clients waited for the whole blob to verify before they got a peer byte.
// Now, when Y has no copy of the blob, no download of it and granted nobody its fetch, Y
// grants X the fetch (p2p.ErrGranted): X downloads from the upstream at direct speed and
// advertises it (as every download, from its start). A later asker Z of Y is answered as
// before, from Y's download, but that download follows X's (Y is one more follower of X, a
// peer source: it verifies, bans and retracts as with any peer) rather than a second upstream
// download. Y following X, rather than sending Z to X, keeps what X uploads to one stream per
// node that asks it plus what max_uploads_per_blob's redirects allow, works for an old asker
// (it never learns of the grant), needs no address of X on Z, and when X dies Y resumes from
// the upstream itself, as a designated node does today, without Z's stream breaking.
//
// A grant lapses when Y can no longer follow X: X is no longer connected (the next asker is
// granted), or X does not serve the blob (its download failed) or its stream stalls (the
// p2p stall bound; stuckAfter when a new asker comes): Y then fetches from the upstream.

// grants remembers, on a designated node, which asker it granted the fetch of a digest.
type grants struct {
	mu sync.Mutex
	m  map[digest.Digest]grant
}

type grant struct {
	peer string
	at   time.Time
}

// grantTTL bounds how long a grant is remembered; grantsMax bounds the table (emptied when
// full). A grant matters until the holder's provider record is found by everyone, which is
// at once: the bounds only keep the table small.
const (
	grantTTL  = 10 * time.Minute
	grantsMax = 4096
)

// holder returns the peer granted d's fetch, if that grant stands (the peer is still
// connected); a grant that lapsed is forgotten.
func (g *grants) holder(d digest.Digest, connected func(string) bool) (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, ok := g.m[d]
	if !ok {
		return "", false
	}
	if time.Since(c.at) > grantTTL || !connected(c.peer) {
		delete(g.m, d)
		return "", false
	}
	return c.peer, true
}

// drop forgets the grant of d to peer (not a newer one).
func (g *grants) drop(d digest.Digest, peer string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.m[d]; ok && c.peer == peer {
		delete(g.m, d)
	}
}

// Grant is p2p.Granter: asker, which asked this node (the designated one) to fetch d for the
// swarm, fetches it itself when this node has no copy of d, no download of d in flight and no
// standing grant of d to another peer. The check and the grant are one step under the table's
// lock; the own clients of this node look at the table only after their download is in the
// spool (openDesignated), so a grant and a download of this node never both start.
func (c *peerContent) Grant(ctx context.Context, asker string, d digest.Digest, registry, repo string) bool {
	registry = oci.CanonicalRegistry(registry)
	if !oci.ValidHost(registry) || oci.ValidateRepo(repo) != nil || c.src.node == nil {
		return false // FetchForSwarm says why
	}
	if _, err := c.src.up.Endpoint(registry); err != nil {
		return false
	}
	g := &c.src.grants
	g.mu.Lock()
	defer g.mu.Unlock()
	if cur, ok := g.m[d]; ok && time.Since(cur.at) <= grantTTL && c.src.node.Connected(cur.peer) {
		// The holder asking again (its first answer came too late for it) is still granted,
		// even if this node's own download already follows it: refusing would make each wait
		// on the other until the stall bound.
		return cur.peer == asker
	}
	if c.spool.has(d) {
		return false
	}
	if _, err := c.store.Stat(ctx, d); err == nil {
		return false
	}
	if g.m == nil || len(g.m) >= grantsMax {
		g.m = map[digest.Digest]grant{}
	}
	g.m[d] = grant{peer: asker, at: time.Now()}
	c.log.Info("granted a peer the fetch of a blob this node is designated for", "digest", d, "peer", asker)
	return true
}

// grantError says that designated peer granted this node the fetch (p2p.ErrGranted): the
// resolver goes to the upstream.
type grantError struct{ peer string }

func (e *grantError) Error() string { return "granted by designated peer " + e.peer }
func (e *grantError) Unwrap() error { return p2p.ErrGranted }

// reason is the history's reason for the upstream download that follows.
func (e *grantError) reason() string {
	return "no peer had it; granted by designated peer " + e.peer + " (it sends the next askers to this download)"
}

// asGrant turns a FetchVia error that is a grant by peer id into a grantError.
func asGrant(err error, id string) error {
	if err != nil && errors.Is(err, p2p.ErrGranted) {
		return &grantError{peer: id}
	}
	return err
}

// followGrant opens d from holder, the peer this node granted d's fetch, for this node's own
// download (a client of this node, or a peer that asked this node to fetch it for the swarm):
// the first call follows holder's download; if holder does not serve it, and on any later
// call (its stream broke, stalled or lied), the grant lapses and this node, the designated
// one, fetches from the upstream.
func (s *sources) followGrant(ref Ref, d digest.Digest, holder string) Opener {
	first := true
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, Source, error) {
		if first {
			first = false
			rc, size, err := s.node.Fetch(ctx, p2p.Peer{ID: holder}, d, offset)
			if err == nil {
				from := servedBy(rc, holder)
				s.hist.add(decision{Registry: ref.Registry, Repo: ref.Repo, Digest: d, Kind: "blob", Source: Peer,
					Reason: "this node is its designated fetcher and granted the fetch to peer " + holder + "; following its download (from " + from + ")"})
				return rc, size, Source{Kind: Peer, Peer: from}, nil
			}
			s.grants.drop(d, holder)
			s.log.Info("the peer granted a fetch does not serve it; fetching from the upstream", "digest", d, "peer", holder, "err", err)
			if ctx.Err() != nil {
				return nil, 0, Source{}, ctx.Err()
			}
			return s.upstreamOpener(ref, d, "this node is its designated fetcher; peer "+holder+", granted the fetch, did not serve it: "+err.Error())(ctx, offset)
		}
		s.grants.drop(d, holder)
		return s.upstreamOpener(ref, d, "this node is its designated fetcher; the download of peer "+holder+", granted the fetch, broke off")(ctx, offset)
	}
}
