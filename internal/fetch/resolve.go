package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/upstream"
)

// The resolution order is written once, here, as a list of named attempts. A fetch runs them
// (opening the bytes); `shoal explain` asks the same attempts to predict (no download started,
// no peer asked to fetch), so the prediction cannot drift from what a pull does.

// attempt is one step of the resolution order. predict says what the step would answer
// without side effects; open (nil for Store and InFlight, which the spool answers: Fetcher.Blob)
// opens the bytes. Both return a zero Source with the reason the step was skipped.
type attempt struct {
	kind    Kind
	predict func(ctx context.Context, q *query) (Source, string)
	open    func(ctx context.Context, q *query) (io.ReadCloser, int64, Source, string, error)
}

// query is one look for a blob or manifest: what its attempts share.
type query struct {
	ref    Ref
	d      digest.Digest
	offset int64
	tried  map[string]bool // peers asked already (a resume skips them)
	// predict mode: what the provider lookup returned, for the explain entry.
	providers []string
	lookedUp  bool
}

// blobAttempts is the order a blob is looked for in.
func (f *Fetcher) blobAttempts() []attempt {
	s := f.src
	return []attempt{
		{kind: Store, predict: f.predictStore},
		{kind: InFlight, predict: f.predictInFlight},
		{kind: Peer, predict: s.predictProviders, open: s.openProviders},
		{kind: Designated, predict: s.predictDesignated, open: s.openDesignated},
		{kind: Upstream, predict: s.predictUpstream, open: s.openUpstream},
	}
}

// manifestAttempts is the order a manifest is looked for in (by digest; Fetcher.Manifest runs
// it). Manifests are small:
// no designated fetcher (every node asks the upstream for one it lacks and no peer has); a
// manifest being fetched is joined by the mirror's singleflight, not the spool. Stale is the
// tag's fallback when the upstream is down (the mirror's resolveTag).
func (f *Fetcher) manifestAttempts() []attempt {
	s := f.src
	return []attempt{
		{kind: Store, predict: f.predictStore},
		{kind: Peer, predict: s.predictProviders},
		{kind: Upstream, predict: s.predictUpstream},
	}
}

// sources opens content that is not in the store: peers that provide it first, then the
// swarm's designated fetcher, then the upstream.
type sources struct {
	node    PeerNode // nil: P2P disabled
	up      UpstreamClient
	private *privateSet
	hist    *history
	log     *slog.Logger
	// sharePrivate: advertise and serve content from repositories that needed credentials.
	sharePrivate bool
	// grants: the askers this node, as a designated fetcher, let fetch a blob themselves.
	grants grants
}

// UpstreamClient is the part of upstream.Client that fetching uses.
type UpstreamClient interface {
	GetBlob(ctx context.Context, host, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error)
	GetManifest(ctx context.Context, host, repo, ref string) ([]byte, upstream.Descriptor, error)
	Private(host, repo string) bool
	Endpoint(host string) (*url.URL, error)
}

// blobOpener returns the opener a fill uses for one blob. The first call runs the remote
// attempts in order (providers, designated fetcher, upstream); a resume after a peer's stream
// broke runs the resume attempts (resumeAttempts), and past maxPeerResumes goes to the
// upstream; a resume after the upstream's stream broke goes back to the upstream.
func (s *sources) blobOpener(ref Ref, d digest.Digest, remote []attempt) Opener {
	q := &query{ref: ref, d: d, tried: map[string]bool{}}
	resumes := -1
	var last string // the peer that sent the bytes so far, if one did
	return func(ctx context.Context, offset int64) (rc io.ReadCloser, size int64, source Source, err error) {
		resumes++
		q.offset = offset
		defer func() { last = source.Peer }()
		var steps []attempt
		var why string
		switch {
		case s.node == nil:
			why = "P2P disabled"
		case resumes == 0:
			steps = remote
		case last == "":
			// The upstream's stream broke: resume from it. The peers that provide the blob now
			// are this download's followers (it was advertised when the upstream answered), at
			// or behind its offset: asking one would wait on ourselves until a stall bound.
			why = "the upstream's stream broke; resuming from it"
		case resumes <= maxPeerResumes:
			steps = s.resumeAttempts(last)
		default:
			why = fmt.Sprintf("resume %d: the stream broke again (last source %s)", resumes, last)
		}
		for _, a := range steps {
			if a.open == nil || a.kind == Upstream {
				continue
			}
			rc, size, src, skip, err := a.open(ctx, q)
			if ge, ok := errors.AsType[*grantError](err); ok {
				skip, err = ge.reason(), errGoUpstream
			}
			switch {
			case err == nil && rc != nil:
				return rc, size, src, nil
			case err != nil && !errors.Is(err, errGoUpstream):
				return nil, 0, Source{}, err
			case ctx.Err() != nil:
				return nil, 0, Source{}, ctx.Err()
			}
			if skip != "" {
				why = skip
			}
			if errors.Is(err, errGoUpstream) {
				break
			}
		}
		return s.upstreamOpener(ref, d, why)(ctx, offset)
	}
}

// errGoUpstream ends an attempt list early: the next step is the upstream, for the reason given.
var errGoUpstream = errors.New("go to the upstream")

// resumeAttempts are what a resume tries before the upstream when last, the peer that sent
// the bytes so far, broke its stream (a broken upstream stream resumes from the upstream:
// blobOpener). If that peer was the one every in-flight copy followed (a killed designated
// fetcher), the other providers are stuck at the same offset, and if each node went to the
// upstream the rest of the blob would be paid once per node. So the swarm designates again
// among the peers still connected (the dead one drops from that list on every node at once):
// the new designated fetcher resumes from the upstream, the others ask it. Failing that, one
// more provider, then the upstream.
func (s *sources) resumeAttempts(last string) []attempt {
	return []attempt{
		{kind: Designated, open: func(ctx context.Context, q *query) (io.ReadCloser, int64, Source, string, error) {
			r, n, src, self, err := s.redesignate(ctx, q.ref, q.d, q.offset, q.tried, last)
			switch {
			case err == nil:
				return r, n, src, "", nil
			case errors.Is(err, p2p.ErrGranted):
				return nil, 0, Source{}, "", err
			case self:
				return nil, 0, Source{}, "the stream broke and this node is now the blob's designated fetcher", errGoUpstream
			case ctx.Err() != nil:
				return nil, 0, Source{}, "", ctx.Err()
			}
			return nil, 0, Source{}, "", nil
		}},
		{kind: Peer, open: func(ctx context.Context, q *query) (io.ReadCloser, int64, Source, string, error) {
			rc, size, peerID, err := s.fromPeers(ctx, q.d, q.offset, q.tried, 1)
			if err == nil {
				s.hist.add(decision{Registry: q.ref.Registry, Repo: q.ref.Repo, Digest: q.d, Kind: "blob", Source: Peer, Reason: "the stream broke; provided by peer " + peerID})
				return rc, size, Source{Kind: Peer, Peer: peerID}, "", nil
			}
			return nil, 0, Source{}, "the stream from " + last + " broke and neither a designated peer nor a provider took over", nil
		}},
	}
}

// openProviders opens the blob from the first provider that answers.
func (s *sources) openProviders(ctx context.Context, q *query) (io.ReadCloser, int64, Source, string, error) {
	rc, size, peerID, err := s.fromPeers(ctx, q.d, q.offset, q.tried, maxPeersPerLookup)
	if err != nil {
		return nil, 0, Source{}, "", nil
	}
	s.hist.add(decision{Registry: q.ref.Registry, Repo: q.ref.Repo, Digest: q.d, Kind: "blob", Source: Peer, Reason: "provided by peer " + peerID})
	return rc, size, Source{Kind: Peer, Peer: peerID}, "", nil
}

// openDesignated asks the peer the swarm designates for the digest (nobody has it or is
// fetching it), so that the upstream is paid once for everyone. Its skip reason is the
// upstream's.
func (s *sources) openDesignated(ctx context.Context, q *query) (io.ReadCloser, int64, Source, string, error) {
	rt, d, offset, tried := q.ref, q.d, q.offset, q.tried
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
			rc, size, err := s.node.FetchViaWithin(ctx, patientAnswer, p2p.Peer{ID: id}, d, offset, rt.Registry, rt.Repo)
			if err == nil {
				rc, size, src := s.designatedAnswer(rt, d, id, rc, size, "the designated walk passed over closer peer ")
				return rc, size, src, "", nil
			}
			if errors.Is(err, p2p.ErrGranted) {
				return nil, 0, Source{}, "", asGrant(err, id)
			}
			s.log.Info("closer peer passed over by the designated walk did not answer", "digest", d, "peer", id, "err", err)
			if ctx.Err() != nil {
				return nil, 0, Source{}, "", ctx.Err()
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
		if holder, ok := s.grants.holder(d, s.node.Connected); ok && !tried[holder] {
			// A peer asked first and was granted the fetch: follow its download.
			tried[holder] = true
			rc, size, src, err := s.followGrant(rt, d, holder)(ctx, offset)
			if err != nil {
				return nil, 0, Source{}, "", err
			}
			return rc, size, src, "", nil
		}
	case tried[dp.ID]:
		why = "no peer had it and its designated peer " + dp.ID + " was tried already"
	default:
		rc, size, source, err := s.viaDesignated(ctx, rt, d, dp, offset, tried, "nobody had it; designated peer ")
		if err == nil {
			return rc, size, source, "", nil
		}
		if errors.Is(err, p2p.ErrGranted) {
			return nil, 0, Source{}, "", err
		}
		why = "no peer had it and its designated peer " + dp.ID + " did not answer: " + err.Error()
		if errors.Is(err, p2p.ErrStalled) {
			// A designated peer that did not answer in time is most often busy, not
			// gone: the whole swarm asked it at the same instant. Ask it once more,
			// patiently; then look for a provider record (its download is advertised
			// once the upstream answers, or that of a node following it) before paying
			// the upstream once more. It may be asked again as a plain provider.
			rc, size, err2 := s.node.FetchViaWithin(ctx, patientAnswer, dp, d, offset, rt.Registry, rt.Repo)
			if err2 == nil {
				rc, size, src := s.designatedAnswer(rt, d, dp.ID, rc, size, "nobody had it; asked again, designated peer ")
				return rc, size, src, "", nil
			}
			if errors.Is(err2, p2p.ErrGranted) {
				return nil, 0, Source{}, "", asGrant(err2, dp.ID)
			}
			s.log.Info("designated peer did not answer a second time", "digest", d, "peer", dp.ID, "err", err2)
			delete(tried, dp.ID)
			if rc, size, peerID, err := s.awaitPeers(ctx, d, offset, tried, providerWait); err == nil {
				s.hist.add(decision{Registry: rt.Registry, Repo: rt.Repo, Digest: d, Kind: "blob", Source: Peer,
					Reason: "designated peer " + dp.ID + " did not answer in time; provided by peer " + peerID})
				return rc, size, Source{Kind: Peer, Peer: peerID}, "", nil
			}
			tried[dp.ID] = true
		}
		if ctx.Err() != nil {
			return nil, 0, Source{}, "", ctx.Err()
		}
		// Gone (its connection broke: killed, restarting) or silent: every node that asked
		// it designates the next closest alike, which fetches once for all of them.
		r, n, src, self, rerr := s.redesignate(ctx, rt, d, offset, tried, dp.ID)
		switch {
		case rerr == nil:
			return r, n, src, "", nil
		case errors.Is(rerr, p2p.ErrGranted):
			return nil, 0, Source{}, "", rerr
		case self:
			why = "its designated peer " + dp.ID + " did not answer and this node is the next closest: " + err.Error()
			// A node that followed the one that went may hold the blob, or more of it.
			if rc, size, peerID, err := s.fromPeers(ctx, d, offset, tried, maxPeersPerLookup); err == nil {
				s.hist.add(decision{Registry: rt.Registry, Repo: rt.Repo, Digest: d, Kind: "blob", Source: Peer,
					Reason: "designated peer " + dp.ID + " did not answer; provided by peer " + peerID})
				return rc, size, Source{Kind: Peer, Peer: peerID}, "", nil
			}
		}
	}
	return nil, 0, Source{}, why, nil
}

// openUpstream opens the blob from the upstream (the last attempt).
func (s *sources) openUpstream(ctx context.Context, q *query) (io.ReadCloser, int64, Source, string, error) {
	rc, size, src, err := s.upstreamOpener(q.ref, q.d, "")(ctx, q.offset)
	return rc, size, src, "", err
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
func (s *sources) redesignate(ctx context.Context, rt Ref, d digest.Digest, offset int64, tried map[string]bool, broken string) (rc io.ReadCloser, size int64, source Source, self bool, err error) {
	except := []string{broken}
	for range 3 {
		dp, self, err := s.node.DesignatedAmongConnected(ctx, d, except...)
		if err != nil || self {
			return nil, 0, Source{}, self, errors.Join(errNoDesignated, err)
		}
		except = append(except, dp.ID)
		if tried[dp.ID] {
			continue
		}
		rc, size, source, err := s.viaDesignated(ctx, rt, d, dp, offset, tried, "the stream broke; the swarm designated peer ")
		if err == nil || ctx.Err() != nil || errors.Is(err, p2p.ErrGranted) {
			return rc, size, source, false, err
		}
	}
	return nil, 0, Source{}, false, errNoDesignated
}

// errNoDesignated: there is no designated peer left to ask.
var errNoDesignated = errors.New("no designated peer to ask")

// viaDesignated asks dp, the peer the swarm designates for d, to fetch it for the swarm.
func (s *sources) viaDesignated(ctx context.Context, rt Ref, d digest.Digest, dp p2p.Peer, offset int64, tried map[string]bool, why string) (io.ReadCloser, int64, Source, error) {
	tried[dp.ID] = true
	rc, size, err := s.node.FetchVia(ctx, dp, d, offset, rt.Registry, rt.Repo)
	if errors.Is(err, p2p.ErrGranted) {
		return nil, 0, Source{}, asGrant(err, dp.ID)
	}
	if err != nil {
		s.log.Info("designated peer did not answer", "digest", d, "peer", dp.ID, "err", err)
		return nil, 0, Source{}, err
	}
	rc, size, src := s.designatedAnswer(rt, d, dp.ID, rc, size, why)
	return rc, size, src, nil
}

// designatedAnswer records and returns the answer of a designated peer id to a swarm fetch.
func (s *sources) designatedAnswer(rt Ref, d digest.Digest, id string, rc io.ReadCloser, size int64, why string) (io.ReadCloser, int64, Source) {
	if from := servedBy(rc, id); from != id {
		s.hist.add(decision{Registry: rt.Registry, Repo: rt.Repo, Digest: d, Kind: "blob", Source: Peer, Reason: why + id + " was at its upload limit and sent this node to " + from + ", which follows its download"})
		return rc, size, Source{Kind: Peer, Peer: from}
	}
	s.hist.add(decision{Registry: rt.Registry, Repo: rt.Repo, Digest: d, Kind: "blob", Source: Designated, Reason: why + id + " fetched it for the swarm"})
	return rc, size, Source{Kind: Designated, Peer: id}
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
func (s *sources) upstreamOpener(rt Ref, d digest.Digest, why string) Opener {
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, Source, error) {
		rc, size, err := s.up.GetBlob(ctx, rt.Registry, rt.Repo, d, offset)
		if err != nil {
			return nil, 0, Source{}, err
		}
		if s.up.Private(rt.Registry, rt.Repo) {
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
		s.hist.add(decision{Registry: rt.Registry, Repo: rt.Repo, Digest: d, Kind: "blob", Source: Upstream, Reason: reason})
		return rc, size, Source{Kind: Upstream}, nil
	}
}

// peersOnly opens a blob of the cluster-local namespace (push) from the peers that provide
// it; there is no upstream to fall back on.
func (s *sources) peersOnly(d digest.Digest, notFound error) Opener {
	tried := map[string]bool{}
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, Source, error) {
		if s.node == nil {
			return nil, 0, Source{}, fmt.Errorf("%w: %s (P2P is off)", notFound, d)
		}
		rc, size, peerID, err := s.fromPeers(ctx, d, offset, tried, maxPeersPerLookup)
		if err != nil {
			return nil, 0, Source{}, err
		}
		return rc, size, Source{Kind: Peer, Peer: peerID}, nil
	}
}

// ---- predict mode: the same attempts, answered from lookups only ----

func (f *Fetcher) predictStore(ctx context.Context, q *query) (Source, string) {
	if _, err := f.store.Stat(ctx, q.d); err == nil {
		return Source{Kind: Store}, "in the store"
	}
	return Source{}, "not in the store"
}

func (f *Fetcher) predictInFlight(ctx context.Context, q *query) (Source, string) {
	if f.spool.has(q.d) {
		return Source{Kind: InFlight}, "a download is under way"
	}
	return Source{}, "no download in flight"
}

func (s *sources) predictProviders(ctx context.Context, q *query) (Source, string) {
	if s.node == nil {
		q.lookedUp = true
		return Source{}, "P2P disabled"
	}
	ps, err := s.node.FindProviders(ctx, q.d, explainProviders)
	q.lookedUp = true
	for _, p := range ps {
		q.providers = append(q.providers, p.ID)
	}
	switch {
	case err != nil:
		return Source{}, "provider lookup failed: " + err.Error()
	case len(ps) == 0:
		return Source{}, "no peer provides it"
	}
	return Source{Kind: Peer, Peer: ps[0].ID}, fmt.Sprintf("%d peer(s) provide it", len(ps))
}

func (s *sources) predictDesignated(ctx context.Context, q *query) (Source, string) {
	if s.node == nil {
		return Source{}, "P2P disabled"
	}
	des, err := s.node.Designate(ctx, q.d)
	// asked is the answer of a designated peer asked to fetch: nobody provides the blob here
	// (the step before found none), so it has no copy and no download, and no peer it granted
	// the fetch to has one either (those are advertised from their start): it grants this
	// node the fetch, unless it is an old node.
	asked := func(id, why string) (Source, string) {
		if s.node.SpeaksGrant(id) {
			return Source{Kind: Upstream}, why + "; nobody provides it, so it would grant this node the fetch"
		}
		return Source{Kind: Designated, Peer: id}, why
	}
	switch {
	case err != nil:
		return Source{}, "finding its designated fetcher failed: " + err.Error()
	case len(des.Passed) > 0:
		return asked(des.Passed[0], "its designated fetcher is closer peer "+des.Passed[0]+" (the walk passed over it)")
	case des.Self:
		if holder, ok := s.grants.holder(q.d, s.node.Connected); ok {
			return Source{Kind: Peer, Peer: holder}, "this node is its designated fetcher and granted the fetch to peer " + holder + ": it follows that download"
		}
		return Source{}, "this node is its designated fetcher"
	case !s.node.Connected(des.Peer.ID):
		// Gone: a fetch would hand the role to the next closest peer still connected.
		next, self, err := s.node.DesignatedAmongConnected(ctx, q.d, des.Peer.ID)
		switch {
		case err != nil:
			return Source{}, "its designated fetcher " + des.Peer.ID + " is gone and finding the next failed: " + err.Error()
		case self:
			return Source{}, "its designated fetcher " + des.Peer.ID + " is gone and this node is the next closest"
		}
		return asked(next.ID, "its designated fetcher "+des.Peer.ID+" is gone; the next closest is peer "+next.ID)
	}
	return asked(des.Peer.ID, "peer "+des.Peer.ID+" is its designated fetcher")
}

func (s *sources) predictUpstream(ctx context.Context, q *query) (Source, string) {
	return Source{Kind: Upstream}, "from the upstream"
}

// explainProviders bounds the providers one explain entry lists.
const explainProviders = 8

// predict runs attempts in predict mode: the first that answers is where the next request would
// be answered from; the reasons of the skipped ones say why.
func predict(ctx context.Context, q *query, attempts []attempt) (Source, string) {
	var skipped []string
	for _, a := range attempts {
		src, why := a.predict(ctx, q)
		if src.Kind != Unknown {
			if len(skipped) == 0 {
				return src, why
			}
			return src, joinReasons(skipped) + "; " + why
		}
		if why != "" && (len(skipped) == 0 || skipped[len(skipped)-1] != why) {
			skipped = append(skipped, why)
		}
	}
	return Source{}, joinReasons(skipped)
}

func joinReasons(rs []string) string {
	out := ""
	for i, r := range rs {
		if i > 0 {
			out += "; "
		}
		out += r
	}
	return out
}
