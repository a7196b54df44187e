package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/admin"
	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/store"
)

// The operator surfaces (admin API, metrics, web console) live in internal/admin; this file
// wires them to the daemon's parts. adminDownloads is admin.Downloads over today's spool,
// history and P2P node.

func (c *Config) validateOps() error {
	if err := admin.CheckAdminListen(c.AdminListen); err != nil {
		return &ConfigError{Key: "admin_listen", Err: err}
	}
	if err := admin.CheckMetricsListen(c.MetricsListen); err != nil {
		return &ConfigError{Key: "metrics_listen", Err: err}
	}
	return nil
}

// openOps builds the metrics and the admin API over the daemon's parts and opens their
// listeners. m is the mirror (operator pulls and exports go through it, in process), dl the
// downloads as the admin side sees them, src the mirror's sources (their P2P lookups are
// timed for the metrics), fe the files endpoint (nil when off).
func (d *Daemon) openOps(m http.Handler, dl *adminDownloads, src *sources, fe *filesEndpoint) error {
	var node admin.Node
	if d.node != nil {
		node = d.node
	}
	g := d.guard
	metrics := admin.NewMetrics(d.cfg.Version, admin.State{Store: d.store, Upstream: d.up, Node: node, Downloads: dl,
		Guard: func() admin.GuardCounts {
			return admin.GuardCounts{Refused: g.refusals(), ConnsRefused: g.conns.refused.Load(), Conns: int64(g.conns.total())}
		}})
	if src != nil && src.node != nil {
		src.node = &timedPeerNode{peerNode: src.node, m: metrics}
	}
	observe := func(rd requestDone) {
		metrics.ObserveRequest(admin.Request{Path: rd.path, Status: rd.status, Bytes: rd.bytes, Source: rd.source, Duration: rd.duration})
	}
	c := d.cfg.Console
	o := admin.Options{
		Log: d.log.With("component", "admin"), ConsoleLog: d.log.With("component", "console"),
		Version: d.cfg.Version, DataDir: d.cfg.DataDir, DefaultRegistry: d.cfg.DefaultRegistry,
		AdminListen: d.cfg.AdminListen, MetricsListen: d.cfg.MetricsListen,
		Console: admin.ConsoleOptions{Listen: c.Listen, DefaultListen: DefaultConsoleListen, Htpasswd: c.Htpasswd, ParseHtpasswd: parseHtpasswd,
			HubSearchURL: c.HubSearchURL, SearchCacheTTL: c.SearchCacheTTL, SearchPerMinute: c.SearchPerMinute},
		Store: d.store, Upstream: d.up, Node: node, Downloads: dl, Metrics: metrics,
		// The mirror without the guard (the admin API is the operator's already), with the
		// access log and metrics like any client's request.
		Mirror:     accessLog(d.log.With("component", "mirror"), m, observe),
		MirrorAddr: d.Addr,
		Canary:     d.canaryLookup,
		GuardAdmin: guardAdmin,
	}
	if fe != nil {
		o.FileName, o.FileDigest = fe.h.Name, fe.h.DigestOf
	}
	ops, err := admin.New(o)
	if err != nil {
		if ce := (*admin.ConfigError)(nil); errors.As(err, &ce) {
			return &ConfigError{Key: ce.Key, Err: ce.Err}
		}
		return err
	}
	if d.node != nil {
		d.node.SetPreheater(ops) // peers' cluster pulls warm through the admin's pull
	}
	d.ops, d.metrics, d.observe = ops, metrics, observe
	return nil
}

// abortNew releases what New opened before it failed.
func (d *Daemon) abortNew() {
	if d.node != nil {
		_ = d.node.Close()
	}
	_ = d.ln.Close()
	_ = d.store.Close()
}

// AdminAddr is the admin API's address ("" when off), as `shoal --admin` takes it.
func (d *Daemon) AdminAddr() string { return d.ops.AdminAddr() }

// MetricsAddr is the metrics endpoint's address ("" when off).
func (d *Daemon) MetricsAddr() string { return d.ops.MetricsAddr() }

// ConsoleAddr is the web console's address ("" when off).
func (d *Daemon) ConsoleAddr() string { return d.ops.ConsoleAddr() }

// canaryLookup answers the admin API's /v1/doctor/canary: what the mirror recorded of a nonce.
func (d *Daemon) canaryLookup(nonce string) (adminapi.Canary, error) {
	if !canaryNonce.MatchString(nonce) {
		return adminapi.Canary{}, fmt.Errorf("nonce %q: not a tag", nonce)
	}
	if d.canary == nil {
		return adminapi.Canary{Nonce: nonce}, nil
	}
	return d.canary.lookup(nonce), nil
}

// timedPeerNode times the mirror's provider lookups and counts its provides for the metrics.
type timedPeerNode struct {
	peerNode
	m *admin.Metrics
}

func (t *timedPeerNode) FindProviders(ctx context.Context, d digest.Digest, max int) ([]p2p.Peer, error) {
	start := time.Now()
	peers, err := t.peerNode.FindProviders(ctx, d, max)
	t.m.ObserveLookup(time.Since(start), len(peers), err)
	return peers, err
}

func (t *timedPeerNode) Provide(ctx context.Context, d digest.Digest) error {
	err := t.peerNode.Provide(ctx, d)
	t.m.ObserveProvide(err)
	return err
}

// providerFinder is the P2P node's provider lookup, for explain.
type providerFinder interface {
	FindProviders(ctx context.Context, d digest.Digest, max int) ([]p2p.Peer, error)
}

// adminDownloads is admin.Downloads over the spool, the history and the P2P node (until the
// fetch side offers it itself).
type adminDownloads struct {
	store *store.Store
	spool *spool
	hist  *history
	node  providerFinder // nil: P2P disabled
	fills fillWatch      // downloads starting (the spool's onStarted), for WhenStarted
}

var _ admin.Downloads = (*adminDownloads)(nil)

// explainLookups bounds the provider lookups of one explain that run at once.
const explainLookups = 8

// adminProgressEvery spaces out WaitStored's progress calls.
const adminProgressEvery = 150 * time.Millisecond

// InFlight returns the downloads in flight, largest first.
func (a *adminDownloads) InFlight() []adminapi.InFlight {
	s := a.spool
	s.mu.Lock()
	fills := make([]*fill, 0, len(s.fills))
	for _, f := range s.fills {
		fills = append(fills, f)
	}
	s.mu.Unlock()
	out := make([]adminapi.InFlight, 0, len(fills))
	for _, f := range fills {
		f.mu.Lock()
		in := adminapi.InFlight{Digest: f.d.String(), Registry: f.rt.registry, Repo: f.rt.repo, Size: f.size, Done: f.written,
			Sources: append([]string{}, f.sources...)}
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

// Count is the number of blob downloads under way.
func (a *adminDownloads) Count() int {
	s := a.spool
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fills)
}

// BoundExceeded counts downloads stopped for breaking their size bound, by reason.
func (a *adminDownloads) BoundExceeded() map[string]int64 { return a.spool.boundExceeded() }

// HistorySize is the number of decisions remembered.
func (a *adminDownloads) HistorySize() int { return a.hist.size() }

// Recent returns the last n decisions about d, newest first.
func (a *adminDownloads) Recent(d digest.Digest, n int) []adminapi.Decision {
	return toDecisions(a.hist.recentN(d, n))
}

// WaitStored waits until d is committed (checking the store itself first, and again when the
// download it follows ends), telling progress at most every adminProgressEvery.
func (a *adminDownloads) WaitStored(ctx context.Context, d digest.Digest, progress func(int64)) (int64, error) {
	last := time.Now()
	for {
		if info, err := a.store.Stat(ctx, d); err == nil {
			return info.Size, nil
		}
		f := a.spool.lookup(d)
		if f == nil {
			if info, err := a.store.Stat(ctx, d); err == nil {
				return info.Size, nil
			}
			return 0, fmt.Errorf("%s was served but could not be stored (see the daemon's log)", d)
		}
		f.mu.Lock()
		done, ferr, changed, written := f.done, f.err, f.changed, f.written
		f.mu.Unlock()
		if done {
			f.release()
			if ferr != nil {
				return 0, fmt.Errorf("storing %s: %w", d, ferr)
			}
			continue
		}
		if progress != nil && time.Since(last) >= adminProgressEvery {
			last = time.Now()
			progress(written)
		}
		select {
		case <-changed:
			f.release()
		case <-ctx.Done():
			f.release()
			return 0, ctx.Err()
		}
	}
}

// WhenStarted calls fn (at most once) when this node's download of d has started: at once
// if one runs already, else when the spool starts one. stop ends the watch.
func (a *adminDownloads) WhenStarted(ctx context.Context, d digest.Digest, fn func()) (stop func()) {
	var once sync.Once
	call := func() { once.Do(fn) }
	cancel := a.fills.wait(d, call)
	ctx, done := context.WithCancel(ctx)
	if f := a.spool.lookup(d); f != nil { // a download that may have started already
		go func() {
			defer f.release()
			if _, err := f.waitStarted(ctx); err == nil {
				call()
			}
		}()
	}
	return func() { cancel(); done() }
}

// Explain fills in providers, the next source and the last decision of each entry.
func (a *adminDownloads) Explain(ctx context.Context, registry, repo string, entries []adminapi.ExplainEntry) {
	type found struct {
		peers []string
		err   error
	}
	results := make([]found, len(entries))
	if a.node != nil {
		sem := make(chan struct{}, explainLookups)
		var wg sync.WaitGroup
		for i := range entries {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				ps, err := a.node.FindProviders(ctx, digest.Digest(entries[i].Digest), 8)
				results[i].err = err
				for _, p := range ps {
					results[i].peers = append(results[i].peers, p.ID)
				}
			}()
		}
		wg.Wait()
	}
	for i := range entries {
		e := &entries[i]
		d := digest.Digest(e.Digest)
		e.Providers = results[i].peers
		switch {
		case e.InStore:
			e.Next = "store"
			if e.Reason == "" {
				e.Reason = "in the store"
				if e.Pinned {
					e.Reason = "in the store (pinned)"
				}
			}
		case a.spool.has(d):
			e.Next, e.Reason = "inflight", "a download is under way"
		case len(e.Providers) > 0:
			e.Next, e.Reason = "peer", fmt.Sprintf("not in the store; %d peer(s) provide it", len(e.Providers))
		case a.node == nil:
			e.Next, e.Reason = "upstream", "not in the store; P2P disabled"
		case results[i].err != nil:
			e.Next, e.Reason = "upstream", "not in the store; provider lookup failed: "+results[i].err.Error()
		default:
			e.Next, e.Reason = "upstream", "not in the store; no peer provides it"
		}
		if last := a.hist.recentN(d, 1); len(last) > 0 {
			dec := toDecision(last[0])
			e.Last = &dec
		}
	}
}

// has reports whether a download of d is in flight.
func (s *spool) has(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.fills[d]
	return ok
}

func toDecisions(ds []decision) []adminapi.Decision {
	out := make([]adminapi.Decision, 0, len(ds))
	for _, d := range ds {
		out = append(out, toDecision(d))
	}
	return out
}

func toDecision(d decision) adminapi.Decision {
	return adminapi.Decision{Time: d.Time.UTC(), Registry: d.Registry, Repo: d.Repo, Digest: d.Digest.String(), Kind: d.Kind,
		Source: d.Source, Reason: d.Reason, Bytes: d.Bytes}
}

// fillWatch tells waiters when this node's download of a digest starts (the spool's
// onStarted: the moment it is advertised to peers).
type fillWatch struct {
	mu      sync.Mutex
	waiters map[digest.Digest]map[*struct{}]func()
}

// started runs and forgets the waiters of d.
func (w *fillWatch) started(d digest.Digest) {
	w.mu.Lock()
	fns := w.waiters[d]
	delete(w.waiters, d)
	w.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// wait runs fn once when d's download starts; cancel forgets it.
func (w *fillWatch) wait(d digest.Digest, fn func()) (cancel func()) {
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
