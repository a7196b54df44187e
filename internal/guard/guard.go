package guard

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"

	"github.com/shoal-mirror/shoal/files"
	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/internal/ocierr"
)

// Config is the mirror listener's exposure and abuse controls: who may connect, what
// they may pull, how fast, and how long a slow or stalled client may hold a connection.
// Empty lists and zero rates switch a control off.
type Config struct {
	// AllowCIDR, if not empty, lists the only client networks served; DenyCIDR lists
	// networks refused (deny wins). A bare address means just that address. The client is
	// the TCP peer: X-Forwarded-For is never trusted.
	AllowCIDR []string
	DenyCIDR  []string
	// AllowRepo, if not empty, lists the only repositories served; DenyRepo lists
	// repositories refused (deny wins). Patterns name REGISTRY/REPO after routing and
	// normalisation ("docker.io/library/*", "ghcr.io/myorg/*"); * matches any run of
	// characters, slashes included, ? one character.
	AllowRepo []string
	DenyRepo  []string
	// RateLimit is each client's sustained request rate (requests per second) and RateBurst
	// the bucket size; a client is an IPv4 address or an IPv6 /64. 0 = no limit; a zero
	// burst becomes max(10, 2×RateLimit).
	RateLimit float64
	RateBurst int
	// MaxConcurrent bounds a client's requests in progress under /v2/ (0 = no bound).
	MaxConcurrent int
	// MaxConnsPerClient bounds a client's open connections; one more is closed as soon as
	// it is accepted (0 = no bound). See DefaultMaxConnsPerClient.
	MaxConnsPerClient int
	// Htpasswd is an htpasswd file with bcrypt hashes; when set, clients outside
	// AuthExemptCIDR (default: loopback) must authenticate with HTTP Basic.
	Htpasswd       string
	AuthExemptCIDR []string
	// TLSCert and TLSKey serve the mirror API over TLS (both or neither; re-read on reload).
	TLSCert, TLSKey string
	// AllowInsecureListen silences the warning for a non-loopback listener without TLS.
	AllowInsecureListen bool
	// ReadHeaderTimeout bounds reading a request's headers (slowloris); IdleTimeout a
	// keep-alive connection's wait for the next request; WriteTimeout how long a single
	// write to a client may block (a client that stops reading); RequestTimeout a whole
	// request (0 = no bound: a large layer on a slow link takes what it takes).
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	WriteTimeout      time.Duration
	RequestTimeout    time.Duration
	// MaxHeaderBytes bounds a request's header block; MaxURILength its request target.
	MaxHeaderBytes int
	MaxURILength   int
}

// DefaultConfig is the guard with every access control off and the connection limits on.
func DefaultConfig() Config {
	return Config{
		MaxConcurrent:     128,
		MaxConnsPerClient: DefaultMaxConnsPerClient,
		AuthExemptCIDR:    []string{"127.0.0.0/8", "::1/128"},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		WriteTimeout:      2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		MaxURILength:      4096,
	}
}

// Validate checks the guard's settings and the files they name (htpasswd, TLS pair).
func (c Config) Validate() error {
	_, err := compile(c, slog.New(slog.DiscardHandler))
	return err
}

// ConfigError names the setting that is wrong (its YAML key, security.…). It reads as the
// daemon's configuration errors do; the daemon turns it into one of those.
type ConfigError struct {
	Key string
	Err error
}

// Error is one line, whatever the wrapped error: several problems are joined with "; ".
func (e *ConfigError) Error() string {
	return strings.ReplaceAll(fmt.Sprintf("config: %s: %v", e.Key, e.Err), "\n", "; ")
}
func (e *ConfigError) Unwrap() error { return e.Err }

// policy is the reloadable part of the guard, compiled.
type policy struct {
	allowNets, denyNets []netip.Prefix
	authExempt          []netip.Prefix
	allowRepo, denyRepo []*regexp.Regexp
	rate                rate.Limit
	burst               int
	maxConcurrent       int
	maxConns            int
	users               map[string][]byte // htpasswd: user → bcrypt hash; nil = no auth
	dummy               []byte            // bcrypt hash at the users' cost, for unknown names
	cert                *tls.Certificate
	requestTimeout      time.Duration
	writeTimeout        time.Duration
	maxURI              int
}

// Guard wraps the mirror's handler with the access controls and limits, and the listener
// with TLS. Its policy can be swapped at run time (SIGHUP); per-client state survives that.
type Guard struct {
	log    *slog.Logger
	cfg    Config // as started: the server's limits (Configure)
	route  func(*http.Request) (registry, repo string, ok bool)
	policy atomic.Pointer[policy]
	tlsOn  bool // fixed at start: a listener cannot switch to TLS

	mu        sync.Mutex
	clients   map[netip.Prefix]*clientState
	lastSweep time.Time

	authOK  sync.Map      // user → sha256(user:password) of the last password that matched
	hashing chan struct{} // bounds concurrent bcrypt comparisons (each costs ~50 ms of CPU)

	refused [len(refusalReasons)]atomic.Int64 // requests refused, by reason
	conns   *connCap                          // open connections per client (conncap.go)
}

// Why the guard refused a request (shoal_guard_refused_total's reason label): a 403 or a 429
// alone does not tell an address list from a repository policy, or a rate from a bound.
const (
	refusedAddress = iota
	refusedURI
	refusedRate
	refusedAuth
	refusedRepository
	refusedConcurrency
)

var refusalReasons = [...]string{"address", "uri_too_long", "rate", "auth", "repository", "concurrency"}

// refuse answers err and counts the refusal.
func (g *Guard) refuse(w http.ResponseWriter, r *http.Request, reason int, err *ocierr.Error) {
	g.refused[reason].Add(1)
	ocierr.Write(w, r, g.log, err)
}

// Refusals returns the refusal counts by reason (shoal_guard_refused_total's reason label):
// every reason is present, refused or not.
func (g *Guard) Refusals() map[string]int64 {
	m := make(map[string]int64, len(refusalReasons))
	for i, name := range refusalReasons {
		m[name] = g.refused[i].Load()
	}
	return m
}

// clientState is one client's token bucket and requests in flight.
type clientState struct {
	lim      atomic.Pointer[rate.Limiter]
	inflight atomic.Int32
	seen     atomic.Int64 // unix nanoseconds of the last request
}

// Options are what the guard needs from the rest of the daemon, given at construction.
type Options struct {
	// Listen is the mirror's listen address: beyond loopback without TLS, New warns.
	Listen string
	// Route names the registry and repository a mirror API request is for, as routing and
	// normalisation see them (ok false: it names none), for the repository patterns. File
	// requests (/hf/…, /github.com/…) are named by package files.
	Route func(*http.Request) (registry, repo string, ok bool)
	// SendFrom, if set, sends what net/http hands an accepted connection's ReadFrom (a file,
	// a download in flight) its own way, and reports whether it did (false: nothing was
	// sent, the connection copies).
	SendFrom func(c net.Conn, src io.Reader) (n int64, handled bool, err error)
}

// New compiles cfg and warns about exposure: a listener beyond loopback without TLS, a secret
// file anyone may read. Errors are *ConfigError naming the key.
func New(cfg Config, log *slog.Logger, opt Options) (*Guard, error) {
	p, err := compile(cfg, log)
	if err != nil {
		return nil, err
	}
	g := &Guard{log: log, cfg: cfg, route: opt.Route, tlsOn: p.cert != nil,
		clients: map[netip.Prefix]*clientState{}, hashing: make(chan struct{}, max(1, runtime.GOMAXPROCS(0)))}
	g.policy.Store(p)
	g.conns = newConnCap(g, opt.SendFrom)
	if !ListensOnLoopback(opt.Listen) && !g.tlsOn && !cfg.AllowInsecureListen {
		log.Warn("the mirror API listens beyond loopback without TLS: clients and credentials travel in clear text; set tls_cert/tls_key, or allow_insecure_listen to silence this",
			"listen", opt.Listen, "htpasswd", p.users != nil, "allow_cidr", len(p.allowNets))
	}
	return g, nil
}

// compile validates the configuration and reads the files it names. Errors name the
// YAML key.
func compile(cfg Config, log *slog.Logger) (*policy, error) {
	p := &policy{maxConcurrent: cfg.MaxConcurrent, maxConns: cfg.MaxConnsPerClient, requestTimeout: cfg.RequestTimeout,
		writeTimeout: cfg.WriteTimeout, maxURI: cfg.MaxURILength}
	var err error
	if p.allowNets, err = parseNets("security.allow_cidr", cfg.AllowCIDR); err != nil {
		return nil, err
	}
	if p.denyNets, err = parseNets("security.deny_cidr", cfg.DenyCIDR); err != nil {
		return nil, err
	}
	if p.authExempt, err = parseNets("security.auth_exempt_cidr", cfg.AuthExemptCIDR); err != nil {
		return nil, err
	}
	if p.allowRepo, err = compileRepoPatterns("security.allow_repo", cfg.AllowRepo); err != nil {
		return nil, err
	}
	if p.denyRepo, err = compileRepoPatterns("security.deny_repo", cfg.DenyRepo); err != nil {
		return nil, err
	}
	switch {
	case cfg.RateLimit < 0 || math.IsNaN(cfg.RateLimit) || math.IsInf(cfg.RateLimit, 0):
		return nil, &ConfigError{Key: "security.rate_limit", Err: errors.New("must be a non-negative number of requests per second")}
	case cfg.RateBurst < 0:
		return nil, &ConfigError{Key: "security.rate_burst", Err: errors.New("must not be negative")}
	case cfg.MaxConcurrent < 0:
		return nil, &ConfigError{Key: "security.max_concurrent_per_client", Err: errors.New("must not be negative")}
	case cfg.MaxConnsPerClient < 0:
		return nil, &ConfigError{Key: "security.max_conns_per_client", Err: errors.New("must not be negative")}
	case cfg.ReadHeaderTimeout < 0 || cfg.IdleTimeout < 0 || cfg.WriteTimeout < 0 || cfg.RequestTimeout < 0:
		return nil, &ConfigError{Key: "security", Err: errors.New("timeouts must not be negative")}
	case cfg.MaxHeaderBytes < 0 || cfg.MaxURILength < 0:
		return nil, &ConfigError{Key: "security", Err: errors.New("size limits must not be negative")}
	}
	if cfg.RateLimit > 0 {
		p.rate = rate.Limit(cfg.RateLimit)
		p.burst = cfg.RateBurst
		if p.burst == 0 {
			p.burst = max(10, int(math.Ceil(2*cfg.RateLimit)))
		}
	}
	if cfg.Htpasswd != "" {
		if err := CheckSecretFile(log, "security.htpasswd", cfg.Htpasswd); err != nil {
			return nil, err
		}
		b, err := os.ReadFile(cfg.Htpasswd)
		if err != nil {
			return nil, &ConfigError{Key: "security.htpasswd", Err: err}
		}
		if p.users, err = ParseHtpasswd(b); err != nil {
			return nil, &ConfigError{Key: "security.htpasswd", Err: fmt.Errorf("%s: %w", cfg.Htpasswd, err)}
		}
		cost := bcrypt.MinCost
		for _, h := range p.users {
			if c, err := bcrypt.Cost(h); err == nil && c > cost {
				cost = c
			}
		}
		// An unknown name is compared against this hash, so that it takes as long as a known
		// one and names cannot be probed by timing.
		if p.dummy, err = bcrypt.GenerateFromPassword([]byte("shoal: no such user"), cost); err != nil {
			return nil, &ConfigError{Key: "security.htpasswd", Err: err}
		}
	}
	switch {
	case (cfg.TLSCert == "") != (cfg.TLSKey == ""):
		return nil, &ConfigError{Key: "security.tls_cert", Err: errors.New("tls_cert and tls_key go together")}
	case cfg.TLSCert != "":
		if err := CheckSecretFile(log, "security.tls_key", cfg.TLSKey); err != nil {
			return nil, err
		}
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			// The error may quote PEM, never the key itself; keep it short anyway.
			return nil, &ConfigError{Key: "security.tls_cert", Err: fmt.Errorf("loading %s and %s: %w", cfg.TLSCert, cfg.TLSKey, err)}
		}
		p.cert = &cert
	}
	return p, nil
}

// blankEntry refuses an empty list entry. Skipping it would fail open: an allow list whose
// only entry is blank (allow_repo: [""], SHOAL_ALLOW_REPO=" ") would be an empty list, which
// allows everything, while its author meant to allow something narrow.
func blankEntry(key string) error {
	return &ConfigError{Key: key, Err: errors.New("blank entry: name a value, or leave the key out to not restrict anything")}
}

func parseNets(key string, ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		s = strings.TrimSpace(s)
		if s == "" {
			return nil, blankEntry(key)
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, &ConfigError{Key: key, Err: fmt.Errorf("%q is neither a CIDR (10.0.0.0/8) nor an address", s)}
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// compileRepoPatterns turns REGISTRY/REPO globs into anchored regular expressions, with the
// registry canonicalised and Docker Hub's library/ added the way routing does.
func compileRepoPatterns(key string, ss []string) ([]*regexp.Regexp, error) {
	var out []*regexp.Regexp
	for _, s := range ss {
		s = strings.TrimSpace(s)
		if s == "" {
			return nil, blankEntry(key)
		}
		reg, repo, ok := strings.Cut(s, "/")
		if !ok || reg == "" || repo == "" || len(s) > 512 {
			return nil, &ConfigError{Key: key, Err: fmt.Errorf("%q: want REGISTRY/REPO, e.g. docker.io/library/* or ghcr.io/myorg/*", s)}
		}
		// Registry and repository names are printable ASCII; anything else would be matched
		// as U+FFFD by regexp, so a byte that is not would match names it was not written for.
		if i := strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r > '~' }); i >= 0 {
			return nil, &ConfigError{Key: key, Err: fmt.Errorf("%q: only printable ASCII without spaces (offending byte at %d)", s, i)}
		}
		reg = oci.CanonicalRegistry(strings.ToLower(reg))
		if !strings.ContainsAny(repo, "*?") { // a pattern's "*" may stand for "library/"
			repo = oci.OfficialRepo(reg, repo)
		}
		var b strings.Builder
		b.WriteString("^")
		for _, part := range strings.SplitAfter(regexp.QuoteMeta(reg+"/"+repo), `\*`) {
			part = strings.ReplaceAll(part, `\?`, ".")
			if strings.HasSuffix(part, `\*`) {
				part = strings.TrimSuffix(part, `\*`) + ".*"
			}
			b.WriteString(part)
		}
		b.WriteString("$")
		re, err := regexp.Compile(b.String())
		if err != nil {
			return nil, &ConfigError{Key: key, Err: fmt.Errorf("%q: %v", s, err)}
		}
		out = append(out, re)
	}
	return out, nil
}

// ParseHtpasswd reads "user:hash" lines (blank lines and # comments skipped). Only bcrypt
// hashes ($2y$, $2b$, $2a$, as `htpasswd -B` writes) are accepted: the others are too weak
// or too fast to guess. Errors name the line, never its content.
func ParseHtpasswd(b []byte) (map[string][]byte, error) {
	users := map[string][]byte{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 4096), 4096)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("line %d: want user:bcrypt-hash", n)
		}
		if !strings.HasPrefix(hash, "$2y$") && !strings.HasPrefix(hash, "$2b$") && !strings.HasPrefix(hash, "$2a$") {
			return nil, fmt.Errorf("line %d (user %q): only bcrypt hashes are accepted (htpasswd -B)", n, user)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("line %d (user %q): malformed bcrypt hash", n, user)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("line %d: user %q appears twice", n, user)
		}
		users[user] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line too long or unreadable: %v", err)
	}
	if len(users) == 0 {
		return nil, errors.New("no users")
	}
	return users, nil
}

// CheckSecretFile refuses a secret file anyone may write (anyone could then replace the
// credentials or key) and warns when anyone may read it.
func CheckSecretFile(log *slog.Logger, key, path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return &ConfigError{Key: key, Err: err}
	}
	switch perm := fi.Mode().Perm(); {
	case perm&0o002 != 0:
		return &ConfigError{Key: key, Err: fmt.Errorf("%s is world-writable (mode %04o): chmod o-w it", path, perm)}
	case perm&0o004 != 0:
		log.Warn("file with secrets is world-readable; chmod o-r it", "key", key, "path", path)
	}
	return nil
}

// ListensOnLoopback reports whether a listen address only accepts loopback connections.
func ListensOnLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// Configure applies the connection limits to the mirror's server; zero keeps the server's
// own setting (a Config built without DefaultConfig must not lose its header timeout).
func (g *Guard) Configure(srv *http.Server) {
	cfg := g.cfg
	if cfg.ReadHeaderTimeout > 0 {
		srv.ReadHeaderTimeout = cfg.ReadHeaderTimeout
	}
	if cfg.IdleTimeout > 0 {
		srv.IdleTimeout = cfg.IdleTimeout
	}
	if cfg.MaxHeaderBytes > 0 {
		srv.MaxHeaderBytes = cfg.MaxHeaderBytes
	}
	srv.ConnContext = connContext(srv.ConnContext) // for Cork
}

// Listener caps ln's connections per client (below TLS: a refused connection costs no
// handshake) and wraps it with TLS when a certificate is configured. The certificate is
// looked up per handshake, so a reload takes effect for new connections.
func (g *Guard) Listener(ln net.Listener) net.Listener {
	ln = g.conns.listener(ln)
	if !g.tlsOn {
		return ln
	}
	return tls.NewListener(ln, &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return g.policy.Load().cert, nil
		},
	})
}

// Reload swaps in a new policy; on error nothing changes. TLS cannot be switched on or off
// without a restart. Per-client state survives; rate buckets start full under the new limit.
func (g *Guard) Reload(cfg Config) error {
	p, err := compile(cfg, g.log)
	if err != nil {
		return err
	}
	if (p.cert != nil) != g.tlsOn {
		return &ConfigError{Key: "security.tls_cert", Err: errors.New("switching TLS on or off needs a restart")}
	}
	g.policy.Store(p)
	g.mu.Lock()
	for _, c := range g.clients { // a fresh, full bucket under the new limit
		c.lim.Store(rate.NewLimiter(p.limit(), p.burst))
	}
	g.mu.Unlock()
	g.authOK.Clear()
	return nil
}

func (p *policy) limit() rate.Limit {
	if p.rate == 0 {
		return rate.Inf
	}
	return p.rate
}

// clientKey groups addresses the way one client holds them: an IPv4 address, or the /64 an
// IPv6 host picks its addresses from.
func clientKey(ip netip.Addr) netip.Prefix {
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.Prefix(64)
	return p
}

func (g *Guard) client(key netip.Prefix, p *policy, now time.Time) *clientState {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Sub(g.lastSweep) > time.Minute || len(g.clients) > 100_000 {
		g.lastSweep = now
		idle := now.Add(-10 * time.Minute).UnixNano()
		for k, c := range g.clients {
			if c.inflight.Load() == 0 && c.seen.Load() < idle {
				delete(g.clients, k)
			}
		}
	}
	c, ok := g.clients[key]
	if !ok {
		c = &clientState{}
		c.lim.Store(rate.NewLimiter(p.limit(), p.burst))
		g.clients[key] = c
	}
	c.seen.Store(now.UnixNano())
	return c
}

// Errors the guard answers with, in the mirror's OCI error format.
var (
	errClientDenied = &ocierr.Error{Status: http.StatusForbidden, Code: oci.CodeDenied, Message: "this mirror does not serve your address"}
	errRepoDenied   = &ocierr.Error{Status: http.StatusForbidden, Code: oci.CodeDenied, Message: "this mirror's policy does not allow this repository"}
	errUnauthorized = &ocierr.Error{Status: http.StatusUnauthorized, Code: oci.CodeUnauthorized, Message: "authentication required"}
	errURITooLong   = &ocierr.Error{Status: http.StatusRequestURITooLong, Code: oci.CodeNameInvalid, Message: "request URI too long"}
)

func tooMany(msg string) *ocierr.Error {
	return &ocierr.Error{Status: http.StatusTooManyRequests, Code: oci.CodeTooManyRequests, Message: msg}
}

// Wrap puts the controls in front of next, cheapest first: address lists, the rate limit
// (before any password is checked, so guessing is rate limited too), authentication, the
// repository policy, the concurrency bound, then the timeouts around the request itself.
func (g *Guard) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := g.policy.Load()
		ip := RemoteIP(r)
		if !p.clientAllowed(ip) {
			g.refuse(w, r, refusedAddress, errClientDenied)
			return
		}
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			next.ServeHTTP(w, r)
			return
		}
		if p.maxURI > 0 && len(r.RequestURI) > p.maxURI {
			g.refuse(w, r, refusedURI, errURITooLong)
			return
		}
		now := time.Now()
		c := g.client(clientKey(ip), p, now)
		if p.rate > 0 {
			res := c.lim.Load().ReserveN(now, 1)
			if delay := res.DelayFrom(now); !res.OK() || delay > 0 {
				res.CancelAt(now)
				w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(delay.Seconds())))))
				g.refuse(w, r, refusedRate, tooMany("too many requests from your address; slow down"))
				return
			}
		}
		if p.users != nil && !inNets(p.authExempt, ip) && !g.authenticated(r, p) {
			w.Header().Set("WWW-Authenticate", `Basic realm="shoal"`)
			g.refuse(w, r, refusedAuth, errUnauthorized)
			return
		}
		if len(p.allowRepo) > 0 || len(p.denyRepo) > 0 {
			if reg, repo, ok := g.routeOf(r); ok && !p.repoAllowed(reg, repo) {
				g.refuse(w, r, refusedRepository, errRepoDenied)
				return
			}
			// Files (files.go): hf/ORG/NAME, github.com/OWNER/REPO.
			if reg, repo, ok := files.GuardName(r.URL.Path); ok && !p.repoAllowed(reg, repo) {
				g.refuse(w, r, refusedRepository, errRepoDenied)
				return
			}
		}
		if p.maxConcurrent > 0 && strings.HasPrefix(r.URL.Path, "/v2/") && len(r.URL.Path) > len("/v2/") {
			if n := c.inflight.Add(1); int(n) > p.maxConcurrent {
				c.inflight.Add(-1)
				w.Header().Set("Retry-After", "1")
				g.refuse(w, r, refusedConcurrency, tooMany(fmt.Sprintf("more than %d requests in progress from your address", p.maxConcurrent)))
				return
			}
			defer c.inflight.Add(-1)
		}
		if p.requestTimeout > 0 {
			ctx, cancel := context.WithTimeout(r.Context(), p.requestTimeout)
			defer cancel()
			r = r.WithContext(ctx)
		}
		if p.writeTimeout > 0 || p.requestTimeout > 0 {
			dw := &deadlineWriter{ResponseWriter: w, rc: http.NewResponseController(w), idle: p.writeTimeout}
			if p.requestTimeout > 0 {
				dw.end = now.Add(p.requestTimeout)
			}
			dw.extend()
			defer dw.extend() // the server flushes the response after the handler returns
			w = dw
		}
		next.ServeHTTP(w, r)
	})
}

// routeOf names the repository of a mirror API request (Options.Route).
func (g *Guard) routeOf(r *http.Request) (registry, repo string, ok bool) {
	if g.route == nil {
		return "", "", false
	}
	return g.route(r)
}

// RemoteIP is the client's address: the TCP peer (X-Forwarded-For is never trusted), IPv4 in
// IPv6 unmapped; the zero Addr when unknown.
func RemoteIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func (p *policy) clientAllowed(ip netip.Addr) bool {
	if !ip.IsValid() || inNets(p.denyNets, ip) {
		return false
	}
	return len(p.allowNets) == 0 || inNets(p.allowNets, ip)
}

func inNets(nets []netip.Prefix, ip netip.Addr) bool {
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// repoAllowed applies the repository patterns to a routed request.
func (p *policy) repoAllowed(registry, repo string) bool {
	name := registry + "/" + repo
	match := func(res []*regexp.Regexp) bool {
		for _, re := range res {
			if re.MatchString(name) {
				return true
			}
		}
		return false
	}
	if match(p.denyRepo) {
		return false
	}
	return len(p.allowRepo) == 0 || match(p.allowRepo)
}

// authenticated checks HTTP Basic credentials against the htpasswd users. A password that
// matched before is recognised by its SHA-256 without another bcrypt round.
func (g *Guard) authenticated(r *http.Request, p *policy) bool {
	user, pass, ok := r.BasicAuth()
	if !ok {
		return false
	}
	hash, known := p.users[user]
	if !known {
		// Spend the same time as for a real user so that names cannot be probed.
		hash = p.dummy
	}
	sum := sha256.Sum256([]byte(user + ":" + pass))
	if v, ok := g.authOK.Load(user); ok && known && subtle.ConstantTimeCompare(v.([]byte), sum[:]) == 1 {
		return true
	}
	select {
	case g.hashing <- struct{}{}:
	case <-r.Context().Done():
		return false
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(pass))
	<-g.hashing
	if err != nil || !known {
		return false
	}
	g.authOK.Store(user, sum[:])
	return true
}

// PushUser names the htpasswd user whose valid password the request carries, or "" (package
// push decides what that user may write).
func (g *Guard) PushUser(r *http.Request) string {
	p := g.policy.Load()
	if p.users == nil {
		return ""
	}
	if user, _, ok := r.BasicAuth(); ok && g.authenticated(r, p) {
		return user
	}
	return ""
}

// deadlineWriter gives every write to the client its own deadline, so a client that stops
// reading is cut off after the write timeout while a slow but steady one is served in full.
// It keeps io.ReaderFrom (in bounded chunks) so that stored blobs still go out by sendfile.
type deadlineWriter struct {
	http.ResponseWriter
	rc   *http.ResponseController
	idle time.Duration
	end  time.Time // zero: no total bound
}

// readFromChunk is how much one ReadFrom step may send under one deadline.
const readFromChunk = 8 << 20

func (w *deadlineWriter) extend() {
	var d time.Time
	if w.idle > 0 {
		d = time.Now().Add(w.idle)
	}
	if !w.end.IsZero() && (d.IsZero() || w.end.Before(d)) {
		d = w.end
	}
	_ = w.rc.SetWriteDeadline(d)
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	w.extend()
	return w.ResponseWriter.Write(p)
}

func (w *deadlineWriter) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := w.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(writerOnly{w}, src)
	}
	// Feed the underlying ReaderFrom one level of LimitedReader over the original source,
	// which is what sendfile recognises.
	inner, left := src, int64(-1)
	if lr, ok := src.(*io.LimitedReader); ok {
		inner, left = lr.R, lr.N
	}
	var total int64
	for left != 0 {
		step := int64(readFromChunk)
		if left > 0 && left < step {
			step = left
		}
		w.extend()
		n, err := rf.ReadFrom(&io.LimitedReader{R: inner, N: step})
		total += n
		if left > 0 {
			left -= n
		}
		if err != nil {
			return total, err
		}
		if n < step { // the source ended
			break
		}
	}
	if lr, ok := src.(*io.LimitedReader); ok {
		lr.N = left
	}
	return total, nil
}

func (w *deadlineWriter) Flush() {
	w.extend()
	_ = w.rc.Flush()
}

func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// writerOnly hides io.ReaderFrom so that io.Copy does not call back into ReadFrom.
type writerOnly struct{ io.Writer }
