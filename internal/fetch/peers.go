package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/internal/ocierr"
	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/store"
)

// PeerNode is what fetching needs from the P2P layer (p2p.Node): the seam tests may fake.
type PeerNode interface {
	Provide(ctx context.Context, d digest.Digest) error
	Withdraw(d digest.Digest)
	FindProviders(ctx context.Context, d digest.Digest, max int) ([]p2p.Peer, error)
	Fetch(ctx context.Context, p p2p.Peer, d digest.Digest, offset int64) (io.ReadCloser, int64, error)
	FetchVia(ctx context.Context, p p2p.Peer, d digest.Digest, offset int64, registry, repo string) (io.ReadCloser, int64, error)
	FetchViaWithin(ctx context.Context, answer time.Duration, p p2p.Peer, d digest.Digest, offset int64, registry, repo string) (io.ReadCloser, int64, error)
	Designate(ctx context.Context, d digest.Digest) (p2p.Designation, error)
	DesignatedAmongConnected(ctx context.Context, d digest.Digest, except ...string) (p2p.Peer, bool, error)
	Ban(peerID, reason string)
	Connected(peerID string) bool
	SpeaksGrant(peerID string) bool
}

var _ PeerNode = (*p2p.Node)(nil)

// maxPeersPerLookup bounds how many providers one miss tries before the upstream.
const maxPeersPerLookup = 4

// peerContent is what this node serves to its peers: committed content and downloads in
// flight, by digest only, never content that came from a repository needing credentials
// (unless sharing private content is configured), never by fetching anything for the asker.
type peerContent struct {
	store        *store.Store
	spool        *spool
	private      *privateSet
	sharePrivate bool
	src          *sources // for FetchForSwarm: the upstream only
	log          *slog.Logger
}

var (
	_ p2p.Content      = (*peerContent)(nil)
	_ p2p.SwarmFetcher = (*peerContent)(nil)
	_ p2p.Granter      = (*peerContent)(nil)
)

// FetchForSwarm downloads d from the upstream for a peer that designated this node, once for
// the whole swarm (coalesced with every local and remote request), and streams it as it
// arrives. A request from a peer is never forwarded: when this node granted d's fetch to a
// peer (Grant), its own download follows that peer's, in local mode (answered from that
// peer's own content only), and falls back on the upstream (grant.go).
func (c *peerContent) FetchForSwarm(ctx context.Context, asker string, d digest.Digest, offset int64, registry, repo string) (io.ReadCloser, int64, error) {
	registry = oci.CanonicalRegistry(registry)
	if !oci.ValidHost(registry) || oci.ValidateRepo(repo) != nil {
		return nil, 0, fmt.Errorf("%w: bad repository %s/%s", p2p.ErrNotFound, registry, repo)
	}
	if _, err := c.src.up.Endpoint(registry); err != nil {
		return nil, 0, fmt.Errorf("%w: %v", p2p.ErrNotFound, err)
	}
	ref := Ref{Registry: registry, Repo: repo}
	open := c.src.upstreamOpener(ref, d, "fetched for the swarm")
	if holder, ok := c.src.grants.holder(d, c.src.node.Connected); ok && holder != asker {
		open = c.src.followGrant(ref, d, holder)
	}
	f, started, err := c.spool.join(ctx, ref, d, open)
	if err != nil {
		return nil, 0, err
	}
	if f == nil { // committed meanwhile
		return c.OpenForPeer(ctx, d, offset)
	}
	switch {
	case started:
		c.log.Info("fetching for the swarm", "digest", d, "registry", registry, "repo", repo)
	case f.leavePeerFor(asker, offset > 0 && c.src.fetcherGone(ctx, d)):
		// This node follows a peer for d, and the swarm now designates it (the fetcher it
		// followed died), or the asker may be where our bytes come from: following on would
		// wait on ourselves or on the dead. Go to the source. (An asker that merely
		// disagrees on the designated node follows our download.)
		c.log.Info("designated for a blob this node followed from a peer: resuming it from the upstream", "digest", d, "asker", asker)
	}
	size, err := f.WaitStarted(ctx)
	switch {
	case err == nil && (size < 0 || !c.shareable(ctx, d)):
		err = fmt.Errorf("%w: %s may not be shared", p2p.ErrNotFound, d)
	case ocierr.IsUpstreamNotFound(err):
		// The asker then tries the upstream itself (it may hold other credentials) and gives
		// its client the 404; the serving node has nothing to warn about.
		err = fmt.Errorf("%w: %w", p2p.ErrNotFound, err)
	}
	if err != nil {
		f.Release()
		return nil, 0, err
	}
	return &releasingReader{Reader: peerReader(context.WithoutCancel(ctx), f, offset, size), f: f}, size, nil
}

func (c *peerContent) shareable(ctx context.Context, d digest.Digest) bool {
	return c.sharePrivate || !c.private.has(ctx, d)
}

func (c *peerContent) OpenForPeer(ctx context.Context, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	if !c.shareable(ctx, d) {
		return nil, 0, fmt.Errorf("%w: %s", p2p.ErrNotFound, d)
	}
	rc, info, err := c.store.Reader(ctx, d)
	if err == nil {
		if offset > info.Size {
			rc.Close()
			return nil, 0, fmt.Errorf("offset %d past size %d", offset, info.Size)
		}
		if _, err := rc.Seek(offset, io.SeekStart); err != nil {
			rc.Close()
			return nil, 0, err
		}
		return rc, info.Size, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, 0, err
	}
	if f := c.spool.lookup(d); f != nil {
		size, err := f.WaitStarted(ctx)
		if err != nil || size < 0 {
			f.Release()
			return nil, 0, fmt.Errorf("%w: %s", p2p.ErrNotFound, d)
		}
		// Peers follow the download ungated: they verify the digest themselves.
		return &releasingReader{Reader: peerReader(context.WithoutCancel(ctx), f, offset, size), f: f}, size, nil
	}
	return nil, 0, fmt.Errorf("%w: %s", p2p.ErrNotFound, d)
}

func (c *peerContent) ShareList(ctx context.Context) ([]digest.Digest, error) {
	var out []digest.Digest
	err := c.store.Walk(ctx, func(i store.Info) error {
		if c.shareable(ctx, i.Digest) {
			out = append(out, i.Digest)
		}
		return nil
	})
	return out, err
}

// releasingReader drops its fill reference on Close.
type releasingReader struct {
	io.Reader
	f    *Fill
	once sync.Once
}

func (r *releasingReader) Close() error {
	r.once.Do(r.f.Release)
	return nil
}

// privateSet remembers digests that came from repositories needing credentials. It lives in
// the store as tags under a reserved name, so it survives restarts and goes with the content.
type privateSet struct {
	store *store.Store
	mu    sync.RWMutex
	mem   map[digest.Digest]bool
}

func newPrivateSet(st *store.Store) *privateSet {
	return &privateSet{store: st, mem: map[digest.Digest]bool{}}
}

func (p *privateSet) add(ctx context.Context, d digest.Digest) {
	p.mu.Lock()
	p.mem[d] = true
	p.mu.Unlock()
	_ = p.store.PutTag(ctx, privateTag(d), store.Tag{Digest: d, Checked: time.Now()})
}

func (p *privateSet) has(ctx context.Context, d digest.Digest) bool {
	p.mu.RLock()
	ok := p.mem[d]
	p.mu.RUnlock()
	if ok {
		return true
	}
	_, err := p.store.GetTag(ctx, privateTag(d))
	return err == nil
}

// privateTag is a tag name no client can ask for: "_" is not a valid registry host.
func privateTag(d digest.Digest) string {
	return "_private/" + d.Algorithm().String() + ":" + d.Encoded()
}

// fromPeers opens d at offset from the first provider that answers.
func (s *sources) fromPeers(ctx context.Context, d digest.Digest, offset int64, tried map[string]bool, maxTries int) (io.ReadCloser, int64, string, error) {
	provs, err := s.node.FindProviders(ctx, d, maxPeersPerLookup)
	if err != nil {
		return nil, 0, "", err
	}
	// Any provider will do (bytes are verified): a random one spreads the upload over the
	// nodes that already follow a download, instead of sending everyone to the first.
	rand.Shuffle(len(provs), func(i, j int) { provs[i], provs[j] = provs[j], provs[i] })
	var errs []error
	for _, p := range provs {
		if tried[p.ID] {
			continue
		}
		if maxTries--; maxTries < 0 {
			break
		}
		tried[p.ID] = true
		rc, size, err := s.node.Fetch(ctx, p, d, offset)
		if err == nil {
			return rc, size, servedBy(rc, p.ID), nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, 0, "", p2p.ErrNotFound
	}
	return nil, 0, "", errors.Join(errs...)
}

// servedBy names the peer that sends rc's bytes: asked, unless asked redirected the fetch to
// a peer that follows its download (then that peer is the one to ban for bad bytes).
func servedBy(rc io.Reader, asked string) string {
	if r, ok := rc.(interface{ Peer() string }); ok && r.Peer() != "" {
		return r.Peer()
	}
	return asked
}

// manifestFromPeers fetches a manifest by digest from providers, verified; ok=false when no
// peer had good bytes.
func (s *sources) manifestFromPeers(ctx context.Context, d digest.Digest) ([]byte, bool) {
	if s.node == nil {
		return nil, false
	}
	provs, err := s.node.FindProviders(ctx, d, maxPeersPerLookup)
	if err != nil {
		return nil, false
	}
	for _, p := range provs {
		rc, size, err := s.node.Fetch(ctx, p, d, 0)
		if err != nil {
			continue
		}
		if size > oci.MaxManifestSize {
			rc.Close()
			s.node.Ban(p.ID, "offered an oversized manifest")
			continue
		}
		data, err := io.ReadAll(io.LimitReader(rc, oci.MaxManifestSize+1))
		rc.Close()
		if err != nil {
			continue
		}
		if d.Algorithm().FromBytes(data) != d {
			s.node.Ban(p.ID, "sent a manifest that does not match its digest")
			s.log.Warn("peer sent a manifest that does not match its digest; banned", "peer", p.ID, "digest", d)
			continue
		}
		return data, true
	}
	return nil, false
}

// advertise tells the swarm this node has d, unless d is private. It does not wait: a
// provide is bounded by the node's own timeout and never delays a client.
func (s *sources) advertise(ctx context.Context, d digest.Digest) {
	if s.node == nil || (!s.sharePrivate && s.private.has(ctx, d)) {
		return
	}
	go func() {
		if err := s.node.Provide(context.WithoutCancel(ctx), d); err != nil {
			s.log.Debug("provide failed", "digest", d, "err", err)
		}
	}()
}

// withdraw stops advertising d (a download that failed).
func (s *sources) withdraw(d digest.Digest) {
	if s.node != nil {
		s.node.Withdraw(d)
	}
}

// banLiars bans every peer that contributed to a download whose bytes did not verify: we
// cannot tell which one lied, and the upstream is always there to fall back on.
// It reports whether any peer was involved.
func (s *sources) banLiars(f *Fill) bool {
	if s.node == nil {
		return false
	}
	banned := false
	for _, src := range f.Sources() {
		if id := src.Peer; src.FromPeer() && id != "" {
			s.node.Ban(id, "sent bytes that do not match the digest")
			s.log.Warn("peer sent bytes that do not match the digest; banned", "peer", id, "digest", f.d)
			banned = true
		}
	}
	return banned
}
