package admin

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
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/guard"
	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// DefaultMetricsListen is the metrics endpoint's default address. When it is taken (another
// shoal on the host, another exporter), the daemon runs without metrics and says so; an
// address set explicitly must be free.
const DefaultMetricsListen = "127.0.0.1:9095"

// Node is what the admin API and the metrics read from the P2P node; nil when P2P is disabled.
// A node that can also preheat (p2p.Node) serves `shoal pull --cluster`.
type Node interface {
	Status() p2p.Status
	Ping(ctx context.Context, peerID string) (time.Duration, error)
}

var _ Node = (*p2p.Node)(nil)

// Downloads is the fetch side as the admin API sees it: the downloads in flight, their
// outcome, where the next request for a digest would be answered from, and the recent
// decisions. The admin side never touches a download's state itself.
type Downloads interface {
	// InFlight lists the downloads under way, largest first.
	InFlight() []adminapi.InFlight
	// Count is the number of downloads under way.
	Count() int
	// BoundExceeded counts downloads stopped for breaking their size bound, by reason
	// (BoundReasons).
	BoundExceeded() map[string]int64
	// WaitStored waits until d is committed to the store and returns its size, telling
	// progress (bytes the download has written, at most every 150 ms) when progress is not
	// nil. It checks the store itself, first and whenever the download it follows ends: a
	// blob the store holds returns at once; one neither stored nor in flight is an error
	// (served but not stored).
	WaitStored(ctx context.Context, d digest.Digest, progress func(int64)) (int64, error)
	// WhenStarted calls fn (at most once) when this node's download of d has started (and
	// is advertised to peers): at once if one runs already, else when one starts. stop ends
	// the watch.
	WhenStarted(ctx context.Context, d digest.Digest, fn func()) (stop func())
	// Explain fills Next, Reason, Providers and Last of each entry: where the next request
	// for it (in registry/repo; both "" for a bare digest) would be answered from, and why.
	// Entries already in the store keep a Reason set by the caller.
	Explain(ctx context.Context, registry, repo string, entries []adminapi.ExplainEntry)
	// Recent returns the last n decisions about d (any digest when d is ""), newest first.
	Recent(d digest.Digest, n int) []adminapi.Decision
	// HistorySize is the number of decisions remembered.
	HistorySize() int
}

// GuardCounts are the mirror guard's counters, read at scrape time.
type GuardCounts struct {
	Refused      map[string]int64 // requests refused, by reason
	ConnsRefused int64            // connections closed as soon as accepted
	Conns        int64            // open connections to the mirror
}

// ConsoleOptions configure the web console's listener and the search it offers.
type ConsoleOptions struct {
	Listen        string // HOST:PORT, "" or "off"
	DefaultListen string // when Listen is this and it is taken, run without the console
	Htpasswd      string // off loopback: the users allowed in (the daemon's config refuses it without)
	// ParseHtpasswd reads the htpasswd file's users and bcrypt hashes (the guard's parser).
	ParseHtpasswd func([]byte) (map[string][]byte, error)

	HubSearchURL    string // Docker Hub's search API (validated by the daemon's config)
	SearchCacheTTL  time.Duration
	SearchPerMinute int // per client; 0: no limit
}

// Options is everything the admin side takes from the daemon, all at construction.
type Options struct {
	Log        *slog.Logger // component=admin
	ConsoleLog *slog.Logger // component=console

	Version         string
	DataDir         string
	DefaultRegistry string
	// AdminListen is the admin API's address: "" = unix:<DataDir>/admin.sock, "off", or a
	// loopback HOST:PORT (CheckAdminListen).
	AdminListen string
	// MetricsListen is /metrics' and the probes' HOST:PORT, "" or "off". When it is
	// DefaultMetricsListen and taken, the daemon runs without metrics.
	MetricsListen string
	Console       ConsoleOptions

	Store     *store.Store
	Upstream  *upstream.Client
	Node      Node // nil: P2P disabled
	Downloads Downloads
	Metrics   *Metrics
	// Mirror is the mirror API without its guard (the admin API is the operator's already),
	// with the access log and the metrics like any client's request. Operator pulls,
	// exports and explains go through it, in process.
	Mirror     http.Handler
	MirrorAddr func() string
	// Canary answers whether `shoal doctor`'s nonce was asked of the mirror; an error means
	// the nonce is malformed. nil: no canary record.
	Canary func(nonce string) (adminapi.Canary, error)
	// FileName names a file kept under a digest, FileDigest the reverse (files endpoint);
	// both nil when files are off.
	FileName   func(digest.Digest) string
	FileDigest func(name string) (digest.Digest, bool)
	// Local sums the cluster-local namespace's images and names their digests; nil when
	// pushes are off.
	Local func(context.Context) (*adminapi.LocalImages, map[digest.Digest]bool)
	// GuardAdmin keeps web pages away from the admin API (tcp: it listens on TCP, not on
	// the unix socket); nil serves it as is.
	GuardAdmin func(next http.Handler, tcp bool) http.Handler
}

// ConfigError is a setting the admin side could not use (an unreadable htpasswd file, a bad
// listen address); Key is the setting's key.
type ConfigError struct {
	Key string
	Err error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("config: %s: %v", e.Key, e.Err) }
func (e *ConfigError) Unwrap() error { return e.Err }

// CheckAdminListen refuses an admin address that is malformed or on TCP off loopback.
func CheckAdminListen(spec string) error {
	switch spec {
	case "", "off":
		return nil
	}
	a, err := adminapi.ParseAddr(spec)
	if err != nil {
		return err
	}
	// The admin API has no authentication and can remove, pin and pull content: on TCP
	// it may listen on loopback only (a unix socket's file mode is its access control).
	if a.Network == "tcp" && !guard.ListensOnLoopback(a.Address) {
		return fmt.Errorf("%q is not a loopback address: the admin API has no authentication; use unix:/path or 127.0.0.1:PORT", spec)
	}
	return nil
}

// CheckMetricsListen refuses a metrics address that is not HOST:PORT.
func CheckMetricsListen(spec string) error {
	if spec == "off" || spec == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(spec); err != nil {
		return fmt.Errorf("%q: %w", spec, err)
	}
	return nil
}

// Server holds the operator surfaces: the admin API, the metrics/probe endpoint and the web
// console. Their listeners are opened by New (so a taken address fails the daemon's start)
// and served by Start.
type Server struct {
	log     *slog.Logger
	admin   *admin
	metrics *Metrics

	adminAddr   adminapi.Addr
	adminLn     net.Listener
	metricsLn   net.Listener
	adminSrv    *http.Server
	metricsSrv  *http.Server
	guard       func(http.Handler, bool) http.Handler
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

var _ p2p.Preheater = (*Server)(nil)

// New builds the admin API over the daemon's parts and opens its listeners.
func New(o Options) (*Server, error) {
	s := &Server{log: o.Log, consoleLog: o.ConsoleLog, metrics: o.Metrics, guard: o.GuardAdmin}
	if s.consoleLog == nil {
		s.consoleLog = s.log
	}
	s.admin = &admin{
		opt: o, log: o.Log, store: o.Store, up: o.Upstream, node: o.Node, dl: o.Downloads,
		metrics: o.Metrics, started: time.Now(), ready: s.ready.Load, mirrorAddr: o.MirrorAddr,
		self:   newSelfClient(o.Mirror),
		canary: o.Canary, finder: newSearcher(o.Console, o.Upstream),
		fileName: o.FileName, fileDigest: o.FileDigest, local: o.Local,
	}
	if err := s.listen(o); err != nil {
		return nil, err
	}
	return s, nil
}

// Preheat warms this node's cache with images a cluster pull asked for (p2p.Preheater).
func (s *Server) Preheat(ctx context.Context, images []string, plat string, progress func(int64), started func()) error {
	return s.admin.Preheat(ctx, images, plat, progress, started)
}

func (s *Server) listen(o Options) error {
	if o.AdminListen != "off" {
		spec := o.AdminListen
		if spec == "" {
			spec = "unix:" + filepath.Join(o.DataDir, adminapi.DefaultSocketName)
		}
		a, err := adminapi.ParseAddr(spec)
		if err != nil {
			return &ConfigError{Key: "admin_listen", Err: err}
		}
		if err := CheckAdminListen(spec); err != nil { // never off loopback, whoever built the Options
			return &ConfigError{Key: "admin_listen", Err: err}
		}
		ln, err := adminapi.Listen(a)
		if err != nil {
			return fmt.Errorf("admin listener %s: %w", a, err)
		}
		if a.Network == "tcp" {
			a.Address = ln.Addr().String()
		}
		s.adminAddr, s.adminLn = a, ln
		s.admin.addr = a.String()
	}
	if o.MetricsListen != "off" && o.MetricsListen != "" {
		ln, err := net.Listen("tcp", o.MetricsListen)
		switch {
		case err == nil:
			s.metricsLn, s.metricsAddr = ln, ln.Addr().String()
			s.admin.metricsAddr = s.metricsAddr
		case o.MetricsListen == DefaultMetricsListen && errors.Is(err, syscall.EADDRINUSE):
			s.log.Warn("metrics address in use: running without /metrics, /healthz and /readyz (set --metrics-listen)", "addr", o.MetricsListen)
		default:
			s.close()
			return fmt.Errorf("metrics listener: %w", err)
		}
	}
	if err := s.listenConsole(o.Console); err != nil {
		s.close()
		return err
	}
	return nil
}

// AdminAddr is the admin API's address ("" when off), as `shoal --admin` takes it.
func (s *Server) AdminAddr() string {
	if s == nil || s.adminLn == nil {
		return ""
	}
	return s.adminAddr.String()
}

// MetricsAddr is the metrics endpoint's address ("" when off).
func (s *Server) MetricsAddr() string {
	if s == nil {
		return ""
	}
	return s.metricsAddr
}

// ConsoleAddr is the web console's address ("" when off).
func (s *Server) ConsoleAddr() string {
	if s == nil {
		return ""
	}
	return s.consoleAddr
}

// Start serves the admin API, metrics and console; the returned stop ends admin requests,
// closes the servers and removes the socket. It may be called more than once.
func (s *Server) Start() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	if s.adminLn != nil {
		h := s.admin.routes()
		if s.guard != nil {
			h = s.guard(h, s.adminAddr.Network == "tcp")
		}
		s.adminSrv = &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 30 * time.Second,
			BaseContext:       func(net.Listener) context.Context { return ctx },
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		}
		s.serve(s.adminSrv, s.adminLn)
		s.log.Info("admin API listening", "addr", s.adminAddr.String())
	}
	if s.metricsLn != nil {
		s.metricsSrv = &http.Server{
			Handler:           s.metrics.routes(s.ready.Load),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		}
		s.serve(s.metricsSrv, s.metricsLn)
		s.log.Info("metrics listening", "addr", s.metricsAddr)
	}
	if s.consoleLn != nil {
		s.serve(s.consoleSrv, s.consoleLn)
		s.log.Info("web console listening", "url", "http://"+s.consoleAddr+"/")
	}
	s.ready.Store(true)
	return func() { s.stopOnce.Do(s.stop) }
}

func (s *Server) serve(srv *http.Server, ln net.Listener) {
	s.serveGroup.Add(1)
	go func() {
		defer s.serveGroup.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Warn("ops listener stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

func (s *Server) stop() {
	s.ready.Store(false)
	if s.cancel != nil {
		s.cancel()
	}
	for _, srv := range []*http.Server{s.adminSrv, s.metricsSrv, s.consoleSrv} {
		if srv == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if srv.Shutdown(ctx) != nil {
			_ = srv.Close()
		}
		cancel()
	}
	s.close()
	s.serveGroup.Wait()
	if s.admin != nil && s.admin.finder != nil {
		// Docker Hub's search: else its keep-alive connections outlive the server.
		s.admin.finder.hc.CloseIdleConnections()
	}
}

// close releases listeners that were opened but are not (or no longer) served.
func (s *Server) close() {
	if s.adminLn != nil {
		_ = s.adminLn.Close()
		if s.adminAddr.Network == "unix" {
			_ = os.Remove(s.adminAddr.Address)
		}
	}
	if s.metricsLn != nil {
		_ = s.metricsLn.Close()
	}
	if s.consoleLn != nil {
		_ = s.consoleLn.Close()
	}
}

// admin serves the admin API.
type admin struct {
	opt     Options
	log     *slog.Logger
	store   *store.Store
	up      *upstream.Client
	node    Node // nil: P2P disabled
	dl      Downloads
	metrics *Metrics
	self    *selfClient
	canary  func(nonce string) (adminapi.Canary, error) // the mirror's record of `shoal doctor`'s nonces
	finder  *searcher                                   // /v1/search (admin_search.go)
	started time.Time
	ready   func() bool

	mirrorAddr func() string
	// fileName names a file kept under a digest (the files endpoint); nil when files are off.
	fileName func(digest.Digest) string
	// local sums the cluster-local namespace's images (Options.Local); nil: pushes off.
	local      func(context.Context) (*adminapi.LocalImages, map[digest.Digest]bool)
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

// Error returns an error the admin API answers with status and code (adminapi.Code…), for
// the handlers that wrap it (the guard).
func Error(status int, code string, err error) error {
	return &apiError{status: status, code: code, err: err}
}

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
			WriteError(w, &apiError{status: http.StatusMethodNotAllowed, code: adminapi.CodeBadRequest, err: fmt.Errorf("%s %s: use %s", r.Method, r.URL.Path, method)})
			return
		}
		v, err := fn(r)
		if err != nil {
			a.log.Debug("admin request failed", "path", r.URL.Path, "err", err)
			WriteError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	})
}

// WriteError answers with err as the admin API does: {"error": …, "code": …} with the status
// of an Error, 404 for content the store lacks, 503 for a cancelled request, else 500.
func WriteError(w http.ResponseWriter, err error) {
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
		WriteError(w, notFound("no such admin API path: %s", r.URL.Path))
	})
	return mux
}

// ---- status, peers, history ----

func (a *admin) status(r *http.Request) (any, error) {
	st := a.store.Stats()
	s := adminapi.Status{
		Version:         a.opt.Version,
		PID:             os.Getpid(),
		StartedAt:       a.started.UTC(),
		UptimeSeconds:   time.Since(a.started).Seconds(),
		Listen:          a.mirrorAddr(),
		Admin:           a.addr,
		Metrics:         a.metricsAddr,
		DataDir:         a.opt.DataDir,
		DefaultRegistry: a.opt.DefaultRegistry,
		Ready:           a.ready(),
		Store: adminapi.StoreStatus{BytesUsed: st.BytesUsed, MaxSize: st.MaxSize, Items: st.Blobs, Hits: st.Hits,
			Misses: st.Misses, VerifyFailures: st.VerifyFailures, Evictions: st.Evictions},
		InFlight:       a.dl.Count(),
		HistoryEntries: a.dl.HistorySize(),
	}
	if a.local != nil {
		s.Local, _ = a.local(r.Context())
	}
	s.Sources = a.metrics.sources()
	var hits, all int64
	for _, sc := range s.Sources {
		all += sc.Requests
		if sc.Source == "store" || sc.Source == "inflight" || sc.Source == "peer" || sc.Source == "designated" { // answered without the upstream
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
			InboundHandshakeFailures: ns.InboundHandshakeFailures, LastInboundFailure: ns.LastInboundFailure,
			BadRequests: ns.BadRequests, Direct: directStatus(ns.Direct)}
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

func directStatus(d p2p.DirectStatus) adminapi.DirectStatus {
	return adminapi.DirectStatus{Port: d.Port, Open: d.Open, Idle: d.Idle, Accepted: d.Accepted, Refused: d.Refused,
		Served: d.Served, Fetched: d.Fetched, Dials: d.Dials, DialFailures: d.DialFailures, Fallbacks: d.Streamed}
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
	return a.dl.Recent(d, limit), nil
}

// doctorCanary is GET /v1/doctor/canary?nonce=X.
func (a *admin) doctorCanary(r *http.Request) (any, error) {
	nonce := r.URL.Query().Get("nonce")
	if a.canary == nil {
		return adminapi.Canary{Nonce: nonce}, nil
	}
	c, err := a.canary(nonce)
	if err != nil {
		return nil, badRequest("nonce: want a tag such as 0123abcd")
	}
	return c, nil
}
