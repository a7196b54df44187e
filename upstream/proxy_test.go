package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// testProxy is an HTTP (forward and CONNECT) or SOCKS5 proxy on loopback. It resolves
// target names with its own map (never DNS) and refuses any target outside loopback, so a
// broken check in the client can still not send a packet off the machine.
type testProxy struct {
	t     *testing.T
	ln    net.Listener
	names map[string]string

	mu      sync.Mutex
	targets []string // host:port as the client asked for it
}

func newTestProxy(t *testing.T, socks bool, names map[string]string) *testProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &testProxy{t: t, ln: ln, names: names}
	t.Cleanup(func() { ln.Close() })
	if socks {
		go p.acceptLoop(p.serveSOCKS)
	} else {
		srv := &http.Server{Handler: http.HandlerFunc(p.serveHTTP)}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	return p
}

func (p *testProxy) addr() string { return p.ln.Addr().String() }

func (p *testProxy) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.targets...)
}

// dial connects to a target the way a proxy would, but only ever on loopback.
func (p *testProxy) dial(hostport string) (net.Conn, error) {
	p.mu.Lock()
	p.targets = append(p.targets, hostport)
	p.mu.Unlock()
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	if ip, ok := p.names[host]; ok {
		host = ip
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil || !ip.IsLoopback() {
		p.t.Errorf("proxy asked to reach %s, which is not loopback: the client should have refused it", hostport)
		return nil, fmt.Errorf("test proxy: %s is not loopback", hostport)
	}
	return net.Dial("tcp", net.JoinHostPort(ip.String(), port))
}

func (p *testProxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		up, err := p.dial(r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusOK)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			up.Close()
			return
		}
		go func() { io.Copy(up, brw); up.Close() }()
		io.Copy(conn, up)
		conn.Close()
		return
	}
	if !r.URL.IsAbs() {
		http.Error(w, "not a proxy request", http.StatusBadRequest)
		return
	}
	host := r.URL.Host
	if r.URL.Port() == "" {
		host += ":80"
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return p.dial(host) }}
	defer tr.CloseIdleConnections()
	out := r.Clone(r.Context())
	out.RequestURI = ""
	resp, err := tr.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

func (p *testProxy) acceptLoop(serve func(net.Conn)) {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go serve(c)
	}
}

// serveSOCKS speaks just enough SOCKS5 (RFC 1928): no authentication, CONNECT, IPv4 or
// domain-name targets.
func (p *testProxy) serveSOCKS(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	var hdr [2]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil || hdr[0] != 5 {
		return
	}
	if _, err := io.CopyN(io.Discard, br, int64(hdr[1])); err != nil {
		return
	}
	c.Write([]byte{5, 0})
	var req [4]byte
	if _, err := io.ReadFull(br, req[:]); err != nil || req[1] != 1 {
		return
	}
	var host string
	switch req[3] {
	case 1:
		var a [4]byte
		io.ReadFull(br, a[:])
		host = netip.AddrFrom4(a).String()
	case 3:
		n, _ := br.ReadByte()
		b := make([]byte, n)
		io.ReadFull(br, b)
		host = string(b)
	default:
		c.Write([]byte{5, 8, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}
	var port [2]byte
	io.ReadFull(br, port[:])
	up, err := p.dial(net.JoinHostPort(host, fmt.Sprint(binary.BigEndian.Uint16(port[:]))))
	if err != nil {
		c.Write([]byte{5, 2, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}
	defer up.Close()
	c.Write([]byte{5, 0, 0, 1, 127, 0, 0, 1, 0, 0})
	go func() { io.Copy(up, br); up.Close() }()
	io.Copy(c, up)
}

// newProxiedClient is newTestClient with a proxy and, for https upstreams, a CA to trust.
func newProxiedClient(t *testing.T, cfg Config, names map[string]string, roots *tls.Config) *testClient {
	t.Helper()
	tc := &testClient{clock: &fakeClock{}}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := newClient(cfg, logger, func(c *Client) {
		c.sleep = func(ctx context.Context, d time.Duration) error { return ctx.Err() }
		c.resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			if ip, ok := names[host]; ok {
				return []netip.Addr{netip.MustParseAddr(ip)}, nil
			}
			return nil, &net.DNSError{Err: "not mapped by the test", Name: host, IsNotFound: true}
		}
		c.dialHook = func(network, addr string) error {
			tc.mu.Lock()
			tc.dials = append(tc.dials, addr)
			tc.mu.Unlock()
			if ap, err := netip.ParseAddrPort(addr); err != nil || !ap.Addr().Unmap().IsLoopback() {
				t.Errorf("client tried to dial %s, outside loopback", addr)
				return fmt.Errorf("dial %s blocked by the test", addr)
			}
			return nil
		}
		c.tlsConfig = roots
	})
	if err != nil {
		t.Fatal(err)
	}
	tc.Client = c
	return tc
}

func TestUpstreamThroughProxy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		socks  bool
		scheme string
	}{
		{"http proxy, http upstream", false, "http"},
		{"http proxy CONNECT, https upstream", false, "https"},
		{"socks5, http upstream", true, "http"},
		{"socks5h, https upstream", true, "https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t, nil)
			img := up.image("library/alpine", "latest")
			var roots *tls.Config
			base := up.srv
			if tc.scheme == "https" {
				base = httptest.NewTLSServer(http.HandlerFunc(up.serve))
				t.Cleanup(base.Close)
				roots = base.Client().Transport.(*http.Transport).TLSClientConfig
			}
			_, port, _ := net.SplitHostPort(strings.TrimPrefix(strings.TrimPrefix(base.URL, "https://"), "http://"))
			host := "example.com:" + port // the test certificate names example.com
			names := map[string]string{"example.com": "127.0.0.1"}
			p := newTestProxy(t, tc.socks, names)
			proxyURL := "http://" + p.addr()
			if tc.socks {
				proxyURL = "socks5://" + p.addr()
				if tc.scheme == "https" {
					proxyURL = "socks5h://" + p.addr()
				}
			}
			cfg := Config{Registries: map[string]RegistryConfig{host: {URL: tc.scheme + "://" + host}},
				OnlyConfigured: true, Proxy: proxyURL}
			c := newProxiedClient(t, cfg, names, roots)
			data, desc, err := c.GetManifest(t.Context(), host, "library/alpine", "latest")
			if err != nil || desc.Digest != imgDigest(t, img) || len(data) == 0 {
				t.Fatalf("GetManifest through %s = %s, %v", proxyURL, desc.Digest, err)
			}
			if got := p.seen(); len(got) == 0 || got[0] != host {
				t.Errorf("proxy saw targets %v, want %s", got, host)
			}
			c.mu.Lock()
			for _, d := range c.dials {
				if d != p.addr() {
					t.Errorf("client dialled %s directly; only the proxy %s may be dialled", d, p.addr())
				}
			}
			c.mu.Unlock()
		})
	}
}

// TestProxyDoesNotLaunderHostileTargets: with a proxy, the dial guard only sees the proxy,
// so realms and redirects must be judged before the proxy is asked to connect.
func TestProxyDoesNotLaunderHostileTargets(t *testing.T) {
	t.Parallel()
	h := newHostile(t)
	names := map[string]string{
		"registry.example.com": "127.0.0.1",
		"auth.example.com":     "10.9.8.7", // same site as the upstream, private address
		"cdn.example.net":      "172.16.0.5",
		"meta.example.net":     "169.254.169.254",
	}
	_, port, _ := strings.Cut(h.host, ":")
	for _, socks := range []bool{false, true} {
		p := newTestProxy(t, socks, names)
		proxyURL := "http://" + p.addr()
		if socks {
			proxyURL = "socks5://" + p.addr()
		}
		cfg := Config{Registries: map[string]RegistryConfig{"registry.example.com": {URL: "http://" + h.host}},
			OnlyConfigured: true, Proxy: proxyURL}
		for _, tc := range []struct{ name, wwwAuth, location string }{
			{"realm name resolving to private", `Bearer realm="http://auth.example.com:` + port + `/token"`, ""},
			{"redirect to private name", "", "http://cdn.example.net:" + port + "/blob"},
			{"redirect to link-local name", "", "http://meta.example.net/latest/meta-data"},
			{"redirect to metadata literal", "", "http://169.254.169.254/latest/meta-data"},
			{"redirect to private literal", "", "http://10.0.0.1:" + port + "/blob"},
		} {
			t.Run(fmt.Sprintf("socks=%v/%s", socks, tc.name), func(t *testing.T) {
				h.set(tc.wwwAuth, tc.location)
				c := newProxiedClient(t, cfg, names, nil)
				before := len(p.seen())
				_, _, err := c.GetBlob(t.Context(), "registry.example.com", "library/alpine", digest.FromString("x"), 0)
				if !errors.Is(err, ErrRefused) {
					t.Fatalf("err = %v, want ErrRefused", err)
				}
				for _, target := range p.seen()[before:] {
					if target != h.host {
						t.Errorf("proxy was asked to connect to %s", target)
					}
				}
			})
		}
	}
}

func TestProxySetting(t *testing.T) {
	t.Parallel()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	for _, tc := range []struct {
		name, setting string
		env           map[string]string
		target        string
		want          string // proxy URL chosen for target, "" = direct
		wantErr       string
	}{
		{"none ignores env", ProxyNone, map[string]string{"HTTPS_PROXY": "http://10.0.0.1:3128"}, "https://ghcr.io/v2/", "", ""},
		{"env https", "", map[string]string{"HTTPS_PROXY": "http://10.0.0.1:3128"}, "https://ghcr.io/v2/", "http://10.0.0.1:3128", ""},
		{"env lower case", "", map[string]string{"https_proxy": "socks5://10.0.0.1:1080"}, "https://ghcr.io/v2/", "socks5://10.0.0.1:1080", ""},
		{"env NO_PROXY", "", map[string]string{"HTTPS_PROXY": "http://10.0.0.1:3128", "NO_PROXY": ".ghcr.io,ghcr.io"}, "https://ghcr.io/v2/", "", ""},
		{"env bare host:port", "", map[string]string{"HTTP_PROXY": "10.0.0.1:3128"}, "http://example.com/v2/", "http://10.0.0.1:3128", ""},
		{"setting wins over env", "socks5://127.0.0.1:1080", map[string]string{"HTTPS_PROXY": "http://10.0.0.1:3128"}, "https://ghcr.io/v2/", "socks5://127.0.0.1:1080", ""},
		{"loopback target direct", "http://10.0.0.1:3128", nil, "http://127.0.0.1:5000/v2/", "", ""},
		{"bad scheme, password hidden", "ftp://user:hunter2@10.0.0.1", nil, "", "", "scheme"},
		{"path refused", "http://10.0.0.1:3128/x", nil, "", "", "path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := newEgress(tc.setting, env(tc.env))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("err = %v, want one about %s without the password", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if e.fn != nil {
				u, _ := http.NewRequest("GET", tc.target, nil)
				pu, err := e.fn(u.URL)
				if err != nil {
					t.Fatal(err)
				}
				if pu != nil {
					got = pu.String()
				}
			}
			if got != tc.want {
				t.Fatalf("proxy for %s = %q, want %q", tc.target, got, tc.want)
			}
		})
	}
	e, err := newEgress("socks5://bob:hunter2@127.0.0.1:1080", env(nil))
	if err != nil || strings.Contains(e.shown, "hunter2") || !e.isProxy("127.0.0.1:1080") {
		t.Fatalf("egress %+v, %v: want the proxy address known and the password hidden", e, err)
	}
}
