package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/mirror"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// faultProxy is a TCP proxy on loopback between the daemon and its upstream that injects
// network faults: latency, a bandwidth cap, and a connection reset in the middle of a
// response.
type faultProxy struct {
	ln     net.Listener
	target string

	latency    atomic.Int64 // nanoseconds added before each chunk, both directions
	rate       atomic.Int64 // bytes per second upstream → daemon; 0 = no cap
	resetAfter atomic.Int64 // >0: reset the first connection whose response bytes pass this
	resets     atomic.Int32

	mu    sync.Mutex
	conns map[net.Conn]bool
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for c := range p.conns { // the daemon's idle keep-alive connections
			c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); p.serve(c) }()
		}
	}()
	return p
}

func (p *faultProxy) addr() string { return p.ln.Addr().String() }

func (p *faultProxy) serve(down net.Conn) {
	p.track(down, true)
	defer p.track(down, false)
	defer down.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		p.pipe(up, down, false)
		up.Close()
	}()
	p.pipe(down, up, true)
}

func (p *faultProxy) track(c net.Conn, open bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if open {
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
}

// pipe copies src to dst, applying the faults; response is the upstream → daemon direction.
func (p *faultProxy) pipe(dst, src net.Conn, response bool) {
	buf := make([]byte, 16<<10)
	var total int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if l := time.Duration(p.latency.Load()); l > 0 {
				time.Sleep(l) // simulated link delay
			}
			if r := p.rate.Load(); response && r > 0 {
				time.Sleep(time.Duration(int64(n) * int64(time.Second) / r)) // simulated bandwidth
			}
			if lim := p.resetAfter.Load(); response && lim > 0 && total+int64(n) > lim && p.resets.CompareAndSwap(0, 1) {
				dst.Write(buf[:lim-total])
				dst.(*net.TCPConn).SetLinger(0) // close with RST, like a dropped connection
				dst.Close()
				src.Close()
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			total += int64(n)
		}
		if err != nil {
			return
		}
	}
}

// rangeRegistry wraps the in-process registry so that blob GETs honour open-ended ranges
// ("bytes=N-", which go-containerregistry's registry does not parse), as Docker Hub's and
// S3's do, and records every blob request's Range header.
func rangeRegistry(up *upstreamLog) *[]string {
	var mu sync.Mutex
	ranges := &[]string{}
	inner := up.srv.Config.Handler
	up.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rng := r.Header.Get("Range")
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			inner.ServeHTTP(w, r)
			return
		}
		mu.Lock()
		*ranges = append(*ranges, rng)
		mu.Unlock()
		start, ok := strings.CutPrefix(rng, "bytes=")
		start, ok2 := strings.CutSuffix(start, "-")
		off, err := strconv.ParseInt(start, 10, 64)
		if !ok || !ok2 || err != nil {
			inner.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		r2 := r.Clone(r.Context())
		r2.Header.Del("Range")
		inner.ServeHTTP(rec, r2)
		body := rec.Body.Bytes()
		if rec.Code != 200 || off >= int64(len(body)) {
			http.Error(w, "bad range", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, len(body)-1, len(body)))
		w.Header().Set("Content-Length", strconv.Itoa(len(body)-int(off)))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(body[off:])
	})
	return ranges
}

// startBehind runs a daemon whose default (and only) registry is reached at hostport.
func startBehind(t *testing.T, hostport string, mod ...func(*Config)) (*Daemon, *syncBuffer) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.DefaultRegistry = hostport
	cfg.Upstream.OnlyConfigured = true
	cfg.P2PEnabled = false
	cfg.AdminListen, cfg.MetricsListen = "off", "off"
	cfg.SetRegistry(hostport, upstream.RegistryConfig{URL: "http://" + hostport})
	for _, f := range mod {
		f(&cfg)
	}
	return runDaemon(t, cfg)
}

// checkStore runs the store's own verification: nothing corrupt, nothing missing.
func checkStore(t *testing.T, d *Daemon) {
	t.Helper()
	res, err := d.store.Verify(context.Background())
	if err != nil || len(res.Corrupt) > 0 || len(res.Missing) > 0 {
		t.Fatalf("store.Verify: %v, corrupt %v, missing %v", err, res.Corrupt, res.Missing)
	}
}

func TestUpstreamResetMidBlobResumesWithRange(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	img := pushRandom(t, up, "test/reset", 4<<20, 1)
	ranges := rangeRegistry(up)
	p := newFaultProxy(t, up.host())
	p.resetAfter.Store(1 << 20)
	d, _ := startBehind(t, p.addr())

	got, err := pullThrough(t, d, "test/reset:latest")
	if err != nil {
		t.Fatalf("pull across a reset: %v", err)
	}
	if mustDigest(t, got) != mustDigest(t, img) {
		t.Fatal("wrong image")
	}
	if p.resets.Load() != 1 {
		t.Fatalf("the proxy reset %d connections, want 1", p.resets.Load())
	}
	var resumed []string
	for _, r := range *ranges {
		if r != "" {
			resumed = append(resumed, r)
		}
	}
	if len(resumed) != 1 || resumed[0] == "bytes=0-" {
		t.Errorf("blob requests with Range: %q; want one resume from the offset reached", resumed)
	}
	checkStore(t, d)
}

func TestSlowUpstreamLatencyAndBandwidthCap(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	cached := pushRandom(t, up, "test/cached", 64<<10, 1)
	cold := pushRandom(t, up, "test/cold", 1<<20, 2)
	p := newFaultProxy(t, up.host())
	d, _ := startBehind(t, p.addr())
	if _, err := pullThrough(t, d, "test/cached:latest"); err != nil {
		t.Fatal(err)
	}
	p.latency.Store(int64(20 * time.Millisecond))
	p.rate.Store(1 << 20) // 1 MiB/s: the cold pull takes about a second
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		got, err := pullThrough(t, d, "test/cold:latest")
		if err == nil && mustDigest(t, got) != mustDigest(t, cold) {
			err = errors.New("wrong image")
		}
		done <- err
	}()
	// While the slow pull runs, cached content comes at loopback speed (tag TTL 30s: no
	// upstream round trip).
	for i := range 3 {
		t0 := time.Now()
		got, err := pullThrough(t, d, "test/cached:latest")
		if err != nil || mustDigest(t, got) != mustDigest(t, cached) {
			t.Fatalf("cached pull %d during a slow one: %v", i, err)
		}
		if el := time.Since(t0); el > time.Second {
			t.Errorf("cached pull took %s while the upstream was slow", el)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("slow pull: %v", err)
	}
	if el := time.Since(start); el < 500*time.Millisecond {
		t.Errorf("1 MiB over a 1 MiB/s link took %s: the cap did not apply", el)
	}
	checkStore(t, d)
}

// busyUpstream answers 429 to manifest requests while busy is set, with Retry-After if
// retryAfter is not empty, and counts the manifest requests it sees.
type busyUpstream struct {
	busy       atomic.Bool
	retryAfter string
	manifests  atomic.Int32
}

func (b *busyUpstream) wrap(up *upstreamLog) {
	inner := up.srv.Config.Handler
	up.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") {
			b.manifests.Add(1)
			if b.busy.Load() {
				if b.retryAfter != "" {
					w.Header().Set("Retry-After", b.retryAfter)
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusTooManyRequests)
				io.WriteString(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit reached"}]}`)
				return
			}
		}
		inner.ServeHTTP(w, r)
	})
}

func TestUpstream429BacksOffAndServesTheCache(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, retryAfter string }{{"with Retry-After", "2"}, {"without Retry-After", ""}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t)
			img := pushRandom(t, up, "test/busy", 64<<10, 1)
			pushRandom(t, up, "test/cold", 64<<10, 1)
			b := &busyUpstream{retryAfter: tc.retryAfter}
			b.wrap(up)
			d, _ := startBehind(t, up.host(), func(c *Config) {
				c.TagTTL = 0           // ask the upstream on every tag request
				c.Upstream.Retries = 0 // the back-off is under test, not in-request retries
			})
			base := "http://" + d.Addr()
			if _, err := pullThrough(t, d, "test/busy:latest"); err != nil {
				t.Fatal(err)
			}
			b.busy.Store(true)
			before := b.manifests.Load()

			// The first 429 starts the back-off; the cached image is served, marked stale.
			for i := range 3 {
				got, err := pullThrough(t, d, "test/busy:latest")
				if err != nil || mustDigest(t, got) != mustDigest(t, img) {
					t.Fatalf("pull %d while the upstream answers 429: %v", i, err)
				}
				a := ask(t, http.DefaultClient, "GET", base+"/v2/test/busy/manifests/latest", nil)
				if a.status != 200 || a.header.Get(mirror.HeaderStale) != "true" {
					t.Fatalf("tag while rate limited: %d stale=%q, want 200 and stale", a.status, a.header.Get(mirror.HeaderStale))
				}
			}
			if n := b.manifests.Load() - before; n != 1 {
				t.Errorf("the upstream saw %d manifest requests during the back-off, want 1 (the one that got the 429)", n)
			}
			// What the cache does not have gets a 429 the client can act on.
			a := ask(t, http.DefaultClient, "GET", base+"/v2/test/cold/manifests/latest", nil)
			ra, err := strconv.Atoi(a.header.Get("Retry-After"))
			if a.status != http.StatusTooManyRequests || a.code != "TOOMANYREQUESTS" || err != nil || ra < 1 {
				t.Errorf("cold tag while backing off: %d %s Retry-After %q; want 429 TOOMANYREQUESTS with Retry-After", a.status, a.code, a.header.Get("Retry-After"))
			}
			if tc.retryAfter != "" && ra > 2 {
				t.Errorf("Retry-After %d, the upstream said 2", ra)
			}
			// When the back-off ends and the upstream recovers, tags are fresh again.
			b.busy.Store(false)
			deadline := time.Now().Add(15 * time.Second)
			for {
				if _, backing := d.up.BackingOff(up.host()); !backing {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("still backing off after 15s")
				}
				time.Sleep(50 * time.Millisecond)
			}
			a = ask(t, http.DefaultClient, "GET", base+"/v2/test/busy/manifests/latest", nil)
			if a.status != 200 || a.header.Get(mirror.HeaderStale) != "" {
				t.Errorf("after the back-off: %d stale=%q, want a fresh answer", a.status, a.header.Get(mirror.HeaderStale))
			}
			checkStore(t, d)
		})
	}
}

func TestDNSFailureServesStaleTags(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	img := pushRandom(t, up, "test/dns", 64<<10, 1)
	_, port, _ := net.SplitHostPort(up.host())
	host := "registry.example.com:" + port
	var dnsDown atomic.Bool
	d, _ := startBehind(t, host, func(c *Config) {
		c.TagTTL = 0
		c.Upstream.Retries = 0
		c.Upstream.Resolver = func(ctx context.Context, name string) ([]netip.Addr, error) {
			if name != "registry.example.com" {
				t.Errorf("resolver asked for %q", name)
			}
			if dnsDown.Load() {
				return nil, &net.DNSError{Err: "server misbehaving", Name: name, IsTemporary: true}
			}
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
		c.Upstream.DialCheck = loopbackOnly(t)
	})
	if _, err := pullThrough(t, d, "test/dns:latest"); err != nil {
		t.Fatal(err)
	}
	dnsDown.Store(true)
	up.srv.CloseClientConnections() // kept-alive connections would not need DNS
	got, err := pullThrough(t, d, "test/dns:latest")
	if err != nil || mustDigest(t, got) != mustDigest(t, img) {
		t.Fatalf("pull while DNS fails: %v", err)
	}
	base := "http://" + d.Addr()
	if a := ask(t, http.DefaultClient, "GET", base+"/v2/test/dns/manifests/latest", nil); a.status != 200 || a.header.Get(mirror.HeaderStale) != "true" {
		t.Fatalf("tag while DNS fails: %d stale=%q", a.status, a.header.Get(mirror.HeaderStale))
	}
	// What is not cached fails clearly and quickly.
	t0 := time.Now()
	a := ask(t, http.DefaultClient, "GET", base+"/v2/test/other/manifests/latest", nil)
	if a.status < 500 || time.Since(t0) > 5*time.Second {
		t.Fatalf("uncached tag while DNS fails: %d %s after %s; want a 5xx, fast", a.status, a.code, time.Since(t0))
	}
}

// loopbackOnly is a DialCheck that fails the test on any address outside loopback, and
// refuses the dial so that no packet can leave even if a check under test is broken.
func loopbackOnly(t *testing.T) func(network, addr string) error {
	return func(network, addr string) error {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || !ap.Addr().Unmap().IsLoopback() {
			t.Errorf("the daemon tried to dial %s, outside loopback", addr)
			return fmt.Errorf("dial %s blocked by the test", addr)
		}
		return nil
	}
}

// TestGracefulShutdownDrainsDownloads stops the daemon while a client is in the middle of
// a cold blob coming over a slow link: the client gets the whole, correct blob (or the
// shutdown cuts it and it sees a broken transfer), Run returns, and the store reopens
// consistent.
func TestGracefulShutdownDrainsDownloads(t *testing.T) {
	t.Parallel()
	for _, hangUp := range []bool{false, true} {
		t.Run(fmt.Sprintf("client hangs up=%v", hangUp), func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t)
			img := pushRandom(t, up, "test/drain", 2<<20, 1)
			layers, _ := img.Layers()
			dg, _ := layers[0].Digest()
			size := mustSize(t, layers[0])
			p := newFaultProxy(t, up.host())
			p.rate.Store(4 << 20) // ~0.5 s for the layer

			cfg := DefaultConfig()
			cfg.Listen = "127.0.0.1:0"
			cfg.DataDir = t.TempDir()
			cfg.DefaultRegistry = p.addr()
			cfg.P2PEnabled = false
			cfg.AdminListen, cfg.MetricsListen = "off", "off"
			cfg.SetRegistry(p.addr(), upstream.RegistryConfig{URL: "http://" + p.addr()})
			logs := &syncBuffer{}
			ctx, cancel := context.WithCancel(context.Background())
			d, err := New(ctx, cfg, testLoggerTo(logs))
			if err != nil {
				t.Fatal(err)
			}
			ran := make(chan error, 1)
			go func() { ran <- d.Run(ctx) }()

			resp, err := http.Get("http://" + d.Addr() + "/v2/test/drain/blobs/" + dg.String())
			if err != nil {
				t.Fatal(err)
			}
			first := make([]byte, 64<<10)
			if _, err := io.ReadFull(resp.Body, first); err != nil {
				t.Fatal(err)
			}
			if hangUp {
				resp.Body.Close()
			}
			cancel() // SIGTERM
			if !hangUp {
				rest, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				body := append(first, rest...)
				if err == nil && (int64(len(body)) != size || v1Hash(body) != dg) {
					t.Errorf("client got %d bytes ending cleanly, not the blob", len(body))
				}
				if err != nil {
					t.Logf("shutdown cut the transfer: %v", err)
				}
			}
			select {
			case err := <-ran:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(40 * time.Second):
				t.Fatal("Run did not return within 40s of the shutdown")
			}
			if hangUp {
				// Nobody waits for the download any more, but it was in flight: shutdown must
				// finish it or abort it before the store closes, not leave it running.
				drainCheck(t, logs, dg.String())
			}
			// Reopen the store: whatever is in it must verify.
			if err := cfg.Validate(); err != nil { // fills in cfg.Store.Dir
				t.Fatal(err)
			}
			st, err := store.Open(context.Background(), cfg.Store, testLoggerTo(logs))
			if err != nil {
				t.Fatalf("reopening the store: %v\n%s", err, logs)
			}
			defer st.Close()
			res, err := st.Verify(context.Background())
			if err != nil || len(res.Corrupt) > 0 || len(res.Missing) > 0 {
				t.Fatalf("store after shutdown: %v, corrupt %v, missing %v", err, res.Corrupt, res.Missing)
			}
			if info, err := st.Stat(context.Background(), digest.Digest(dg.String())); err == nil && info.Size != size {
				t.Fatalf("store holds %d bytes for a %d-byte blob", info.Size, size)
			}
		})
	}
}

// drainCheck fails if a download of digest was still running after Run returned: it
// then fails later against the closed store.
func drainCheck(t *testing.T, logs *syncBuffer, digest string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		_, after, _ := strings.Cut(logs.String(), "shoal stopped")
		if strings.Contains(after, digest) {
			t.Fatalf("a download was still running after Run returned:%s", after)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testLoggerTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
