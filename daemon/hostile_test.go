package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
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

// hostileRegistry is a malicious upstream on loopback that the daemon knows by a public-
// looking name (registry.example.com, mapped to 127.0.0.1 by the test resolver). Each
// repository is a different attack; "good/app" is an honest image.
func hostileRegistry(t *testing.T, up *upstreamLog) (host string, stop func()) {
	t.Helper()
	quit := make(chan struct{})
	var once sync.Once
	stop = func() { once.Do(func() { close(quit) }) }
	var port string
	endless := func(w http.ResponseWriter, r *http.Request, prefix string) {
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, prefix)
		chunk := strings.Repeat("a", 32<<10)
		for {
			select {
			case <-quit:
				return
			case <-r.Context().Done():
				return
			default:
			}
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
		}
	}
	inner := up.srv.Config.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repo := repoOf(r.URL.Path)
		switch {
		case r.URL.Path == "/token/endless":
			w.Header().Set("Content-Type", "application/json")
			endless(w, r, `{"token":"`)
		case repo == "realm/metadata":
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://169.254.169.254/latest/meta-data/iam",service="x"`)
			w.WriteHeader(http.StatusUnauthorized)
		case repo == "realm/private":
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://10.0.0.1:`+port+`/token",service="x"`)
			w.WriteHeader(http.StatusUnauthorized)
		case repo == "realm/ipv6-link-local":
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://[fe80::1%25eth0]/token",service="x"`)
			w.WriteHeader(http.StatusUnauthorized)
		case repo == "token/endless":
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://registry.example.com:`+port+`/token/endless",service="x"`)
			w.WriteHeader(http.StatusUnauthorized)
		case repo == "redirect/private" && strings.Contains(r.URL.Path, "/blobs/"):
			http.Redirect(w, r, "http://192.168.1.1:"+port+"/blob", http.StatusTemporaryRedirect)
		case repo == "redirect/metadata" && strings.Contains(r.URL.Path, "/blobs/"):
			http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusTemporaryRedirect)
		case repo == "redirect/name-to-loopback" && strings.Contains(r.URL.Path, "/blobs/"):
			http.Redirect(w, r, "http://cdn.example.net:"+port+"/blob", http.StatusFound)
		case repo == "manifest/oversized":
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Docker-Content-Digest", digest.FromString("x").String())
			w.Header().Set("Content-Length", fmt.Sprint(5<<20))
			if r.Method == http.MethodGet {
				io.WriteString(w, strings.Repeat(" ", 5<<20))
			}
		case repo == "manifest/endless":
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			if r.Method == http.MethodHead {
				return // no digest, no length: shoal must GET it
			}
			endless(w, r, `{"schemaVersion":2,"x":"`)
		default:
			inner.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(stop)
	_, port, _ = net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	return "registry.example.com:" + port, stop
}

func repoOf(path string) string {
	for _, k := range []string{"/manifests/", "/blobs/", "/tags/", "/referrers/"} {
		if i := strings.LastIndex(path, k); i > len("/v2") {
			return path[len("/v2/"):i]
		}
	}
	return ""
}

// TestMaliciousUpstream: realms and redirects naming link-local or private addresses, an
// oversized or endless manifest and an endless token body are all refused with a clear
// error, quickly, while the daemon keeps serving everyone else. The test's resolver and
// dial check keep every packet on loopback even if a check under test is broken.
func TestMaliciousUpstream(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	img := pushRandom(t, up, "good/app", 64<<10, 1)
	host, _ := hostileRegistry(t, up)
	names := map[string]string{"registry.example.com": "127.0.0.1", "cdn.example.net": "127.0.0.1"}
	var mu sync.Mutex
	var dials []string
	d, logs := startBehind(t, host, func(c *Config) {
		c.Upstream.Timeout = 3 * time.Second
		c.Upstream.Resolver = func(ctx context.Context, name string) ([]netip.Addr, error) {
			if ip, ok := names[name]; ok {
				return []netip.Addr{netip.MustParseAddr(ip)}, nil
			}
			t.Errorf("the daemon asked DNS for %q", name)
			return nil, &net.DNSError{Err: "not mapped by the test", Name: name, IsNotFound: true}
		}
		check := loopbackOnly(t)
		c.Upstream.DialCheck = func(network, addr string) error {
			mu.Lock()
			dials = append(dials, addr)
			mu.Unlock()
			return check(network, addr)
		}
	})
	// The honest image is cached before the attacks start.
	if _, err := pullThrough(t, d, "good/app:latest"); err != nil {
		t.Fatal(err)
	}
	base := "http://" + d.Addr()
	blob := "/blobs/" + digest.FromString("hostile").String()
	attacks := []struct{ name, path, want string }{
		{"realm on the metadata address", "/v2/realm/metadata/manifests/latest", "may not reach"},
		{"realm on a private address", "/v2/realm/private/manifests/latest", "may not reach"},
		{"realm on IPv6 link-local", "/v2/realm/ipv6-link-local/manifests/latest", "may not reach"},
		{"redirect to a private address", "/v2/redirect/private" + blob, "may not reach"},
		{"redirect to the metadata address", "/v2/redirect/metadata" + blob, "may not reach"},
		{"redirect to a name resolving to loopback", "/v2/redirect/name-to-loopback" + blob, "may not reach"},
		{"oversized manifest", "/v2/manifest/oversized/manifests/latest", "larger than"},
		{"endless manifest", "/v2/manifest/endless/manifests/latest", "larger than"},
		{"endless token body", "/v2/token/endless/manifests/latest", "larger than"},
	}
	var wg sync.WaitGroup
	for _, a := range attacks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			resp, err := http.Get(base + a.path)
			if err != nil {
				t.Errorf("%s: %v", a.name, err)
				return
			}
			var body struct {
				Errors []struct{ Code, Message, Detail string } `json:"errors"`
			}
			derr := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body)
			resp.Body.Close()
			el := time.Since(t0)
			switch {
			case derr != nil || len(body.Errors) == 0:
				t.Errorf("%s: status %d without an OCI error body (%v)", a.name, resp.StatusCode, derr)
			case resp.StatusCode != http.StatusBadGateway || !strings.Contains(body.Errors[0].Message, a.want):
				t.Errorf("%s: %d %+v; want 502 saying %q", a.name, resp.StatusCode, body.Errors[0], a.want)
			case el > 10*time.Second:
				t.Errorf("%s: took %s", a.name, el)
			}
		}()
	}
	// Meanwhile the daemon answers everyone else at once.
	for i := range 5 {
		t0 := time.Now()
		got, err := pullThrough(t, d, "good/app:latest")
		if err != nil || mustDigest(t, got) != mustDigest(t, img) {
			t.Fatalf("honest pull %d during the attacks: %v", i, err)
		}
		if el := time.Since(t0); el > 2*time.Second {
			t.Errorf("honest pull %d took %s during the attacks", i, el)
		}
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	_, port, _ := net.SplitHostPort(host)
	for _, a := range dials {
		if a != "127.0.0.1:"+port {
			t.Errorf("dialled %s; only the upstream itself may be dialled", a)
		}
	}
	if strings.Contains(logs.String(), "aaaaaaaaaaaaaaaa") {
		t.Error("the endless body made it into the log")
	}
}

// TestUpstreamProxyFromConfig: with upstream.proxy set, the daemon reaches its upstream
// only through the proxy, and a hostile redirect is refused before the proxy is asked.
func TestUpstreamProxyFromConfig(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	img := pushRandom(t, up, "good/app", 64<<10, 1)
	host, _ := hostileRegistry(t, up)
	proxy := newForwardProxy(t, map[string]string{"registry.example.com": "127.0.0.1"})
	var mu sync.Mutex
	var dials []string
	d, _ := startBehind(t, host, func(c *Config) {
		c.Upstream.Proxy = "http://" + proxy.addr()
		c.Upstream.Resolver = func(ctx context.Context, name string) ([]netip.Addr, error) {
			switch name {
			case "registry.example.com":
				return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
			case "cdn.example.net":
				return []netip.Addr{netip.MustParseAddr("10.1.1.1")}, nil // behind the proxy: still judged
			}
			return nil, &net.DNSError{Err: "not mapped", Name: name, IsNotFound: true}
		}
		check := loopbackOnly(t)
		c.Upstream.DialCheck = func(network, addr string) error {
			mu.Lock()
			dials = append(dials, addr)
			mu.Unlock()
			return check(network, addr)
		}
	})
	got, err := pullThrough(t, d, "good/app:latest")
	if err != nil || mustDigest(t, got) != mustDigest(t, img) {
		t.Fatalf("pull through the proxy: %v", err)
	}
	resp, err := http.Get("http://" + d.Addr() + "/v2/redirect/name-to-loopback/blobs/" + digest.FromString("x").String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("redirect to a private name through the proxy: %d, want 502", resp.StatusCode)
	}
	for _, target := range proxy.seen() {
		if target != host {
			t.Errorf("the proxy was asked for %s", target)
		}
	}
	if len(proxy.seen()) == 0 {
		t.Error("the proxy saw no request")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, a := range dials {
		if a != proxy.addr() {
			t.Errorf("the daemon dialled %s itself; only the proxy %s may be dialled", a, proxy.addr())
		}
	}
}

// forwardProxy is a plain-HTTP forward proxy on loopback (absolute-form requests) that
// resolves names from a map and only ever connects to loopback.
type forwardProxy struct {
	srv     *httptest.Server
	names   map[string]string
	mu      sync.Mutex
	targets []string
}

func newForwardProxy(t *testing.T, names map[string]string) *forwardProxy {
	p := &forwardProxy{names: names}
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		h, port, _ := net.SplitHostPort(addr)
		if ip, ok := p.names[h]; ok {
			h = ip
		}
		if ip, err := netip.ParseAddr(h); err != nil || !ip.IsLoopback() {
			t.Errorf("proxy asked to reach %s, outside loopback", addr)
			return nil, fmt.Errorf("blocked")
		}
		return net.Dial(network, net.JoinHostPort(h, port))
	}}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.targets = append(p.targets, r.URL.Host)
		p.mu.Unlock()
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
	}))
	t.Cleanup(p.srv.Close)
	t.Cleanup(tr.CloseIdleConnections)
	return p
}

func (p *forwardProxy) addr() string { return strings.TrimPrefix(p.srv.URL, "http://") }

func (p *forwardProxy) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.targets...)
}
