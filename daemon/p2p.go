package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/internal/ocierr"
	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/store"
)

// peerNode is what the mirror needs from the P2P layer.
type peerNode interface {
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
}

var _ peerNode = (*p2p.Node)(nil)

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
)

// FetchForSwarm downloads d from the upstream for a peer that designated this node, once for
// the whole swarm (coalesced with every local and remote request), and streams it as it
// arrives. It never asks another peer: a request from a peer is never forwarded.
func (c *peerContent) FetchForSwarm(ctx context.Context, asker string, d digest.Digest, offset int64, registry, repo string) (io.ReadCloser, int64, error) {
	registry = canonicalRegistry(registry)
	if !validHost(registry) || oci.ValidateRepo(repo) != nil {
		return nil, 0, fmt.Errorf("%w: bad repository %s/%s", p2p.ErrNotFound, registry, repo)
	}
	if _, err := c.src.up.Endpoint(registry); err != nil {
		return nil, 0, fmt.Errorf("%w: %v", p2p.ErrNotFound, err)
	}
	rt := route{kind: "blob", registry: registry, repo: repo}
	f, started, err := c.spool.join(ctx, rt, d, c.src.upstreamOpener(rt, d, "fetched for the swarm"))
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
	size, err := f.waitStarted(ctx)
	switch {
	case err == nil && (size < 0 || !c.shareable(ctx, d)):
		err = fmt.Errorf("%w: %s may not be shared", p2p.ErrNotFound, d)
	case ocierr.IsUpstreamNotFound(err):
		// The asker then tries the upstream itself (it may hold other credentials) and gives
		// its client the 404; the serving node has nothing to warn about.
		err = fmt.Errorf("%w: %w", p2p.ErrNotFound, err)
	}
	if err != nil {
		f.release()
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
		size, err := f.waitStarted(ctx)
		if err != nil || size < 0 {
			f.release()
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
	f    *fill
	once sync.Once
}

func (r *releasingReader) Close() error {
	r.once.Do(r.f.release)
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

// sources resolves content that is not in the store: peers that provide it first, then the
// upstream. It is the one place that decides where remote bytes come from.
type sources struct {
	node    peerNode // nil: P2P disabled
	up      upstreamClient
	private *privateSet
	hist    *history
	log     *slog.Logger
	// sharePrivate: advertise and serve content from repositories that needed credentials.
	sharePrivate bool
}

// upstreamClient is the part of upstream.Client the resolution loop uses.
type upstreamClient interface {
	GetBlob(ctx context.Context, host, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error)
	Private(host, repo string) bool
	Endpoint(host string) (*url.URL, error)
}

// blobOpener returns the opener a fill uses for one blob. Each call (the first, and each
// resume after a broken stream) tries providers not tried before, then the upstream.
func (s *sources) blobOpener(rt route, d digest.Digest) blobOpener {
	tried := map[string]bool{}
	up := s.upstreamOpener(rt, d, "")
	calls := 0
	var last string // the peer that sent the bytes so far, if one did
	return func(ctx context.Context, offset int64) (rc io.ReadCloser, size int64, source string, err error) {
		calls++
		defer func() { _, last, _ = strings.Cut(source, ":") }() // "peer:ID", "designated:ID" or "upstream"
		if s.node == nil {
			return up(ctx, offset)
		}
		if calls > maxPeerResumes+1 {
			return s.upstreamOpener(rt, d, fmt.Sprintf("resume %d: the stream broke again (last source %s)", calls-1, last))(ctx, offset)
		}
		if calls >= 2 {
			// A resume: the stream broke. If the source that died was the one every in-flight
			// copy followed (a killed designated fetcher), the other providers are stuck at the
			// same offset, and if each node went to the upstream the rest of the blob would be
			// paid once per node. So the swarm designates again among the peers still connected
			// (the dead one drops from that list on every node at once): the new designated
			// fetcher resumes from the upstream, the others ask it. Failing that, one more
			// provider, then the upstream. (A broken upstream stream resumes from the upstream.)
			if last != "" {
				r, n, src, self, rerr := s.redesignate(ctx, rt, d, offset, tried, last)
				switch {
				case rerr == nil:
					return r, n, src, nil
				case self:
					return s.upstreamOpener(rt, d, "the stream broke and this node is now the blob's designated fetcher")(ctx, offset)
				case ctx.Err() != nil:
					return nil, 0, "", ctx.Err()
				}
			}
			rc, size, peerID, err := s.fromPeers(ctx, d, offset, tried, 1)
			if err == nil {
				s.hist.add(decision{Registry: rt.registry, Repo: rt.repo, Digest: d, Kind: "blob", Source: "peer", Reason: "the stream broke; provided by peer " + peerID})
				return rc, size, "peer:" + peerID, nil
			}
			if ctx.Err() != nil {
				return nil, 0, "", ctx.Err()
			}
			return s.upstreamOpener(rt, d, "the stream from "+last+" broke and neither a designated peer nor a provider took over")(ctx, offset)
		}
		rc, size, peerID, err := s.fromPeers(ctx, d, offset, tried, maxPeersPerLookup)
		if err == nil {
			s.hist.add(decision{Registry: rt.registry, Repo: rt.repo, Digest: d, Kind: "blob", Source: "peer", Reason: "provided by peer " + peerID})
			return rc, size, "peer:" + peerID, nil
		}
		if ctx.Err() != nil {
			return nil, 0, "", ctx.Err()
		}
		// Nobody has it or is fetching it: ask the peer the swarm designates for this
		// digest, so that the upstream is paid once for everyone.
		des, derr := s.node.Designate(ctx, d)
		dp, self := des.Peer, des.Self
		if derr == nil && len(des.Passed) > 0 {
			// The walk passed over closer peers that did not answer in time. Most often they
			// are busy (the whole swarm asks at once), and the closest of them is the fetcher
			// that the nodes that heard it in time ask: ask it too, patiently, rather than
			// start a second download. One that is really gone fails fast (its connection
			// is refused or reset); a frozen one costs this asker patientAnswer once.
			for i, id := range des.Passed {
				if i == maxPassedAsked {
					break
				}
				if tried[id] {
					continue
				}
				tried[id] = true
				rc, size, err := s.node.FetchViaWithin(ctx, patientAnswer, p2p.Peer{ID: id}, d, offset, rt.registry, rt.repo)
				if err == nil {
					return s.designatedAnswer(rt, d, id, rc, size, "the designated walk passed over closer peer ")
				}
				s.log.Info("closer peer passed over by the designated walk did not answer", "digest", d, "peer", id, "err", err)
				if ctx.Err() != nil {
					return nil, 0, "", ctx.Err()
				}
			}
		}
		var why string
		switch {
		case derr != nil:
			why = "no peer had it and finding its designated fetcher failed: " + derr.Error()
			s.log.Info("finding the designated fetcher failed", "digest", d, "err", derr)
		case self:
			why = "no peer had it and this node is its designated fetcher"
		case tried[dp.ID]:
			why = "no peer had it and its designated peer " + dp.ID + " was tried already"
		default:
			rc, size, source, err := s.viaDesignated(ctx, rt, d, dp, offset, tried, "nobody had it; designated peer ")
			if err == nil {
				return rc, size, source, nil
			}
			why = "no peer had it and its designated peer " + dp.ID + " did not answer: " + err.Error()
			if errors.Is(err, p2p.ErrStalled) {
				// A designated peer that did not answer in time is most often busy, not
				// gone: the whole swarm asked it at the same instant. Ask it once more,
				// patiently; then look for a provider record (its download is advertised
				// once the upstream answers, or that of a node following it) before paying
				// the upstream once more. It may be asked again as a plain provider.
				rc, size, err2 := s.node.FetchViaWithin(ctx, patientAnswer, dp, d, offset, rt.registry, rt.repo)
				if err2 == nil {
					return s.designatedAnswer(rt, d, dp.ID, rc, size, "nobody had it; asked again, designated peer ")
				}
				s.log.Info("designated peer did not answer a second time", "digest", d, "peer", dp.ID, "err", err2)
				delete(tried, dp.ID)
				if rc, size, peerID, err := s.awaitPeers(ctx, d, offset, tried, providerWait); err == nil {
					s.hist.add(decision{Registry: rt.registry, Repo: rt.repo, Digest: d, Kind: "blob", Source: "peer",
						Reason: "designated peer " + dp.ID + " did not answer in time; provided by peer " + peerID})
					return rc, size, "peer:" + peerID, nil
				}
				tried[dp.ID] = true
			}
			if ctx.Err() != nil {
				return nil, 0, "", ctx.Err()
			}
			// Gone (its connection broke: killed, restarting) or silent: every node that asked
			// it designates the next closest alike, which fetches once for all of them.
			r, n, src, self, rerr := s.redesignate(ctx, rt, d, offset, tried, dp.ID)
			switch {
			case rerr == nil:
				return r, n, src, nil
			case self:
				why = "its designated peer " + dp.ID + " did not answer and this node is the next closest: " + err.Error()
				// A node that followed the one that went may hold the blob, or more of it.
				if rc, size, peerID, err := s.fromPeers(ctx, d, offset, tried, maxPeersPerLookup); err == nil {
					s.hist.add(decision{Registry: rt.registry, Repo: rt.repo, Digest: d, Kind: "blob", Source: "peer",
						Reason: "designated peer " + dp.ID + " did not answer; provided by peer " + peerID})
					return rc, size, "peer:" + peerID, nil
				}
			}
		}
		if ctx.Err() != nil {
			return nil, 0, "", ctx.Err()
		}
		return s.upstreamOpener(rt, d, why)(ctx, offset)
	}
}

// maxPeerResumes bounds the resumes of one download that look for a peer (a designated one, or
// a provider) before the upstream: a swarm whose designated fetcher died may take a second
// hand-over (a node that took its role was following it too).
const maxPeerResumes = 3

// providerWait bounds how long a node waits for a provider record of a blob whose designated
// fetcher did not answer before it goes to the upstream itself; providerPoll spaces the
// lookups meanwhile. A busy designated fetcher's record appears well within it (it advertises
// a download as soon as the upstream answers); a dead one costs each asker this once.
// patientAnswer bounds the wait for the first answer of a closer peer that the designated walk
// passed over (it let the walk's requests time out, so it is busy or gone); maxPassedAsked
// bounds how many such peers one miss asks.
const (
	patientAnswer  = 3 * time.Second
	maxPassedAsked = 2
)

const (
	providerWait = 1500 * time.Millisecond
	providerPoll = 100 * time.Millisecond
)

// awaitPeers is fromPeers (one provider at a time), repeated until a provider answers or wait
// has passed.
func (s *sources) awaitPeers(ctx context.Context, d digest.Digest, offset int64, tried map[string]bool, wait time.Duration) (io.ReadCloser, int64, string, error) {
	deadline := time.Now().Add(wait)
	for {
		rc, size, peerID, err := s.fromPeers(ctx, d, offset, tried, 1)
		if err == nil || ctx.Err() != nil {
			return rc, size, peerID, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, 0, "", err
		}
		t := time.NewTimer(min(providerPoll, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, 0, "", ctx.Err()
		case <-t.C:
		}
	}
}

// redesignate, on a resume, asks the peer the swarm designates among the peers still
// connected, except broken (the peer whose stream just broke) and peers that fail to answer
// (at most 3 asked). self reports that this node is now the designated one.
func (s *sources) redesignate(ctx context.Context, rt route, d digest.Digest, offset int64, tried map[string]bool, broken string) (rc io.ReadCloser, size int64, source string, self bool, err error) {
	except := []string{broken}
	for range 3 {
		dp, self, err := s.node.DesignatedAmongConnected(ctx, d, except...)
		if err != nil || self {
			return nil, 0, "", self, errors.Join(errNoDesignated, err)
		}
		except = append(except, dp.ID)
		if tried[dp.ID] {
			continue
		}
		rc, size, source, err := s.viaDesignated(ctx, rt, d, dp, offset, tried, "the stream broke; the swarm designated peer ")
		if err == nil || ctx.Err() != nil {
			return rc, size, source, false, err
		}
	}
	return nil, 0, "", false, errNoDesignated
}

// errNoDesignated: there is no designated peer left to ask.
var errNoDesignated = errors.New("no designated peer to ask")

// viaDesignated asks dp, the peer the swarm designates for d, to fetch it for the swarm.
func (s *sources) viaDesignated(ctx context.Context, rt route, d digest.Digest, dp p2p.Peer, offset int64, tried map[string]bool, why string) (io.ReadCloser, int64, string, error) {
	tried[dp.ID] = true
	rc, size, err := s.node.FetchVia(ctx, dp, d, offset, rt.registry, rt.repo)
	if err != nil {
		s.log.Info("designated peer did not answer", "digest", d, "peer", dp.ID, "err", err)
		return nil, 0, "", err
	}
	return s.designatedAnswer(rt, d, dp.ID, rc, size, why)
}

// designatedAnswer records and returns the answer of a designated peer id to a swarm fetch.
func (s *sources) designatedAnswer(rt route, d digest.Digest, id string, rc io.ReadCloser, size int64, why string) (io.ReadCloser, int64, string, error) {
	if from := servedBy(rc, id); from != id {
		s.hist.add(decision{Registry: rt.registry, Repo: rt.repo, Digest: d, Kind: "blob", Source: "peer", Reason: why + id + " was at its upload limit and sent this node to " + from + ", which follows its download"})
		return rc, size, "peer:" + from, nil
	}
	s.hist.add(decision{Registry: rt.registry, Repo: rt.repo, Digest: d, Kind: "blob", Source: "designated", Reason: why + id + " fetched it for the swarm"})
	return rc, size, "designated:" + id, nil
}

// fetcherGone reports whether the designated fetcher of d, as this node knows it, is gone
// (this node is no longer connected to it); when that cannot be told, it says gone.
func (s *sources) fetcherGone(ctx context.Context, d digest.Digest) bool {
	if s.node == nil {
		return true
	}
	des, err := s.node.Designate(ctx, d)
	if err != nil {
		return true
	}
	return !des.Self && !s.node.Connected(des.Peer.ID)
}

// upstreamOpener opens d from the upstream only, recording whether the repository needed
// credentials (its content is then kept from peers).
func (s *sources) upstreamOpener(rt route, d digest.Digest, why string) blobOpener {
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, string, error) {
		rc, size, err := s.up.GetBlob(ctx, rt.registry, rt.repo, d, offset)
		if err != nil {
			return nil, 0, "", err
		}
		if s.up.Private(rt.registry, rt.repo) {
			s.private.add(ctx, d)
		}
		reason := why
		switch {
		case reason != "":
		case s.node == nil:
			reason = "P2P disabled"
		default:
			reason = "no peer had it and this node is its designated fetcher (or the designated peer did not answer)"
		}
		s.hist.add(decision{Registry: rt.registry, Repo: rt.repo, Digest: d, Kind: "blob", Source: "upstream", Reason: reason})
		return rc, size, "upstream", nil
	}
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
func (s *sources) banLiars(f *fill) bool {
	if s.node == nil {
		return false
	}
	banned := false
	for _, src := range f.sourceList() {
		if _, id, ok := strings.Cut(src, ":"); ok {
			s.node.Ban(id, "sent bytes that do not match the digest")
			s.log.Warn("peer sent bytes that do not match the digest; banned", "peer", id, "digest", f.d)
			banned = true
		}
	}
	return banned
}
