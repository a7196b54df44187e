package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/admin"
	"github.com/shoal-mirror/shoal/internal/fetch"
	"github.com/shoal-mirror/shoal/internal/guard"
	"github.com/shoal-mirror/shoal/internal/mirror"
	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/push"
)

// The operator surfaces (admin API, metrics, web console) live in internal/admin; this file
// wires them to the daemon's parts: the downloads they see are internal/fetch's Fetcher.

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
// listeners. m is the mirror (operator pulls and exports go through it, in process), fe where
// its content comes from (downloads in flight, decisions, explain's predictions; its P2P
// lookups are timed for the metrics).
func (d *Daemon) openOps(m *mirror.Mirror, fe *fetch.Fetcher) error {
	var node admin.Node
	if d.node != nil {
		node = d.node
	}
	g := d.guard
	metrics := admin.NewMetrics(d.cfg.Version, admin.State{Store: d.store, Upstream: d.up, Node: node, Downloads: fe,
		Guard: func() admin.GuardCounts {
			return admin.GuardCounts{Refused: g.Refusals(), ConnsRefused: g.ConnsRefused(), Conns: int64(g.Conns())}
		}})
	if fe.Node() != nil {
		fe.SetNode(&timedPeerNode{PeerNode: fe.Node(), m: metrics})
	}
	observe := func(rd guard.Served) {
		metrics.ObserveRequest(admin.Request{Path: rd.Path, Status: rd.Status, Bytes: rd.Bytes, Source: rd.Source, Duration: rd.Duration})
	}
	c := d.cfg.Console
	o := admin.Options{
		Log: d.log.With("component", "admin"), ConsoleLog: d.log.With("component", "console"),
		Version: d.cfg.Version, DataDir: d.cfg.DataDir, DefaultRegistry: d.cfg.DefaultRegistry,
		AdminListen: d.cfg.AdminListen, MetricsListen: d.cfg.MetricsListen,
		Console: admin.ConsoleOptions{Listen: c.Listen, DefaultListen: DefaultConsoleListen, Htpasswd: c.Htpasswd, ParseHtpasswd: guard.ParseHtpasswd,
			HubSearchURL: c.HubSearchURL, SearchCacheTTL: c.SearchCacheTTL, SearchPerMinute: c.SearchPerMinute},
		Store: d.store, Upstream: d.up, Node: node, Downloads: fe, Metrics: metrics,
		// The mirror without the guard (the admin API is the operator's already), with the
		// access log and metrics like any client's request.
		Mirror:     guard.AccessLog(d.log.With("component", "mirror"), mirror.HeaderSource, m, observe),
		MirrorAddr: d.Addr,
		Canary:     m.Canary,
		GuardAdmin: guard.Admin,
	}
	if fh := m.Files(); fh != nil {
		o.FileName, o.FileDigest = fh.Name, fh.DigestOf
	}
	if d.push != nil && d.cfg.Push.Namespace != "" {
		o.Local = localImages(d.push)
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
	if d.push != nil {
		d.push.Close()
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

// timedPeerNode times the mirror's provider lookups and counts its provides for the metrics.
type timedPeerNode struct {
	fetch.PeerNode
	m *admin.Metrics
}

func (t *timedPeerNode) FindProviders(ctx context.Context, d digest.Digest, max int) ([]p2p.Peer, error) {
	start := time.Now()
	peers, err := t.PeerNode.FindProviders(ctx, d, max)
	t.m.ObserveLookup(time.Since(start), len(peers), err)
	return peers, err
}

func (t *timedPeerNode) Provide(ctx context.Context, d digest.Digest) error {
	err := t.PeerNode.Provide(ctx, d)
	t.m.ObserveProvide(err)
	return err
}

// localImages adapts push.Handler.LocalUsage to the admin API (status, cache ls).
func localImages(h *push.Handler) func(context.Context) (*adminapi.LocalImages, map[digest.Digest]bool) {
	return func(ctx context.Context) (*adminapi.LocalImages, map[digest.Digest]bool) {
		u := h.LocalUsage(ctx)
		return &adminapi.LocalImages{Namespace: h.Namespace(), Tags: u.Tags, Images: u.Images, Pinned: u.Pinned, Bytes: u.Bytes}, u.Digests
	}
}
