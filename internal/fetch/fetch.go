package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/store"
)

// Options configure a Fetcher.
type Options struct {
	Store    *store.Store
	Upstream UpstreamClient
	Log      *slog.Logger
	// MaxBlob bounds every download (store.max_blob_size; 0: none).
	MaxBlob int64
	// SharePrivate: advertise and serve to peers content from repositories that needed
	// credentials (p2p.share_private).
	SharePrivate bool
	// HistorySize is how many decisions `shoal explain` and the history keep (0: 4096).
	HistorySize int
}

// Fetcher owns where content comes from: the downloads in flight (the spool), the peers and
// the upstream, and the record of its decisions.
type Fetcher struct {
	store *store.Store
	log   *slog.Logger
	spool *spool
	src   *sources
	hist  *history
	// manifests coalesces the fetches of one manifest (Manifest).
	manifests singleflight.Group
}

// New builds a Fetcher without a P2P node (SetNode adds it, before serving starts).
func New(o Options) *Fetcher {
	if o.HistorySize <= 0 {
		o.HistorySize = 4096
	}
	f := &Fetcher{store: o.Store, log: o.Log, hist: newHistory(o.HistorySize)}
	f.src = &sources{up: o.Upstream, private: newPrivateSet(o.Store), hist: f.hist, log: o.Log, sharePrivate: o.SharePrivate}
	st, src := o.Store, f.src
	f.spool = newSpool(o.Store, o.Log, o.MaxBlob, hooks{
		onMismatch: src.banLiars,
		// Advertise a blob as soon as its download starts: peers follow it as it grows
		// (serve-while-downloading), so a rollout pays the upstream once per cluster.
		onStarted: func(fl *Fill) { src.advertise(context.Background(), fl.d) },
		onFilled:  func(fl *Fill) { src.advertise(context.Background(), fl.d) },
		onFailed: func(fl *Fill) {
			// A download that failed is no longer advertised, unless the store holds the
			// blob anyway (a push committed it meanwhile: its advertisement must stand).
			if _, err := st.Stat(context.Background(), fl.d); err == nil {
				return
			}
			src.withdraw(fl.d)
		},
	})
	return f
}

// PeerContent is what this node serves to its peers (p2p.New's content).
func (f *Fetcher) PeerContent(log *slog.Logger) interface {
	p2p.Content
	p2p.SwarmFetcher
	p2p.Granter
} {
	return &peerContent{store: f.store, spool: f.spool, private: f.src.private, sharePrivate: f.src.sharePrivate, src: f.src, log: log}
}

// SetNode gives the Fetcher its P2P node (nil: P2P off). Call it before serving: the node is
// built after the Fetcher because it serves the Fetcher's PeerContent.
func (f *Fetcher) SetNode(n PeerNode) { f.src.node = n }

// Node is the P2P node the Fetcher uses (nil: P2P off).
func (f *Fetcher) Node() PeerNode { return f.src.node }

// Shutdown waits for the downloads in flight, aborting them when ctx ends.
func (f *Fetcher) Shutdown(ctx context.Context) { f.spool.shutdown(ctx) }

// Blob is the answer to one blob request: the stored blob, or a download (a Fill) to follow.
type Blob struct {
	Stored io.ReadSeekCloser // committed content; the caller closes it
	Size   int64             // Stored's size
	// Fill is the download to follow (Started: this request started it); the caller
	// releases it.
	Fill    *Fill
	Started bool
}

// Blob resolves d for a client: the store, a download in flight, else a new download that
// opens its bytes with open (Opener). It returns store.ErrNoSpace when the store cannot take
// the blob (the caller then serves it straight from open, verified, unkept).
func (f *Fetcher) Blob(ctx context.Context, ref Ref, d digest.Digest, open Opener) (Blob, error) {
	for {
		rc, info, err := f.store.Reader(ctx, d)
		if err == nil {
			return Blob{Stored: rc, Size: info.Size}, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return Blob{}, err
		}
		fl, started, err := f.spool.join(ctx, ref, d, open)
		switch {
		case errors.Is(err, store.ErrNoSpace):
			f.spool.noSpace.Do(func() { f.log.Warn("store is out of space; serving straight from the upstream", "err", err) })
			return Blob{}, err
		case err != nil:
			return Blob{}, err
		case fl == nil:
			continue // committed between our two looks: read it from the store
		}
		return Blob{Fill: fl, Started: started}, nil
	}
}

// Opener returns the opener of a blob's remote bytes: the remote attempts of the resolution
// order (providers, designated fetcher, upstream), and its resumes.
func (f *Fetcher) Opener(ref Ref, d digest.Digest) Opener {
	return f.src.blobOpener(ref, d, f.blobAttempts())
}

// PeersOnly returns the opener of a blob of the cluster-local namespace: peers only, no
// upstream; notFound is wrapped when P2P is off.
func (f *Fetcher) PeersOnly(d digest.Digest, notFound error) Opener {
	return f.src.peersOnly(d, notFound)
}

// Source is the source a response that follows fl reports: InFlight when the request joined a
// download someone else started, else where the download's bytes first came from.
func (fl *Fill) SourceFor(started bool) Kind {
	if !started {
		return InFlight
	}
	if srcs := fl.Sources(); len(srcs) > 0 {
		return srcs[0].Kind
	}
	return Upstream
}

// DirectBound bounds a pass-through download (the store is full) by the rules of a fill, from
// offset pos of a blob its source announced as size bytes.
func (f *Fetcher) DirectBound(r io.Reader, d digest.Digest, size, pos int64) (io.Reader, error) {
	return f.spool.directBound(r, d, size, pos)
}

// NoteBound logs and counts err if it is a download stopped by its size bound.
func (f *Fetcher) NoteBound(ref Ref, d digest.Digest, src Source, err error) {
	if be, ok := errors.AsType[*boundError](err); ok {
		f.spool.noteBound(ref, d, []Source{src}, be)
	}
}

// LearnSizes bounds the downloads of the blobs a manifest references by their descriptors.
func (f *Fetcher) LearnSizes(manifest []byte) { f.spool.sizes.learn(manifest) }

// ManifestFromPeers fetches a manifest by digest from providers, verified; ok=false when no
// peer had good bytes (or P2P is off).
func (f *Fetcher) ManifestFromPeers(ctx context.Context, d digest.Digest) ([]byte, bool) {
	return f.src.manifestFromPeers(ctx, d)
}

// Record notes where a manifest request was answered from (Kind "manifest").
func (f *Fetcher) Record(ref Ref, d digest.Digest, kind string, src Kind, n int64) {
	f.hist.add(decision{Registry: ref.Registry, Repo: ref.Repo, Digest: d, Kind: kind, Source: src, Bytes: n})
}

// MarkPrivate remembers that d came from a repository that needed credentials: it is kept
// from peers unless sharing private content is configured.
func (f *Fetcher) MarkPrivate(ctx context.Context, d digest.Digest) { f.src.private.add(ctx, d) }

// Shareable reports whether d may be served to peers.
func (f *Fetcher) Shareable(ctx context.Context, d digest.Digest) bool {
	return f.src.sharePrivate || !f.src.private.has(ctx, d)
}

// Advertise tells the swarm this node has d (unless d is private); it does not wait.
func (f *Fetcher) Advertise(ctx context.Context, d digest.Digest) { f.src.advertise(ctx, d) }

// ---- what the admin API asks ----

// InFlight lists the downloads in flight, largest first.
func (f *Fetcher) InFlight() []adminapi.InFlight { return f.spool.list() }

// Count is the number of blob downloads under way.
func (f *Fetcher) Count() int {
	f.spool.mu.Lock()
	defer f.spool.mu.Unlock()
	return len(f.spool.fills)
}

// BoundExceeded counts the downloads stopped by their size bound, by reason.
func (f *Fetcher) BoundExceeded() map[string]int64 { return f.spool.boundExceeded() }

// HistorySize is how many decisions the history holds now.
func (f *Fetcher) HistorySize() int { return f.hist.size() }

// Recent returns the newest n decisions for d ("" : all; n <= 0: no limit), newest first.
func (f *Fetcher) Recent(d digest.Digest, n int) []adminapi.Decision {
	return toDecisions(f.hist.recentN(d, n))
}

// WaitStored waits until d, just read through the mirror, is committed (the mirror sends the
// last byte as soon as the digest is verified, before the store has made the blob durable),
// telling progress (bytes written, at most every progressEvery) and returning its size.
func (f *Fetcher) WaitStored(ctx context.Context, d digest.Digest, progress func(int64)) (int64, error) {
	last := time.Now()
	for {
		if info, err := f.store.Stat(ctx, d); err == nil {
			return info.Size, nil
		}
		fl := f.spool.lookup(d)
		if fl == nil {
			if info, err := f.store.Stat(ctx, d); err == nil {
				return info.Size, nil
			}
			return 0, fmt.Errorf("%s was served but could not be stored (see the daemon's log)", d)
		}
		fl.mu.Lock()
		done, ferr, changed, written := fl.done, fl.err, fl.changed, fl.written
		fl.mu.Unlock()
		if done {
			fl.Release()
			if ferr != nil {
				return 0, fmt.Errorf("storing %s: %w", d, ferr)
			}
			continue
		}
		if progress != nil && time.Since(last) >= progressEvery {
			last = time.Now()
			progress(written)
		}
		select {
		case <-changed:
			fl.Release()
		case <-ctx.Done():
			fl.Release()
			return 0, ctx.Err()
		}
	}
}

// progressEvery spaces WaitStored's progress reports.
const progressEvery = 150 * time.Millisecond

// WhenStarted calls fn (at most once) when this node's download of d has started: at once if
// one runs already, else when the spool starts one (the moment it is advertised to peers).
// stop ends the watch.
func (f *Fetcher) WhenStarted(ctx context.Context, d digest.Digest, fn func()) (stop func()) {
	var once sync.Once
	call := func() { once.Do(fn) }
	cancel := f.spool.watch.wait(d, call)
	ctx, done := context.WithCancel(ctx)
	if fl := f.spool.lookup(d); fl != nil { // a download that may have started already
		go func() {
			defer fl.Release()
			if _, err := fl.WaitStarted(ctx); err == nil {
				call()
			}
		}()
	}
	return func() { cancel(); done() }
}

// Explain fills in, for each entry (InStore already set by the caller), the peers that
// provide it, where the next request for it would be answered from and why (the resolution
// order asked in predict mode: no download started, no peer asked to fetch), and the last
// decision for it. registry and repo name the image the entries belong to.
func (f *Fetcher) Explain(ctx context.Context, registry, repo string, entries []adminapi.ExplainEntry) {
	type result struct {
		src       Source
		why       string
		providers []string
	}
	results := make([]result, len(entries))
	sem := make(chan struct{}, explainLookups)
	var wg sync.WaitGroup
	for i := range entries {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			e := entries[i]
			q := &query{ref: Ref{Registry: registry, Repo: repo}, d: digest.Digest(e.Digest)}
			attempts := f.blobAttempts()
			if e.Kind == "manifest" || e.Kind == "index" {
				attempts = f.manifestAttempts()
			}
			src, why := predict(ctx, q, attempts)
			if !q.lookedUp {
				// Answered before the providers' step (stored, in flight): the entry
				// still lists who else has it.
				f.src.predictProviders(ctx, q)
			}
			results[i] = result{src: src, why: why, providers: q.providers}
		}()
	}
	wg.Wait()
	for i := range entries {
		e := &entries[i]
		r := results[i]
		e.Providers = r.providers
		e.Next = r.src.Kind.String()
		switch {
		case r.src.Kind == Store && e.Reason != "":
		case r.src.Kind == Store && e.Pinned:
			e.Reason = "in the store (pinned)"
		default:
			e.Reason = r.why
		}
		if last := f.hist.recentN(digest.Digest(e.Digest), 1); len(last) > 0 {
			dec := toDecision(last[0])
			e.Last = &dec
		}
	}
}

// explainLookups bounds the lookups of one explain that run at once.
const explainLookups = 8

// Predict says where the next request for d would be answered from, and why, without side
// effects; manifest selects the manifests' order.
func (f *Fetcher) Predict(ctx context.Context, ref Ref, d digest.Digest, manifest bool) (Source, string) {
	attempts := f.blobAttempts()
	if manifest {
		attempts = f.manifestAttempts()
	}
	return predict(ctx, &query{ref: ref, d: d}, attempts)
}

// has reports whether a download of d is in flight.
func (s *spool) has(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.fills[d]
	return ok
}

// list returns the downloads in flight, largest first.
func (s *spool) list() []adminapi.InFlight {
	s.mu.Lock()
	fills := make([]*Fill, 0, len(s.fills))
	for _, f := range s.fills {
		fills = append(fills, f)
	}
	s.mu.Unlock()
	out := make([]adminapi.InFlight, 0, len(fills))
	for _, f := range fills {
		f.mu.Lock()
		in := adminapi.InFlight{Digest: f.d.String(), Registry: f.ref.Registry, Repo: f.ref.Repo, Size: f.size, Done: f.written,
			Sources: make([]string, 0, len(f.sources))}
		for _, s := range f.sources {
			in.Sources = append(in.Sources, s.String())
		}
		f.mu.Unlock()
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Size != out[j].Size {
			return out[i].Size > out[j].Size
		}
		return out[i].Digest < out[j].Digest
	})
	return out
}

// startWatch tells waiters when this node's download of a digest starts.
type startWatch struct {
	mu      sync.Mutex
	waiters map[digest.Digest]map[*struct{}]func()
}

// started runs and forgets the waiters of d.
func (w *startWatch) started(d digest.Digest) {
	w.mu.Lock()
	fns := w.waiters[d]
	delete(w.waiters, d)
	w.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// wait runs fn once when d's download starts; cancel forgets it.
func (w *startWatch) wait(d digest.Digest, fn func()) (cancel func()) {
	key := new(struct{})
	w.mu.Lock()
	if w.waiters == nil {
		w.waiters = map[digest.Digest]map[*struct{}]func(){}
	}
	if w.waiters[d] == nil {
		w.waiters[d] = map[*struct{}]func(){}
	}
	w.waiters[d][key] = fn
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if m := w.waiters[d]; m != nil {
			delete(m, key)
			if len(m) == 0 {
				delete(w.waiters, d)
			}
		}
	}
}

// MaxBlob is the bound every download has (store.max_blob_size, or the store's budget).
func (f *Fetcher) MaxBlob() int64 { return f.spool.maxBlob }

// Verified reports whether a download of d is in flight, and whether its bytes verified.
func (f *Fetcher) Verified(d digest.Digest) (inFlight, verified bool) {
	fl := f.spool.lookup(d)
	if fl == nil {
		return false, false
	}
	defer fl.Release()
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return true, fl.verified
}
