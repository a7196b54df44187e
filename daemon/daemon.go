package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/admin"
	"github.com/shoal-mirror/shoal/internal/fetch"
	"github.com/shoal-mirror/shoal/internal/guard"
	"github.com/shoal-mirror/shoal/internal/mirror"
	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/push"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// Daemon is one running shoal: its store, its upstream client and its listeners.
type Daemon struct {
	cfg   Config
	log   *slog.Logger
	store *store.Store
	up    *upstream.Client
	srv   *http.Server
	ln    net.Listener
	node  *p2p.Node      // nil when P2P is disabled
	fetch *fetch.Fetcher // where content comes from, and the downloads in flight
	guard *guard.Guard   // access controls and limits of the mirror API
	ops   *admin.Server  // admin API, metrics and web console (internal/admin, admin_wiring.go)
	// metrics is the Prometheus registry (internal/admin); observe records a mirror request in it.
	metrics *admin.Metrics
	observe func(guard.Served)
	mirror  *mirror.Mirror // the mirror API (internal/mirror), behind the guard
	push    *push.Handler  // the cluster-local namespace (push_config.go, package push); nil when off
}

// New builds the daemon from a validated configuration and opens its listener, so that a port
// already in use is reported before Run.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mode := os.FileMode(0o755) // /var/lib/shoal or a named dir: as system state dirs are
	if cfg.dataDirWhy != "" {
		mode = 0o700 // the per-user fallback under $XDG_STATE_HOME: the XDG spec asks 0700
	}
	if err := os.MkdirAll(cfg.DataDir, mode); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	up, err := upstream.New(cfg.Upstream, log.With("component", "upstream"))
	if err != nil {
		return nil, &ConfigError{Key: "registries", Err: err}
	}
	glog := log.With("component", "guard")
	g, err := guard.New(cfg.Guard, glog, guard.Options{Listen: cfg.Listen, SendFrom: mirror.SendFrom,
		Route: func(r *http.Request) (string, string, bool) { return mirror.Name(r, cfg.DefaultRegistry) }})
	if err != nil {
		return nil, guardError(err)
	}
	if k := cfg.P2P.SwarmKeyFile; cfg.P2PEnabled && k != "" { // password files: upstream warns
		if err := guard.CheckSecretFile(glog, "p2p.swarm_key_file", k); err != nil {
			return nil, guardError(err)
		}
	}
	st, err := store.Open(ctx, cfg.Store, log) // store names its component
	if err != nil {
		return nil, fmt.Errorf("open store in %s: %w", cfg.DataDir, err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("mirror listener: %w", err)
	}
	mlog := log.With("component", "mirror")
	maxBlob := cfg.StoreMaxBlobSize
	if maxBlob == 0 {
		maxBlob = st.Stats().MaxSize
	}
	ups := mirror.NewUpstream(up) // file hosts answer through package files once the mirror mounts them
	fe := fetch.New(fetch.Options{Store: st, Upstream: ups, Log: mlog, MaxBlob: maxBlob, SharePrivate: cfg.P2PSharePrivate})
	var node *p2p.Node
	if cfg.P2PEnabled {
		node, err = p2p.New(ctx, cfg.P2P, cfg.DataDir, fe.PeerContent(log.With("component", "p2p")), log) // p2p names its component
		if err != nil {
			ln.Close()
			st.Close()
			if !strings.HasPrefix(err.Error(), "p2p: ") { // most of p2p.New's errors name it already
				err = fmt.Errorf("p2p: %w", err)
			}
			return nil, err
		}
		fe.SetNode(node)
		// Evicted content is no longer advertised; peers holding a stale record get a
		// not-found from us and move on.
		st.Subscribe(func(e store.Event) {
			if e.Kind == store.EventEvicted {
				node.Withdraw(e.Digest)
			}
		})
	}
	d := &Daemon{cfg: cfg, log: log, store: st, up: up, ln: ln, node: node, fetch: fe, guard: g}
	mo := mirror.Options{DefaultRegistry: cfg.DefaultRegistry, TagTTL: cfg.TagTTL, Store: st, Upstream: up, Fetch: fe, Log: mlog,
		VerifyFirst: cfg.P2PVerifyBeforeServing, VerifyMaxWait: cfg.P2PVerifyMaxWait}
	if cfg.Files.Enabled { // Hugging Face and GitHub files (docs/files.md)
		mo.Files, mo.FilesDir, mo.FilesLog, mo.FileUpstream = &cfg.Files, filepath.Join(cfg.DataDir, "files"), log.With("component", "files"), ups
	}
	if cfg.Push.Namespace != "" || writeThroughConfigured(cfg) {
		pc := cfg.Push
		pc.MaxBlobSize = maxBlob
		ph, err := push.New(pc, st, log.With("component", "push"), func(dg digest.Digest) { fe.Advertise(context.Background(), dg) })
		if err != nil {
			d.abortNew()
			return nil, &ConfigError{Key: "push", Err: err}
		}
		d.push, mo.Push, mo.PushUser = ph, ph, g.PushUser
		// Write-through: what the upstream accepted is advertised unless the registry needed
		// credentials (private stays private, p2p.share_private).
		ph.SetWriteThrough(up, func(ctx context.Context, host, repo string, held []digest.Digest) bool {
			private := up.Private(host, repo)
			for _, dg := range held {
				if private {
					fe.MarkPrivate(ctx, dg)
				}
				fe.Advertise(ctx, dg)
			}
			return !private
		})
	}
	m, err := mirror.New(mo)
	if err != nil {
		d.abortNew()
		return nil, &ConfigError{Key: "files", Err: err}
	}
	d.mirror = m
	if d.push != nil && node != nil {
		pcl := m.PushCluster(node) // the push namespace's cluster side: tags and copies over the swarm
		node.HandleReplicate(pcl.Hold)
		node.SetHeldTags(d.push.HeldTags)
		node.HandleTagNudge(d.push.Nudged)
		d.push.SetCluster(pcl)
	}
	if err := d.openOps(m, fe); err != nil { // admin_wiring.go: admin API and metrics
		d.abortNew()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ready\n")) })
	mux.Handle("/", m) // everything else gets an OCI error from the mirror
	d.srv = &http.Server{
		Handler:           guard.AccessLog(mlog, mirror.HeaderSource, g.Wrap(routeRoot(mux, m)), d.observe), // access controls, limits
		ReadHeaderTimeout: 30 * time.Second,
		MaxHeaderBytes:    64 << 10,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(mlog.Handler(), slog.LevelDebug),
	}
	// The guard's header/idle limits from the config, TLS on the listener.
	g.Configure(d.srv)
	d.ln = g.Listener(d.ln)
	return d, nil
}

// routeRoot sends what the mirror owns (/v2 and below, the file endpoints) to it without
// ServeMux's path cleaning (which would turn "/v2/../x" into a redirect instead of a
// NAME_INVALID, and "/https://…" into "/https:/…").
func routeRoot(mux *http.ServeMux, m *mirror.Mirror) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m.Owns(r.URL.Path) {
			m.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// Addr is the mirror API's listening address.
func (d *Daemon) Addr() string { return d.ln.Addr().String() }

// Run serves until ctx is cancelled, then shuts down gracefully.
func (d *Daemon) Run(ctx context.Context) error {
	if d.cfg.dataDirWhy != "" {
		d.log.Info("shoal mirror listening", "addr", d.Addr(), "data_dir", d.cfg.DataDir, "data_dir_why", d.cfg.dataDirWhy, "default_registry", d.cfg.DefaultRegistry)
	} else {
		d.log.Info("shoal mirror listening", "addr", d.Addr(), "data_dir", d.cfg.DataDir, "default_registry", d.cfg.DefaultRegistry)
	}
	if d.node != nil {
		d.log.Info("p2p node up", "peer_id", d.node.ID(), "addrs", d.node.Addrs())
	} else {
		d.log.Info("p2p disabled")
	}
	errc := make(chan error, 1)
	go func() { errc <- d.srv.Serve(d.ln) }()
	stopOps := d.ops.Start()                          // internal/admin
	stopDoctor := d.startDoctor(ctx, d.mirror.Canary) // doctor.go: off unless doctor.cri_endpoint
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		stopDoctor()
		stopOps()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.ShutdownTimeout)
		err = d.srv.Shutdown(sctx)
		cancel()
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	stopDoctor()
	stopOps()
	// Downloads outlive their clients: let them finish (bounded) before the store closes.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.ShutdownTimeout)
	d.fetch.Shutdown(dctx)
	cancel()
	d.up.CloseIdleConnections() // no download needs them now; else they outlive Run
	if d.mirror != nil {
		d.mirror.CloseIdleConnections()
	}
	if d.push != nil {
		d.push.Close() // drops uploads in progress with their temporary data
	}
	if d.node != nil {
		if cerr := d.node.Close(); cerr != nil {
			d.log.Warn("closing the p2p node", "err", cerr)
		}
	}
	if cerr := d.store.Close(); cerr != nil && err == nil {
		err = cerr
	}
	d.log.Info("shoal stopped")
	return err
}

// writeThroughConfigured reports whether any registry accepts pushes (registries.HOST.write_through).
func writeThroughConfigured(cfg Config) bool {
	for _, rc := range cfg.Upstream.Registries {
		if rc.WriteThrough {
			return true
		}
	}
	return false
}
