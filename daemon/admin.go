package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/fetch"
	"github.com/shoal-mirror/shoal/internal/guard"
	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// DefaultMetricsListen is the metrics endpoint's default address. When it is taken (another
// shoal on the host, another exporter), the daemon runs without metrics and says so; an
// address set explicitly must be free.
const DefaultMetricsListen = "127.0.0.1:9095"

// p2pNode is what the admin API reads from the P2P node; nil when P2P is disabled.
type p2pNode interface {
	Status() p2p.Status
	Ping(ctx context.Context, peerID string) (time.Duration, error)
	FindProviders(ctx context.Context, d digest.Digest, max int) ([]p2p.Peer, error)
}

var _ p2pNode = (*p2p.Node)(nil)

// ops holds the operator surfaces: the admin API and the metrics/probe endpoint. Both are
// opened in New (so a taken address fails the start) and served by Run.
type ops struct {
	log     *slog.Logger
	admin   *admin
	metrics *metrics

	adminAddr   adminapi.Addr
	adminLn     net.Listener
	metricsLn   net.Listener
	adminSrv    *http.Server
	metricsSrv  *http.Server
	cancel      context.CancelFunc // ends admin requests (pulls, exports) at shutdown
	ready       atomic.Bool        // mirror and ops listeners serving, store open
	stopOnce    sync.Once
	serveGroup  sync.WaitGroup
	metricsAddr string

	consoleLog  *slog.Logger
	consoleLn   net.Listener // the web console (console.go); nil when off
	consoleSrv  *http.Server
	consoleAddr string
}

func (c *Config) validateOps() error {
	switch c.AdminListen {
	case "", "off":
	default:
		a, err := adminapi.ParseAddr(c.AdminListen)
		if err != nil {
			return &ConfigError{Key: "admin_listen", Err: err}
		}
		// The admin API has no authentication and can remove, pin and pull content: on TCP
		// it may listen on loopback only (a unix socket's file mode is its access control).
		if a.Network == "tcp" && !guard.ListensOnLoopback(a.Address) {
			return &ConfigError{Key: "admin_listen", Err: fmt.Errorf("%q is not a loopback address: the admin API has no authentication; use unix:/path or 127.0.0.1:PORT", c.AdminListen)}
		}
	}
	if c.MetricsListen != "off" && c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return &ConfigError{Key: "metrics_listen", Err: fmt.Errorf("%q: %w", c.MetricsListen, err)}
		}
	}
	return nil
}

// openOps builds the metrics and the admin API over the daemon's parts and opens their
// listeners. m is the mirror (operator pulls and exports go through it, in process), fe where
// its content comes from (downloads in flight, decisions; its P2P lookups are timed for the
// metrics).
func (d *Daemon) openOps(m http.Handler, fe *fetch.Fetcher) error {
	o := &ops{log: d.log.With("component", "admin"), consoleLog: d.log.With("component", "console")}
	var node p2pNode
	if d.node != nil {
		node = d.node
	}
	o.metrics = newMetrics(d.cfg.Version, &stateCollector{store: d.store, up: d.up, node: node, spool: fe, guard: d.guard})
	if fe != nil && fe.Node() != nil {
		fe.SetNode(&timedPeerNode{PeerNode: fe.Node(), m: o.metrics})
	}
	o.admin = &admin{
		cfg: d.cfg, log: o.log, store: d.store, up: d.up, node: node, fetch: fe,
		metrics: o.metrics, started: time.Now(), ready: o.ready.Load, mirrorAddr: d.Addr,
		// The mirror without the guard (the admin API is the operator's already), with the
		// access log and metrics like any client's request.
		self:   newSelfClient(guard.AccessLog(d.log.With("component", "mirror"), hdrSource, m, o.observeRequest)),
		canary: d.canary, finder: newSearcher(d.cfg.Console, d.up),
	}
	if err := o.listen(d.cfg); err != nil {
		return err
	}
	if d.node != nil {
		d.node.SetPreheater(o.admin) // peers' cluster pulls warm through the admin's pull
	}
	d.ops = o
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

func (o *ops) listen(cfg Config) error {
	if cfg.AdminListen != "off" {
		spec := cfg.AdminListen
		if spec == "" {
			spec = "unix:" + filepath.Join(cfg.DataDir, adminapi.DefaultSocketName)
		}
		a, err := adminapi.ParseAddr(spec)
		if err != nil {
			return &ConfigError{Key: "admin_listen", Err: err}
		}
		ln, err := adminapi.Listen(a)
		if err != nil {
			return fmt.Errorf("admin listener %s: %w", a, err)
		}
		if a.Network == "tcp" {
			a.Address = ln.Addr().String()
		}
		o.adminAddr, o.adminLn = a, ln
		o.admin.addr = a.String()
	}
	if cfg.MetricsListen != "off" && cfg.MetricsListen != "" {
		ln, err := net.Listen("tcp", cfg.MetricsListen)
		switch {
		case err == nil:
			o.metricsLn, o.metricsAddr = ln, ln.Addr().String()
			o.admin.metricsAddr = o.metricsAddr
		case cfg.MetricsListen == DefaultMetricsListen && errors.Is(err, syscall.EADDRINUSE):
			o.log.Warn("metrics address in use: running without /metrics, /healthz and /readyz (set --metrics-listen)", "addr", cfg.MetricsListen)
		default:
			o.close()
			return fmt.Errorf("metrics listener: %w", err)
		}
	}
	if err := o.listenConsole(cfg); err != nil {
		o.close()
		return err
	}
	return nil
}

// AdminAddr is the admin API's address ("" when off), as `shoal --admin` takes it.
func (d *Daemon) AdminAddr() string {
	if d.ops == nil || d.ops.adminLn == nil {
		return ""
	}
	return d.ops.adminAddr.String()
}

// MetricsAddr is the metrics endpoint's address ("" when off).
func (d *Daemon) MetricsAddr() string {
	if d.ops == nil {
		return ""
	}
	return d.ops.metricsAddr
}

// observeRequest is the access log's hook for the metrics.
func (o *ops) observeRequest(rd guard.Served) { o.metrics.observeRequest(rd) }

// start serves the admin API and metrics; the returned stop ends admin requests, closes both
// servers and removes the socket. It may be called more than once.
func (o *ops) start() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	o.cancel = cancel
	if o.adminLn != nil {
		o.adminSrv = &http.Server{
			Handler:           guard.Admin(o.admin.routes(), o.adminAddr.Network == "tcp"),
			ReadHeaderTimeout: 30 * time.Second,
			BaseContext:       func(net.Listener) context.Context { return ctx },
			ErrorLog:          slog.NewLogLogger(o.log.Handler(), slog.LevelDebug),
		}
		o.serve(o.adminSrv, o.adminLn)
		o.log.Info("admin API listening", "addr", o.adminAddr.String())
	}
	if o.metricsLn != nil {
		o.metricsSrv = &http.Server{
			Handler:           o.metrics.routes(o.ready.Load),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(o.log.Handler(), slog.LevelDebug),
		}
		o.serve(o.metricsSrv, o.metricsLn)
		o.log.Info("metrics listening", "addr", o.metricsAddr)
	}
	if o.consoleLn != nil {
		o.serve(o.consoleSrv, o.consoleLn)
		o.log.Info("web console listening", "url", "http://"+o.consoleAddr+"/")
	}
	o.ready.Store(true)
	return func() { o.stopOnce.Do(o.stop) }
}

func (o *ops) serve(srv *http.Server, ln net.Listener) {
	o.serveGroup.Add(1)
	go func() {
		defer o.serveGroup.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			o.log.Warn("ops listener stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

func (o *ops) stop() {
	o.ready.Store(false)
	if o.cancel != nil {
		o.cancel()
	}
	for _, srv := range []*http.Server{o.adminSrv, o.metricsSrv, o.consoleSrv} {
		if srv == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if srv.Shutdown(ctx) != nil {
			_ = srv.Close()
		}
		cancel()
	}
	o.close()
	o.serveGroup.Wait()
}

// close releases listeners that were opened but are not (or no longer) served.
func (o *ops) close() {
	if o.adminLn != nil {
		_ = o.adminLn.Close()
		if o.adminAddr.Network == "unix" {
			_ = os.Remove(o.adminAddr.Address)
		}
	}
	if o.metricsLn != nil {
		_ = o.metricsLn.Close()
	}
	if o.consoleLn != nil {
		_ = o.consoleLn.Close()
	}
}

// admin serves the admin API.
type admin struct {
	cfg     Config
	log     *slog.Logger
	store   *store.Store
	up      *upstream.Client
	node    p2pNode // nil: P2P disabled
	fetch   fetcher // downloads in flight, decisions, explain's predictions (internal/fetch)
	metrics *metrics
	self    *selfClient
	canary  *canaryLog // the mirror's record of `shoal doctor`'s nonces (canary.go)
	finder  *searcher  // /v1/search (admin_search.go)
	started time.Time
	ready   func() bool

	mirrorAddr func() string
	// local sums the cluster-local namespace's images (push_cluster.go); nil: pushes off.
	local func(context.Context) (*adminapi.LocalImages, map[digest.Digest]bool)
	// fileName names a file kept under a digest (files.go); nil when files are off.
	fileName   func(digest.Digest) string
	fileDigest func(name string) (digest.Digest, bool)

	addr, metricsAddr string
}

// apiError is an error with the status and code the admin API answers with.
type apiError struct {
	status int
	code   string
	err    error
}

func (e *apiError) Error() string { return e.err.Error() }
func (e *apiError) Unwrap() error { return e.err }

func badRequest(format string, a ...any) error {
	return &apiError{status: http.StatusBadRequest, code: adminapi.CodeBadRequest, err: fmt.Errorf(format, a...)}
}

func notFound(format string, a ...any) error {
	return &apiError{status: http.StatusNotFound, code: adminapi.CodeNotFound, err: fmt.Errorf(format, a...)}
}

// handle adapts a handler that returns (value, error) to JSON.
func (a *admin) handle(method string, fn func(r *http.Request) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			w.Header().Set("Allow", method)
			writeAPIError(w, &apiError{status: http.StatusMethodNotAllowed, code: adminapi.CodeBadRequest, err: fmt.Errorf("%s %s: use %s", r.Method, r.URL.Path, method)})
			return
		}
		v, err := fn(r)
		if err != nil {
			a.log.Debug("admin request failed", "path", r.URL.Path, "err", err)
			writeAPIError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	})
}

func writeAPIError(w http.ResponseWriter, err error) {
	status, code := http.StatusInternalServerError, adminapi.CodeInternal
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		status, code = ae.status, ae.code
	case errors.Is(err, store.ErrNotFound):
		status, code = http.StatusNotFound, adminapi.CodeNotFound
	case errors.Is(err, context.Canceled):
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(adminapi.ErrorBody{Error: err.Error(), Code: code})
}

func (a *admin) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/status", a.handle(http.MethodGet, a.status))
	mux.Handle("/v1/peers", a.handle(http.MethodGet, a.peers))
	mux.Handle("/v1/peers/ping", a.handle(http.MethodPost, a.ping))
	mux.Handle("/v1/cache", a.handle(http.MethodGet, a.cacheList))
	mux.Handle("/v1/cache/rm", a.handle(http.MethodPost, a.cacheRemove))
	mux.Handle("/v1/cache/gc", a.handle(http.MethodPost, a.cacheGC))
	mux.Handle("/v1/cache/verify", a.handle(http.MethodPost, a.cacheVerify))
	mux.Handle("/v1/cache/pin", a.handle(http.MethodPost, func(r *http.Request) (any, error) { return a.cachePin(r, true) }))
	mux.Handle("/v1/cache/unpin", a.handle(http.MethodPost, func(r *http.Request) (any, error) { return a.cachePin(r, false) }))
	mux.Handle("/v1/explain", a.handle(http.MethodGet, a.explain))
	mux.Handle("/v1/history", a.handle(http.MethodGet, a.history))
	mux.Handle("/v1/doctor/canary", a.handle(http.MethodGet, a.doctorCanary))
	mux.Handle("/v1/timeline", a.handle(http.MethodGet, a.timeline))
	mux.Handle("/v1/inflight", a.handle(http.MethodGet, a.inflightList))
	mux.Handle("/v1/search", a.handle(http.MethodGet, a.search))
	mux.Handle("/v1/tags", a.handle(http.MethodGet, a.tags))
	mux.HandleFunc("/v1/pull", a.pull)
	mux.HandleFunc("/v1/export", a.export)
	mux.HandleFunc("/_shoal/export", a.export)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeAPIError(w, notFound("no such admin API path: %s", r.URL.Path))
	})
	return mux
}

// ---- status, peers, history ----

func (a *admin) status(r *http.Request) (any, error) {
	st := a.store.Stats()
	s := adminapi.Status{
		Version:         a.cfg.Version,
		PID:             os.Getpid(),
		StartedAt:       a.started.UTC(),
		UptimeSeconds:   time.Since(a.started).Seconds(),
		Listen:          a.mirrorAddr(),
		Admin:           a.addr,
		Metrics:         a.metricsAddr,
		DataDir:         a.cfg.DataDir,
		DefaultRegistry: a.cfg.DefaultRegistry,
		Ready:           a.ready(),
		Store: adminapi.StoreStatus{BytesUsed: st.BytesUsed, MaxSize: st.MaxSize, Items: st.Blobs, Hits: st.Hits,
			Misses: st.Misses, VerifyFailures: st.VerifyFailures, Evictions: st.Evictions},
		InFlight:       a.fetch.Count(),
		HistoryEntries: a.fetch.HistorySize(),
	}
	if a.local != nil {
		s.Local, _ = a.local(r.Context())
	}
	s.Sources = a.metrics.sources()
	var hits, all int64
	for _, sc := range s.Sources {
		all += sc.Requests
		if k := fetch.ParseSource(sc.Source).Kind; k != fetch.Upstream && k != fetch.Passthrough && k != fetch.Unknown {
			hits += sc.Requests
		}
	}
	if all > 0 {
		s.HitRatio = float64(hits) / float64(all)
	}
	for _, u := range a.up.Stats() {
		s.Upstreams = append(s.Upstreams, upstreamStatus(u))
	}
	if a.node != nil {
		ns := a.node.Status()
		p := &adminapi.P2PStatus{PeerID: ns.ID, Addrs: ns.Addrs, RoutingTableSize: ns.RoutingTableSize, Provided: ns.Provided,
			Lookups: ns.Lookups, LookupHits: ns.LookupHits, LookupP50Ms: ms(ns.LookupP50), LookupP99Ms: ms(ns.LookupP99), Bans: ns.Bans, Redirected: ns.Redirected,
			SwarmKey: ns.SwarmKey, BootstrapError: ns.BootstrapError,
			InboundHandshakeFailures: ns.InboundHandshakeFailures, LastInboundFailure: ns.LastInboundFailure}
		if ns.Lone {
			p.NotListening = p2p.LoneNote
		}
		if !ns.LastInboundFailureAt.IsZero() {
			at := ns.LastInboundFailureAt.UTC()
			p.LastInboundFailureAt = &at
		}
		for _, ps := range ns.Peers {
			if ps.Banned {
				p.Banned++
			} else if len(ps.Addrs) > 0 {
				p.Peers++
			}
		}
		s.P2P = p
	}
	return s, nil
}

func upstreamStatus(u upstream.RegistryStats) adminapi.UpstreamStatus {
	us := adminapi.UpstreamStatus{Registry: u.Registry, Responses: map[string]int64{}, TransportErrors: u.TransportErrors,
		TokensFetched: u.TokensFetched, TokenErrors: u.TokenErrors, LastErrorText: u.LastErrorText}
	for code, n := range u.Responses {
		us.Responses[strconv.Itoa(code)] = n
	}
	if !u.LastOK.IsZero() {
		t := u.LastOK.UTC()
		us.LastOK = &t
	}
	if !u.LastError.IsZero() {
		t := u.LastError.UTC()
		us.LastError = &t
	}
	us.Healthy = u.LastError.IsZero() || u.LastOK.After(u.LastError)
	if rl := u.RateLimit; rl != nil {
		us.RateLimit = &adminapi.RateLimit{Limit: rl.Limit, Remaining: rl.Remaining, WindowSeconds: int64(rl.Window / time.Second), Seen: rl.Seen.UTC()}
	}
	return us
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (a *admin) peers(r *http.Request) (any, error) {
	if a.node == nil {
		return adminapi.Peers{Enabled: false, Peers: []adminapi.Peer{}}, nil
	}
	ns := a.node.Status()
	out := adminapi.Peers{Enabled: true, Self: ns.ID, Peers: []adminapi.Peer{}}
	for _, ps := range ns.Peers {
		p := adminapi.Peer{ID: ps.ID, Addrs: ps.Addrs, LatencyMs: ms(ps.Latency), BytesIn: ps.BytesIn, BytesOut: ps.BytesOut,
			Failures: ps.Failures, Banned: ps.Banned}
		if p.Addrs == nil {
			p.Addrs = []string{}
		}
		if ps.Banned {
			t := ps.BannedUntil.UTC()
			p.BannedUntil = &t
		}
		out.Peers = append(out.Peers, p)
	}
	return out, nil
}

func (a *admin) ping(r *http.Request) (any, error) {
	id := r.URL.Query().Get("peer")
	if id == "" {
		return nil, badRequest("ping: name a peer ID")
	}
	if a.node == nil {
		return nil, &apiError{status: http.StatusConflict, code: adminapi.CodeDisabled, err: errors.New("P2P disabled on this daemon")}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	rtt, err := a.node.Ping(ctx, id)
	if err != nil {
		return nil, &apiError{status: http.StatusBadGateway, code: adminapi.CodeInternal, err: err}
	}
	return adminapi.Ping{Peer: id, RTTMs: ms(rtt)}, nil
}

func (a *admin) history(r *http.Request) (any, error) {
	q := r.URL.Query()
	var d digest.Digest
	if s := q.Get("digest"); s != "" {
		var err error
		if d, err = digest.Parse(s); err != nil {
			return nil, badRequest("history: %q is not a digest", s)
		}
	}
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, badRequest("history: limit %q is not a number", s)
		}
		limit = n
	}
	return a.fetch.Recent(d, limit), nil
}

// fetcher is what the admin API asks of where content comes from (fetch.Fetcher).
type fetcher interface {
	InFlight() []adminapi.InFlight
	Count() int
	BoundExceeded() map[string]int64
	WaitStored(ctx context.Context, d digest.Digest, progress func(int64)) (int64, error)
	WhenStarted(ctx context.Context, d digest.Digest, fn func()) (stop func())
	Explain(ctx context.Context, registry, repo string, entries []adminapi.ExplainEntry)
	Recent(d digest.Digest, n int) []adminapi.Decision
	HistorySize() int
}

var _ fetcher = (*fetch.Fetcher)(nil)

// sortedKeys returns a map's keys in order, for stable output.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
