package upstream

import (
	"context"
	_ "crypto/sha256" // digest algorithms must be linked in to be Available
	_ "crypto/sha512"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker/auth"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/singleflight"

	"github.com/shoal-mirror/shoal/internal/oci"
)

const userAgent = "shoal (+https://github.com/shoal-mirror/shoal)"

// Retry timing. A Retry-After longer than maxRetryWait is not waited for: the error goes
// back to the caller (with RetryAfter set), which can serve from its cache instead.
const (
	backoffBase  = 200 * time.Millisecond
	backoffMax   = 5 * time.Second
	maxRetryWait = 15 * time.Second
)

// registry is one upstream as the client sees it.
type registry struct {
	host       string   // canonical registry host ("docker.io")
	endpoint   *url.URL // base URL, no trailing slash
	creds      credentials
	trusted    bool // named in the configuration: its endpoint is dialled wherever it resolves
	private    bool // endpoint on a loopback/private address: local realms and redirects are fine
	realmHosts []string
	// writeThrough: pushes to this registry are accepted and forwarded (push.go).
	writeThrough bool
}

// Client talks to upstream registries. It is safe for concurrent use.
type Client struct {
	log            *slog.Logger
	clog           *logrus.Entry // containerd's token helpers log here (clog.go)
	timeout        time.Duration
	retries        int
	onlyConfigured bool
	// regs holds the configured registries and Docker-config credentials; Reload swaps it
	// whole, so a request sees one consistent set (reload.go).
	regs atomic.Pointer[registrySet]

	http      *http.Client // registry requests: redirects checked, Authorization dropped off-host
	tokenHTTP *http.Client // token requests: same, bodies capped

	// Hooks, replaced only by tests: the clock, the wait between retries, name resolution
	// and a check on every address about to be dialled.
	now       func() time.Time
	sleep     func(ctx context.Context, d time.Duration) error
	resolve   resolver
	dialHook  func(network, addr string) error
	tlsConfig *tls.Config // nil: the system's roots (tests trust their own CA)

	egress    *egress // upstream proxy, if any (proxy.go)
	cooldowns cooldowns

	tokenFlight singleflight.Group

	mu         sync.Mutex
	tokens     map[tokenKey]tokenEntry
	challenges map[string]challenge // last challenge per registry host, scope dropped
	rateLimits map[string]RateLimit
	private    map[string]bool         // "host/repo" → last access used credentials
	counters   map[string]*regCounters // by registry host, see stats.go
}

// New builds a client. It reads password files and the Docker config now, so a bad one
// fails at start rather than at the first pull.
func New(cfg Config, log *slog.Logger) (*Client, error) {
	return newClient(cfg, log, nil)
}

// newClient lets tests install hooks before any transport is built.
func newClient(cfg Config, log *slog.Logger, setup func(*Client)) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		log:            log,
		clog:           containerdLogger(log),
		timeout:        cfg.Timeout,
		retries:        cfg.Retries,
		onlyConfigured: cfg.OnlyConfigured,
		now:            time.Now,
		sleep:          sleepCtx,
		resolve:        systemResolver,
		tokens:         map[tokenKey]tokenEntry{},
		challenges:     map[string]challenge{},
		rateLimits:     map[string]RateLimit{},
		private:        map[string]bool{},
	}
	if cfg.Resolver != nil {
		c.resolve = cfg.Resolver
	}
	c.dialHook = cfg.DialCheck
	eg, err := newEgress(cfg.Proxy, os.Getenv)
	if err != nil {
		if cfg.Proxy == "" {
			return nil, fmt.Errorf("HTTPS_PROXY/HTTP_PROXY environment: %v", err)
		}
		return nil, err
	}
	c.egress = eg
	if eg.fn != nil {
		c.log.Info("upstream requests go through a proxy", "proxy", eg.shown)
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	set, err := buildRegistries(cfg, c.log)
	if err != nil {
		return nil, err
	}
	c.regs.Store(set)
	if setup != nil {
		setup(c)
	}

	transport := func(allow dialPolicy) *http.Transport {
		return &http.Transport{
			Proxy:                 c.proxyFunc(allow),
			DialContext:           c.guardedDialer(allow),
			TLSClientConfig:       c.tlsConfig.Clone(),
			ForceAttemptHTTP2:     true,
			TLSHandshakeTimeout:   c.timeout,
			ResponseHeaderTimeout: c.timeout,
			ExpectContinueTimeout: time.Second,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   16,
		}
	}
	rt := dispatch{trusted: transport(allowAll), private: transport(allowPrivate), public: transport(allowPublicOnly)}
	c.http = &http.Client{Transport: rt, CheckRedirect: checkRedirect}
	c.tokenHTTP = &http.Client{Transport: limitBody{base: rt, n: maxTokenBody}, CheckRedirect: checkRedirect}
	return c, nil
}

// CloseIdleConnections closes the keep-alive connections to the upstreams that no request
// uses. Call it once the client's work is done: each idle connection holds two goroutines and
// a socket until the upstream closes it (up to 90 s idle), for as long as the process lives.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

func defaultEndpoint(host string) string {
	if host == DockerHub {
		return DockerHubEndpoint
	}
	return "https://" + host
}

func warnIfWorldReadable(log *slog.Logger, key, path string) {
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o004 != 0 {
		log.Warn("file with credentials is world-readable; chmod o-r it", "key", key, "path", path)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Endpoint returns the base URL used for a registry host. Hosts not named in the
// configuration use https://HOST unless OnlyConfigured is set or the host is an IP literal,
// a local name or not a host name; those give ErrUnknownRegistry.
func (c *Client) Endpoint(host string) (*url.URL, error) {
	reg, err := c.registry(host)
	if err != nil {
		return nil, err
	}
	u := *reg.endpoint
	return &u, nil
}

func (c *Client) registry(host string) (*registry, error) {
	h := canonicalHost(host)
	set := c.regs.Load()
	if reg, ok := set.regs[h]; ok {
		return reg, nil
	}
	if c.onlyConfigured {
		return nil, fmt.Errorf("%w: %q is not configured", ErrUnknownRegistry, truncate(host))
	}
	if err := validHostPort(h); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnknownRegistry, err)
	}
	name := h
	if hn, _, err := net.SplitHostPort(h); err == nil {
		name = hn
	}
	if _, literal := hostClass(name); literal || localName(name) {
		return nil, fmt.Errorf("%w: %q is an address or local name; name it in the configuration to use it", ErrUnknownRegistry, h)
	}
	if _, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		return nil, fmt.Errorf("%w: %q is an IP address; name it in the configuration to use it", ErrUnknownRegistry, h)
	}
	ep, err := parseEndpoint(defaultEndpoint(h))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnknownRegistry, err)
	}
	return &registry{host: h, endpoint: ep, creds: set.dockerCreds[h]}, nil
}

func truncate(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}

// request is one registry API call below /v2/<repo>/.
type request struct {
	method   string
	repo     string
	subpath  string // "manifests/latest", "blobs/sha256:…", "tags/list"
	rawQuery string
	header   http.Header
	// scope overrides the token scope (pushes ask for pull,push); body, when set, opens the
	// request body (again for the round that answers a 401), of size length.
	scope  string
	body   func() (io.ReadCloser, error)
	length int64
}

// do sends an idempotent request to host with authentication, retries and back-off, and
// returns a 2xx response or an error (*Error for an upstream reply).
func (c *Client) do(ctx context.Context, host string, r request) (*http.Response, error) {
	reg, err := c.registry(host)
	if err != nil {
		return nil, err
	}
	if err := oci.ValidateRepo(r.repo); err != nil {
		return nil, err
	}
	if r.subpath == "" || strings.HasPrefix(r.subpath, "/") || strings.ContainsAny(r.subpath, "?#\\") ||
		strings.Contains("/"+r.subpath+"/", "/../") || strings.Contains("/"+r.subpath+"/", "/./") {
		return nil, fmt.Errorf("upstream: bad request path %q", truncate(r.subpath))
	}
	u := *reg.endpoint
	u.Path = reg.endpoint.Path + "/v2/" + r.repo + "/" + r.subpath
	u.RawQuery = r.rawQuery
	ctx = withRegistry(ctx, reg)
	if e := c.cooldowns.check(reg.host, c.now()); e != nil {
		return nil, e // the registry said 429: do not ask again until the back-off ends
	}

	for attempt := 0; ; attempt++ {
		resp, err := c.doAuthed(ctx, reg, r, &u)
		var wait time.Duration
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if !retryableErr(err) || attempt >= c.retries {
				return nil, err
			}
			wait = c.backoff(attempt)
			c.log.Warn("upstream request failed, retrying", "registry", reg.host, "path", u.Path, "attempt", attempt+1, "wait", wait, "err", err)
		case resp.StatusCode >= 200 && resp.StatusCode < 300:
			c.cooldowns.answered(reg.host)
			return resp, nil
		default:
			e := newError(reg.host, resp, c.now())
			e.Message = reg.creds.redact(e.Message)
			if !retryableStatus(e.Status) || attempt >= c.retries || e.RetryAfter > maxRetryWait {
				if e.Status == http.StatusTooManyRequests {
					c.cooldowns.tooMany(reg.host, e.RetryAfter, c.now())
				}
				return nil, e
			}
			wait = e.RetryAfter
			if wait == 0 {
				wait = c.backoff(attempt)
			}
			c.log.Warn("upstream busy, retrying", "registry", reg.host, "path", u.Path, "status", e.Status, "attempt", attempt+1, "wait", wait)
		}
		if err := c.sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// doAuthed sends one request, answering a 401 challenge once: fetch a token (or a fresh one
// if the one sent was refused), or use Basic credentials, then send again.
func (c *Client) doAuthed(ctx context.Context, reg *registry, r request, u *url.URL) (*http.Response, error) {
	c.mu.Lock()
	ch, known := c.challenges[reg.host]
	c.mu.Unlock()
	scope := pullScope(r.repo)
	if r.subpath == catalogPath && r.repo == "" {
		scope = "registry:catalog:*"
	}
	if r.scope != "" {
		scope = r.scope
	}
	var sent string
	for round := 0; ; round++ {
		// Each round has its own context so that a stalled body (even an error body) can be
		// cut off: the body returned below cancels it after Timeout without progress.
		rctx, rcancel := context.WithCancel(ctx)
		req, err := http.NewRequestWithContext(rctx, r.method, u.String(), nil)
		if err != nil {
			rcancel()
			return nil, err
		}
		if r.body != nil {
			if req.Body, err = r.body(); err != nil {
				rcancel()
				return nil, err
			}
			req.ContentLength = r.length
		}
		for k, v := range r.header {
			req.Header[k] = v
		}
		req.Header.Set("User-Agent", userAgent)
		credentialed := false
		if known {
			if sent, credentialed, err = c.authorize(ctx, req, reg, ch, scope, sent); err != nil {
				if round > 0 || ctx.Err() != nil {
					rcancel()
					return nil, err
				}
				// The remembered challenge may be stale (the registry moved its token
				// server): ask again without credentials and answer what it says now.
				req.Header.Del("Authorization")
				known, sent = false, ""
				c.mu.Lock()
				delete(c.challenges, reg.host)
				c.mu.Unlock()
			}
		}
		resp, err := c.http.Do(req)
		if err != nil {
			rcancel()
			var uerr *url.Error
			if errors.As(err, &uerr) { // its message repeats the URL; keep the cause
				err = uerr.Err
			}
			err = fmt.Errorf("upstream %s: %s %s: %w", reg.host, r.method, u.Path, err)
			c.noteResponse(ctx, reg.host, 0, err)
			return nil, err
		}
		c.noteResponse(ctx, reg.host, resp.StatusCode, nil)
		resp.Body = c.guardBody(resp.Body, rcancel)
		if resp.Request.URL.Host == reg.endpoint.Host {
			c.noteRateLimit(reg.host, resp.Header)
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			c.notePrivate(reg.host, r.repo, credentialed)
		}
		if resp.StatusCode != http.StatusUnauthorized || round > 0 {
			return resp, nil
		}
		next, ok := parseChallenge(resp.Header)
		switch {
		case !ok:
			return resp, nil // nothing shoal could answer
		case next.scheme == auth.BasicAuth && (reg.creds.anonymous() || (known && ch.scheme == auth.BasicAuth)):
			return resp, nil // no credentials, or the ones sent were refused
		}
		drain(resp)
		if next.scope != "" {
			scope = next.scope
		}
		stored := next
		stored.scope = ""
		c.mu.Lock()
		c.challenges[reg.host] = stored
		c.mu.Unlock()
		ch, known = next, true
	}
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
}

func retryableStatus(s int) bool {
	switch s {
	case http.StatusTooManyRequests, http.StatusRequestTimeout, http.StatusInternalServerError,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// retryableErr: network trouble is worth another try; a refusal, a bad token response or a
// server that answered with an error is not.
func retryableErr(err error) bool {
	var ue *Error
	switch {
	case errors.Is(err, ErrRefused), errors.Is(err, context.Canceled), errors.Is(err, ErrUnknownRegistry):
		return false
	case errors.As(err, &ue):
		return retryableStatus(ue.Status)
	}
	var ne net.Error
	var oe *net.OpError
	var de *net.DNSError
	return errors.As(err, &ne) || errors.As(err, &oe) || errors.As(err, &de) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, context.DeadlineExceeded)
}

// backoff is exponential with jitter: attempt 0 waits 100–200 ms, then doubling to 5 s.
func (c *Client) backoff(attempt int) time.Duration {
	d := backoffBase << min(attempt, 10)
	d = min(d, backoffMax)
	return d/2 + rand.N(d/2+1)
}

func (c *Client) notePrivate(host, repo string, credentialed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := host + "/" + repo
	if !credentialed {
		delete(c.private, key)
		return
	}
	if len(c.private) >= 1<<16 {
		clear(c.private) // bound memory; Private is then conservative only for new accesses
	}
	c.private[key] = true
}

// Private reports whether the last successful access to (host, repo) went out with
// credentials (Basic, or a token fetched with credentials). shoal cannot tell whether
// anonymous access would have worked, so content fetched with credentials counts as
// private and must not be shared with peers.
func (c *Client) Private(host, repo string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.private[canonicalHost(host)+"/"+repo]
}

// Descriptor describes a manifest as the upstream serves it.
type Descriptor struct {
	Digest    digest.Digest
	MediaType string
	Size      int64
}

var manifestAccept = strings.Join(oci.ManifestAccept, ", ")

func manifestRequest(method, repo, ref string) (request, error) {
	if oci.IsDigestRef(ref) {
		if _, err := oci.ParseDigest(ref); err != nil {
			return request{}, err
		}
	} else if err := oci.ValidateTag(ref); err != nil {
		return request{}, err
	}
	return request{method: method, repo: repo, subpath: "manifests/" + ref,
		header: http.Header{"Accept": {manifestAccept}}}, nil
}

// HeadManifest resolves a manifest with HEAD (which Docker Hub does not count as a pull).
// When the upstream leaves out Docker-Content-Digest or Content-Length, or the digest does
// not match a digest reference, it falls back to GET and hashes the body itself.
func (c *Client) HeadManifest(ctx context.Context, host, repo, ref string) (Descriptor, error) {
	r, err := manifestRequest(http.MethodHead, repo, ref)
	if err != nil {
		return Descriptor{}, err
	}
	resp, err := c.do(ctx, host, r)
	if err != nil {
		return Descriptor{}, err
	}
	resp.Body.Close()
	d, derr := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	size := resp.ContentLength
	if derr != nil || size < 0 || size > oci.MaxManifestSize || (oci.IsDigestRef(ref) && d.String() != ref) {
		_, desc, err := c.GetManifest(ctx, host, repo, ref)
		return desc, err
	}
	return Descriptor{Digest: d, MediaType: resp.Header.Get("Content-Type"), Size: size}, nil
}

// GetManifest fetches a manifest (at most oci.MaxManifestSize bytes). For a digest
// reference the body must hash to it (else ErrDigestMismatch). The descriptor carries the
// digest of the body and the upstream's exact Content-Type.
func (c *Client) GetManifest(ctx context.Context, host, repo, ref string) ([]byte, Descriptor, error) {
	r, err := manifestRequest(http.MethodGet, repo, ref)
	if err != nil {
		return nil, Descriptor{}, err
	}
	resp, err := c.do(ctx, host, r)
	if err != nil {
		return nil, Descriptor{}, err
	}
	rc := resp.Body
	defer rc.Close()
	if resp.ContentLength > oci.MaxManifestSize {
		return nil, Descriptor{}, fmt.Errorf("upstream %s: %s@%s: %w (%d bytes, limit %d)", canonicalHost(host), repo, ref, ErrManifestTooLarge, resp.ContentLength, oci.MaxManifestSize)
	}
	body, err := io.ReadAll(io.LimitReader(rc, oci.MaxManifestSize+1))
	if err != nil {
		return nil, Descriptor{}, fmt.Errorf("upstream %s: reading manifest %s@%s: %w", canonicalHost(host), repo, ref, err)
	}
	if len(body) > oci.MaxManifestSize {
		return nil, Descriptor{}, fmt.Errorf("upstream %s: %s@%s: %w (limit %d bytes)", canonicalHost(host), repo, ref, ErrManifestTooLarge, oci.MaxManifestSize)
	}
	var dg digest.Digest
	if oci.IsDigestRef(ref) {
		want := digest.Digest(ref)
		if !want.Algorithm().Available() {
			return nil, Descriptor{}, fmt.Errorf("upstream: digest algorithm %q not available", want.Algorithm())
		}
		dg = want.Algorithm().FromBytes(body)
		if dg != want {
			return nil, Descriptor{}, fmt.Errorf("upstream %s: manifest %s@%s hashes to %s: %w", canonicalHost(host), repo, ref, dg, ErrDigestMismatch)
		}
	} else {
		dg = digest.FromBytes(body)
	}
	mt := resp.Header.Get("Content-Type")
	if mt == "" {
		mt = sniffMediaType(body)
	}
	return body, Descriptor{Digest: dg, MediaType: mt, Size: int64(len(body))}, nil
}

// sniffMediaType reads the mediaType field of a manifest that came without Content-Type.
func sniffMediaType(body []byte) string {
	var m struct {
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return ""
	}
	return m.MediaType
}

// GetBlob opens a blob, following redirects (to CDNs) server-side. offset > 0 asks for the
// rest of the blob from there (to resume); a server that ignores Range is skipped forward.
// size is the blob's total size, -1 if the upstream did not say. The bytes are not
// verified: the caller hashes them while streaming.
func (c *Client) GetBlob(ctx context.Context, host, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	if err := d.Validate(); err != nil {
		return nil, 0, fmt.Errorf("%w: %v", oci.ErrDigestInvalid, err)
	}
	if offset < 0 {
		return nil, 0, fmt.Errorf("upstream: negative blob offset %d", offset)
	}
	r := request{method: http.MethodGet, repo: repo, subpath: "blobs/" + d.String(), header: http.Header{}}
	if offset > 0 {
		r.header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := c.do(ctx, host, r)
	if ue, ok := errors.AsType[*Error](err); ok && offset > 0 && ue.Status == http.StatusRequestedRangeNotSatisfiable {
		// Some registries only understand closed ranges: take the whole blob and skip.
		r.header.Del("Range")
		resp, err = c.do(ctx, host, r)
	}
	if err != nil {
		return nil, 0, err
	}
	body := resp.Body
	size := resp.ContentLength
	switch {
	case resp.StatusCode == http.StatusPartialContent:
		start, total, ok := ParseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != offset {
			body.Close()
			return nil, 0, fmt.Errorf("upstream %s: blob %s: asked for bytes %d-, got Content-Range %q", canonicalHost(host), d, offset, truncate(resp.Header.Get("Content-Range")))
		}
		size = total
	case offset > 0:
		// 200 with the whole blob (Range ignored or refused): skip what the caller has.
		if _, err := io.CopyN(io.Discard, body, offset); err != nil {
			body.Close()
			return nil, 0, fmt.Errorf("upstream %s: blob %s: skipping to offset %d: %w", canonicalHost(host), d, offset, err)
		}
	}
	if size < 0 {
		size = -1
	}
	return body, size, nil
}

// ParseContentRange reads a 206 answer's "bytes START-END/TOTAL" (TOTAL may be "*": -1).
func ParseContentRange(v string) (start, total int64, ok bool) {
	rest, found := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	s, e, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(s, 10, 64)
	end, err2 := strconv.ParseInt(e, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start {
		return 0, 0, false
	}
	if tot == "*" {
		return start, -1, true
	}
	total, err := strconv.ParseInt(tot, 10, 64)
	if err != nil || total <= end {
		return 0, 0, false
	}
	return start, total, true
}

// Get passes a GET of /v2/<repo>/<subpath>?<rawQuery> through (tags/list, referrers/…) and
// returns the 2xx response, whose body the caller closes. Anything else is an *Error.
func (c *Client) Get(ctx context.Context, host, repo, subpath, rawQuery string) (*http.Response, error) {
	return c.do(ctx, host, request{method: http.MethodGet, repo: repo, subpath: subpath, rawQuery: rawQuery})
}

// guardBody wraps a response body so that a stall longer than the timeout cancels the
// request (cancel must be the request context's), and closing it releases the context.
func (c *Client) guardBody(rc io.ReadCloser, cancel context.CancelFunc) io.ReadCloser {
	b := &idleReader{rc: rc, cancel: cancel, idle: c.timeout}
	b.timer = time.AfterFunc(c.timeout, func() {
		b.stalled.Store(true)
		cancel()
	})
	return b
}

// errStalled is returned when an upstream body made no progress for the client timeout.
var errStalled = errors.New("upstream stalled")

type idleReader struct {
	rc      io.ReadCloser
	cancel  context.CancelFunc
	idle    time.Duration
	timer   *time.Timer
	stalled atomic.Bool
	once    sync.Once
}

func (b *idleReader) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	if err != nil && err != io.EOF && b.stalled.Load() {
		err = fmt.Errorf("%w: no data for %s: %w", errStalled, b.idle, err)
	}
	return n, err
}

func (b *idleReader) Close() error {
	err := b.rc.Close()
	b.once.Do(func() {
		b.timer.Stop()
		b.cancel()
	})
	return err
}
