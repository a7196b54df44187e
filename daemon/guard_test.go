package daemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/shoal-mirror/shoal/internal/testutil"
	"github.com/shoal-mirror/shoal/upstream"
)

// clientFrom is an HTTP client whose connections leave from a given loopback address, so
// one test can be several clients (127.0.0.1, 127.0.0.2, …) to the guard.
func clientFrom(src string, tlsCfg *tls.Config) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: d.DialContext, TLSClientConfig: tlsCfg, MaxIdleConnsPerHost: 64,
	}}
}

// ociAnswer is what a client sees of one request: status, OCI error code, headers.
type ociAnswer struct {
	status int
	code   string
	header http.Header
}

func ask(t *testing.T, c *http.Client, method, url string, hdr http.Header) ociAnswer {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	a := ociAnswer{status: resp.StatusCode, header: resp.Header}
	var e struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	if resp.StatusCode >= 400 && method != http.MethodHead {
		if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
			t.Fatalf("%s %s: status %d with a body that is not OCI error JSON: %q", method, url, resp.StatusCode, body)
		}
		a.code = e.Errors[0].Code
	}
	return a
}

func TestGuardClientAddressLists(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	pushRandom(t, up, "test/app", 1024, 1)
	d := startDaemon(t, up, func(c *Config) {
		c.Guard.AllowCIDR = []string{"127.0.0.0/29"}
		c.Guard.DenyCIDR = []string{"127.0.0.2"}
		withOps(c)
	})
	for _, tc := range []struct {
		src    string
		status int
		code   string
	}{
		{"127.0.0.1", 200, ""},
		{"127.0.0.3", 200, ""},
		{"127.0.0.2", 403, "DENIED"},  // denied, although inside the allowed /29
		{"127.0.0.20", 403, "DENIED"}, // outside the allowed /29
	} {
		for _, path := range []string{"/v2/", "/v2/test/app/manifests/latest"} {
			a := ask(t, clientFrom(tc.src, nil), "GET", "http://"+d.Addr()+path, nil)
			if a.status != tc.status || a.code != tc.code {
				t.Errorf("from %s GET %s: %d %s, want %d %s", tc.src, path, a.status, a.code, tc.status, tc.code)
			}
		}
	}
	// An operator tells an address refusal from a repository one by the reason label.
	mfs := scrape(t, d.MetricsAddr())
	if v, _ := metricValue(mfs, "shoal_guard_refused_total", map[string]string{"reason": "address"}); v != 4 {
		t.Errorf("shoal_guard_refused_total{reason=address} = %v, want 4", v)
	}
	if v, ok := metricValue(mfs, "shoal_guard_refused_total", map[string]string{"reason": "repository"}); !ok || v != 0 {
		t.Errorf("shoal_guard_refused_total{reason=repository} = %v (present %v), want 0", v, ok)
	}
}

func TestGuardRepositoryPatterns(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	for _, repo := range []string{"team/app", "team/secret-db", "other/app"} {
		pushRandom(t, up, repo, 1024, 1)
	}
	h := up.host()
	d := startDaemon(t, up, func(c *Config) {
		c.Guard.AllowRepo = []string{h + "/team/*"}
		c.Guard.DenyRepo = []string{h + "/team/secret*"}
		withOps(c)
	})
	base := "http://" + d.Addr()
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/v2/team/app/manifests/latest", 200},
		{"/v2/team/app/manifests/latest?ns=" + h, 200},
		{"/v2/" + h + "/team/app/manifests/latest", 200},
		{"/v2/team/app/tags/list", 200},
		{"/v2/team/secret-db/manifests/latest", 403},
		{"/v2/" + h + "/team/secret-db/manifests/latest", 403},
		{"/v2/team/secret-db/blobs/sha256:" + strings.Repeat("0", 64), 403},
		{"/v2/other/app/manifests/latest", 403},
		{"/v2/", 200}, // the ping names no repository
	} {
		a := ask(t, http.DefaultClient, "GET", base+tc.path, nil)
		if a.status != tc.status || (tc.status == 403 && a.code != "DENIED") {
			t.Errorf("GET %s: %d %s, want %d", tc.path, a.status, a.code, tc.status)
		}
	}
	if v, _ := metricValue(scrape(t, d.MetricsAddr()), "shoal_guard_refused_total", map[string]string{"reason": "repository"}); v != 4 {
		t.Errorf("shoal_guard_refused_total{reason=repository} = %v, want 4", v)
	}
	if _, err := pullThrough(t, d, "team/app:latest"); err != nil {
		t.Fatalf("allowed pull: %v", err)
	}
	if _, err := pullThrough(t, d, "team/secret-db:latest"); err == nil {
		t.Fatal("denied repository pulled")
	}
}

func TestGuardRateLimit(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	d := startDaemon(t, up, func(c *Config) {
		c.Guard.RateLimit = 2
		c.Guard.RateBurst = 3
	})
	url := "http://" + d.Addr() + "/v2/"
	a1 := clientFrom("127.0.0.1", nil)
	for i := range 3 {
		if a := ask(t, a1, "GET", url, nil); a.status != 200 {
			t.Fatalf("request %d within the burst: %d", i+1, a.status)
		}
	}
	a := ask(t, a1, "GET", url, nil)
	ra, err := strconv.Atoi(a.header.Get("Retry-After"))
	if a.status != http.StatusTooManyRequests || a.code != "TOOMANYREQUESTS" || err != nil || ra < 1 || ra > 1 {
		t.Fatalf("over the limit: %d %s Retry-After %q; want 429 TOOMANYREQUESTS with Retry-After 1", a.status, a.code, a.header.Get("Retry-After"))
	}
	// Another address has its own bucket.
	if a := ask(t, clientFrom("127.0.0.2", nil), "GET", url, nil); a.status != 200 {
		t.Fatalf("another client was limited too: %d", a.status)
	}
	// Retry-After is honest: after it, the client is served again.
	deadline := time.Now().Add(time.Duration(ra)*time.Second + 500*time.Millisecond)
	for ask(t, a1, "GET", url, nil).status != 200 {
		if time.Now().After(deadline) {
			t.Fatalf("still limited %ds after Retry-After said %d", ra, ra)
		}
		time.Sleep(50 * time.Millisecond) // polling; a refused request costs no token
	}
	// /healthz is never limited (probes).
	for range 5 {
		if a := ask(t, a1, "GET", "http://"+d.Addr()+"/healthz", nil); a.status != 200 {
			t.Fatalf("/healthz limited: %d", a.status)
		}
	}
}

// gate holds upstream requests whose path contains "/blobs/" until released.
type gate struct {
	mu      sync.Mutex
	waiting int
	release chan struct{}
}

func holdBlobs(up *upstreamLog) *gate {
	g := &gate{release: make(chan struct{})}
	inner := up.srv.Config.Handler
	up.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			g.mu.Lock()
			g.waiting++
			g.mu.Unlock()
			select {
			case <-g.release:
			case <-r.Context().Done():
				return
			}
		}
		inner.ServeHTTP(w, r)
	})
	return g
}

func (g *gate) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting
}

func TestGuardConcurrencyPerClient(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	img := pushRandom(t, up, "test/conc", 1024, 2)
	layers, _ := img.Layers()
	g := holdBlobs(up)
	d := startDaemon(t, up, func(c *Config) { c.Guard.MaxConcurrent = 2 })
	base := "http://" + d.Addr() + "/v2/test/conc/blobs/"
	c1 := clientFrom("127.0.0.1", nil)
	var wg sync.WaitGroup
	results := make(chan int, 2)
	for _, l := range layers {
		dg, _ := l.Digest()
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c1.Get(base + dg.String())
			if err != nil {
				results <- -1
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			results <- resp.StatusCode
		}()
	}
	waitFor(t, func() bool { return g.count() == 2 })
	a := ask(t, c1, "GET", "http://"+d.Addr()+"/v2/test/conc/manifests/latest", nil)
	if a.status != http.StatusTooManyRequests || a.code != "TOOMANYREQUESTS" || a.header.Get("Retry-After") == "" {
		t.Errorf("third request in flight: %d %s Retry-After %q; want 429 with Retry-After", a.status, a.code, a.header.Get("Retry-After"))
	}
	if a := ask(t, clientFrom("127.0.0.2", nil), "GET", "http://"+d.Addr()+"/v2/test/conc/manifests/latest", nil); a.status != 200 {
		t.Errorf("another client was held back: %d", a.status)
	}
	if a := ask(t, c1, "GET", "http://"+d.Addr()+"/v2/", nil); a.status != 200 {
		t.Errorf("the ping counts against the bound: %d", a.status)
	}
	close(g.release)
	wg.Wait()
	close(results)
	for s := range results {
		if s != 200 {
			t.Errorf("held blob request ended with %d", s)
		}
	}
	if a := ask(t, c1, "GET", "http://"+d.Addr()+"/v2/test/conc/manifests/latest", nil); a.status != 200 {
		t.Errorf("after the others finished: %d", a.status)
	}
}

func TestGuardHtpasswd(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	img := pushRandom(t, up, "test/auth", 2048, 2)
	hp := testutil.WriteHtpasswd(t, map[string]string{"alice": "wonderland", "bob": "builder"})
	d := startDaemon(t, up, func(c *Config) {
		c.Guard.Htpasswd = hp
		c.Guard.AuthExemptCIDR = []string{"127.0.0.1/32"} // 127.0.0.2 plays a remote client
	})
	url := "http://" + d.Addr() + "/v2/test/auth/manifests/latest"
	remoteC := clientFrom("127.0.0.2", nil)
	basic := func(u, p string) http.Header {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth(u, p)
		return r.Header
	}
	for _, tc := range []struct {
		name   string
		hdr    http.Header
		status int
	}{
		{"no credentials", nil, 401},
		{"wrong password", basic("alice", "looking-glass"), 401},
		{"unknown user", basic("mallory", "wonderland"), 401},
		{"bearer instead of basic", http.Header{"Authorization": {"Bearer abc"}}, 401},
		{"right password", basic("alice", "wonderland"), 200},
		{"right password again (cached)", basic("alice", "wonderland"), 200},
		{"second user", basic("bob", "builder"), 200},
	} {
		a := ask(t, remoteC, "GET", url, tc.hdr)
		if a.status != tc.status {
			t.Errorf("%s: %d, want %d", tc.name, a.status, tc.status)
		}
		if tc.status == 401 && (a.code != "UNAUTHORIZED" || a.header.Get("WWW-Authenticate") != `Basic realm="shoal"`) {
			t.Errorf("%s: code %s, WWW-Authenticate %q; want UNAUTHORIZED and a Basic challenge", tc.name, a.code, a.header.Get("WWW-Authenticate"))
		}
	}
	// The exempt address needs no login; /healthz never does.
	if a := ask(t, clientFrom("127.0.0.1", nil), "GET", url, nil); a.status != 200 {
		t.Errorf("exempt client: %d", a.status)
	}
	if a := ask(t, remoteC, "GET", "http://"+d.Addr()+"/healthz", nil); a.status != 200 {
		t.Errorf("/healthz behind auth: %d", a.status)
	}
	// A real client answers the challenge the way it would for any registry.
	ref, _ := name.ParseReference(d.Addr()+"/test/auth:latest", name.Insecure)
	got, err := remote.Image(ref, remote.WithTransport(remoteC.Transport), remote.WithAuth(&authn.Basic{Username: "alice", Password: "wonderland"}))
	if err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}
	if err := validate.Image(got); err != nil || mustDigest(t, got) != mustDigest(t, img) {
		t.Fatalf("pulled image: %v", err)
	}
	if _, err := remote.Image(ref, remote.WithTransport(remoteC.Transport)); err == nil {
		t.Fatal("pull without credentials succeeded")
	}
}

func TestGuardTLS(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	img := pushRandom(t, up, "test/tls", 4096, 2)
	ca := testutil.NewTestCA(t)
	var cfg Config
	d := startDaemon(t, up, func(c *Config) {
		c.Guard.TLSCert, c.Guard.TLSKey = ca.CertFile, ca.KeyFile
		cfg = *c
	})
	tlsCfg := &tls.Config{RootCAs: ca.Pool}
	url := "https://" + d.Addr() + "/v2/"
	if a := ask(t, clientFrom("127.0.0.1", tlsCfg), "GET", url, nil); a.status != 200 {
		t.Fatalf("GET over TLS: %d", a.status)
	}
	// A client that does not trust the CA, or speaks plain HTTP, gets nothing.
	if _, err := clientFrom("127.0.0.1", &tls.Config{}).Get(url); err == nil {
		t.Error("a client without the CA was served")
	}
	if resp, err := http.Get("http://" + d.Addr() + "/v2/"); err == nil {
		if resp.StatusCode == 200 {
			t.Error("plain HTTP was served on the TLS listener")
		}
		resp.Body.Close()
	}
	// A real client pulls over TLS and verifies what it gets.
	ref, _ := name.ParseReference(d.Addr() + "/test/tls:latest")
	got, err := remote.Image(ref, remote.WithTransport(clientFrom("127.0.0.1", tlsCfg).Transport))
	if err != nil {
		t.Fatalf("pull over TLS: %v", err)
	}
	if err := validate.Image(got); err != nil || mustDigest(t, got) != mustDigest(t, img) {
		t.Fatalf("pulled image: %v", err)
	}
	// Reload with a new certificate: new connections get it.
	cfg.Guard.TLSCert, cfg.Guard.TLSKey = ca.Issue(t, "server-2")
	if err := d.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	resp, err := clientFrom("127.0.0.1", tlsCfg).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if cn := resp.TLS.PeerCertificates[0].Subject.CommonName; cn != "server-2" {
		t.Errorf("after reload the server presents %q, want server-2", cn)
	}
	// TLS cannot be switched off by a reload.
	cfg.Guard.TLSCert, cfg.Guard.TLSKey = "", ""
	if err := d.Reload(cfg); err == nil {
		t.Error("reload switched TLS off")
	}
}

// TestSlowClientsAreCutOff: a client that never finishes its headers, and one that stops
// reading a large blob, lose their connections after the configured timeouts, while the
// daemon goes on serving others.
func TestSlowClientsAreCutOff(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	img := pushRandom(t, up, "test/slow", 8<<20, 1)
	layers, _ := img.Layers()
	dg, _ := layers[0].Digest()
	d, logs := startDaemonLogged(t, up, func(c *Config) {
		c.Guard.ReadHeaderTimeout = 300 * time.Millisecond
		c.Guard.WriteTimeout = 300 * time.Millisecond
	})
	path := "/v2/test/slow/blobs/" + dg.String()
	if _, err := pullThrough(t, d, "test/slow:latest"); err != nil { // cache it
		t.Fatal(err)
	}

	// Slowloris: headers trickle in and never end.
	c, err := net.Dial("tcp", d.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	io.WriteString(c, "GET /v2/ HTTP/1.1\r\nHost: x\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, err := io.WriteString(c, "X-Slow: 1\r\n"); err != nil {
			break
		}
		var b [1]byte
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(b[:]); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			break // the server closed the connection
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("a client trickling headers was not cut off in 10s")
		}
	}

	// A reader that stops: a 4 KiB receive window (set before connecting) and no reads.
	small := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := small.Dial("tcp", d.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	// Meanwhile others are served.
	if a := ask(t, http.DefaultClient, "GET", "http://"+d.Addr()+"/v2/", nil); a.status != 200 {
		t.Fatalf("others not served while a client stalls: %d", a.status)
	}
	// The client reads nothing. The server must give up on it after its 300 ms write
	// timeout: the request's access-log line (written when the handler returns) appears.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "remote="+conn.LocalAddr().String()) {
		if time.Now().After(deadline) {
			t.Fatal("the handler serving a client that stopped reading was still running after 10s (write timeout 300ms)")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuffer is a log sink tests can read while the daemon writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startDaemonLogged is startDaemon with the daemon's log (debug level) kept for the test.
func startDaemonLogged(t *testing.T, up *upstreamLog, mod ...func(*Config)) (*Daemon, *syncBuffer) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.DefaultRegistry = up.host()
	cfg.Upstream.OnlyConfigured = true
	cfg.P2PEnabled = false
	cfg.AdminListen, cfg.MetricsListen = "off", "off"
	cfg.SetRegistry(up.host(), upstream.RegistryConfig{URL: up.srv.URL})
	for _, f := range mod {
		f(&cfg)
	}
	return runDaemon(t, cfg)
}

// runDaemon starts a daemon from a finished configuration, keeping its debug log.
func runDaemon(t *testing.T, cfg Config) (*Daemon, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		cancel()
		t.Fatalf("daemon.New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon.Run: %v", err)
		}
		if testing.Verbose() {
			t.Logf("daemon log:\n%s", logs.String())
		}
	})
	return d, logs
}

// TestReloadAppliesLimitsUsersAndRepos: Reload swaps the rate limit (for clients already
// known), the htpasswd users and the repository patterns of a running daemon; a bad file
// changes nothing.
func TestReloadAppliesLimitsUsersAndRepos(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	pushRandom(t, up, "team/app", 1024, 1)
	hp := testutil.WriteHtpasswd(t, map[string]string{"alice": "one"})
	var cfg Config
	d := startDaemon(t, up, func(c *Config) {
		c.Guard.Htpasswd = hp
		c.Guard.AuthExemptCIDR = []string{"127.0.0.1/32"}
		cfg = *c
	})
	url := "http://" + d.Addr() + "/v2/team/app/manifests/latest"
	remoteC := clientFrom("127.0.0.2", nil)
	login := func(pw string) http.Header {
		r, _ := http.NewRequest("GET", "/", nil)
		r.SetBasicAuth("alice", pw)
		return r.Header
	}
	if a := ask(t, remoteC, "GET", url, login("one")); a.status != 200 {
		t.Fatalf("before reload: %d", a.status)
	}
	// New password, a rate limit of one request per minute, and the repository denied.
	cfg.Guard.Htpasswd = testutil.WriteHtpasswd(t, map[string]string{"alice": "two"})
	cfg.Guard.RateLimit, cfg.Guard.RateBurst = 1.0/60, 1
	cfg.Guard.DenyRepo = []string{up.host() + "/team/*"}
	if err := d.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if a := ask(t, remoteC, "GET", url, login("one")); a.status != 401 {
		t.Errorf("old password after reload: %d, want 401", a.status)
	}
	local := clientFrom("127.0.0.1", nil)
	if a := ask(t, local, "GET", url, nil); a.status != 403 || a.code != "DENIED" {
		t.Errorf("denied repository after reload: %d %s", a.status, a.code)
	}
	if a := ask(t, local, "GET", url, nil); a.status != 429 {
		t.Errorf("second request within a minute after reload: %d, want 429", a.status)
	}
	// A reload with an unreadable htpasswd is refused and changes nothing.
	bad := cfg
	bad.Guard.Htpasswd = filepath.Join(t.TempDir(), "missing")
	bad.Guard.RateLimit = 0
	if err := d.Reload(bad); err == nil {
		t.Fatal("reload with a missing htpasswd accepted")
	}
	if a := ask(t, local, "GET", url, nil); a.status != 429 {
		t.Errorf("after a refused reload the rate limit changed: %d", a.status)
	}
}

func TestGuardSizeLimits(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	d := startDaemon(t, up)
	base := "http://" + d.Addr()
	if a := ask(t, http.DefaultClient, "GET", base+"/v2/"+strings.Repeat("a/", 2100)+"manifests/latest", nil); a.status != http.StatusRequestURITooLong {
		t.Errorf("5 KB request target: %d, want 414", a.status)
	}
	req, _ := http.NewRequest("GET", base+"/v2/", nil)
	req.Header.Set("X-Big", strings.Repeat("x", 40<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("40 KiB header: %d, want 431", resp.StatusCode)
	}
	if a := ask(t, http.DefaultClient, "GET", base+"/v2/a/manifests/"+strings.Repeat("t", 129), nil); a.status != 400 {
		t.Errorf("129-character tag: %d, want 400", a.status)
	}
	if a := ask(t, http.DefaultClient, "GET", base+"/v2/", nil); a.status != 200 {
		t.Errorf("ordinary request: %d", a.status)
	}
}

// TestSecretFileModes: Config.Validate refuses a world-writable secret file with the daemon's
// ConfigError naming its key: the guard's htpasswd (package guard checks the modes, with the
// warnings) as well as a registry's password file or swarm key.
func TestSecretFileModes(t *testing.T) {
	t.Parallel()
	hp := testutil.WriteHtpasswd(t, map[string]string{"alice": "x"})
	os.Chmod(hp, 0o666)
	hcfg := DefaultConfig()
	hcfg.Guard.Htpasswd = hp
	var ce *ConfigError
	if err := hcfg.Validate(); !errors.As(err, &ce) || ce.Key != "security.htpasswd" || !strings.Contains(err.Error(), "world-writable") {
		t.Errorf("world-writable htpasswd: %v, want a ConfigError naming security.htpasswd", err)
	}
	// Config.Validate refuses a world-writable password file or swarm key too.
	pw := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	os.Chmod(pw, 0o666)
	cfg := DefaultConfig()
	cfg.SetRegistry("ghcr.io", upstream.RegistryConfig{Username: "bob", PasswordFile: pw})
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "password_file") || strings.Contains(err.Error(), "secret\n") {
		t.Errorf("world-writable password file: %v", err)
	}
}
