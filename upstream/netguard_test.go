package upstream

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// hostile is an upstream that looks public to the client ("registry.example.com", mapped to
// loopback by the test resolver) and steers it with crafted challenges and redirects. The
// test client fails the test on any dial outside loopback, so even a broken check cannot
// send a packet off the machine.
type hostile struct {
	srv               *httptest.Server
	host              string // "registry.example.com:PORT"
	mu                sync.Mutex
	wwwAuth, location string
	hits              []string
}

func newHostile(t *testing.T) *hostile {
	h := &hostile{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.hits = append(h.hits, r.Method+" "+r.URL.Path)
		switch {
		case h.wwwAuth != "":
			w.Header().Set("WWW-Authenticate", h.wwwAuth)
			w.WriteHeader(http.StatusUnauthorized)
		case h.location != "":
			w.Header().Set("Location", h.location)
			w.WriteHeader(http.StatusTemporaryRedirect)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(h.srv.Close)
	_, port, _ := strings.Cut(strings.TrimPrefix(h.srv.URL, "http://"), ":")
	h.host = "registry.example.com:" + port
	return h
}

func (h *hostile) set(wwwAuth, location string) {
	h.mu.Lock()
	h.wwwAuth, h.location = wwwAuth, location
	h.mu.Unlock()
}

func TestHostileRealmsAndRedirectsRefusedBeforeDial(t *testing.T) {
	t.Parallel()
	h := newHostile(t)
	names := map[string]string{
		"registry.example.com": "127.0.0.1", // the upstream: public by name
		"auth.example.com":     "10.9.8.7",  // same site, but resolves to a private address
		"cdn.example.net":      "172.16.0.5",
		"cdn-lo.example.net":   "127.0.0.1",
	}
	cfg := Config{Registries: map[string]RegistryConfig{"registry.example.com": {URL: "http://" + h.host}},
		OnlyConfigured: true, Retries: 2}
	_, port, _ := strings.Cut(h.host, ":")
	shared := newTestClient(t, cfg, names) // also learns each new challenge after a refusal

	for _, tc := range []struct{ name, wwwAuth, location string }{
		{"realm on link-local metadata address", `Bearer realm="http://169.254.169.254/latest/meta-data",service="x"`, ""},
		{"realm on private address", `Bearer realm="http://10.1.2.3:` + port + `/token"`, ""},
		{"realm on loopback", `Bearer realm="http://127.0.0.1:` + port + `/token"`, ""},
		{"realm on IPv6 link-local", `Bearer realm="http://[fe80::1]/token"`, ""},
		{"realm on IPv4-mapped private", `Bearer realm="http://[::ffff:192.168.0.1]/token"`, ""},
		{"realm on localhost name", `Bearer realm="http://localhost:` + port + `/token"`, ""},
		{"realm on another site", `Bearer realm="http://auth.evil.net/token"`, ""},
		{"realm name resolving to private", `Bearer realm="http://auth.example.com:` + port + `/token"`, ""},
		{"realm with file scheme", `Bearer realm="file:///etc/passwd"`, ""},
		{"redirect to metadata address", "", "http://169.254.169.254/latest/meta-data"},
		{"redirect to private address", "", "http://192.168.1.10:" + port + "/blob"},
		{"redirect to loopback", "", "http://127.0.0.1:" + port + "/blob"},
		{"redirect to name resolving to private", "", "http://cdn.example.net:" + port + "/blob"},
		{"redirect to name resolving to loopback", "", "http://cdn-lo.example.net:" + port + "/blob"},
		{"redirect to unspecified", "", "http://0.0.0.0:" + port + "/blob"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.set(tc.wwwAuth, tc.location)
			for _, c := range []*testClient{newTestClient(t, cfg, names), shared} {
				_, _, err := c.GetBlob(t.Context(), "registry.example.com", "library/alpine", digest.FromString("x"), 0)
				if !errors.Is(err, ErrRefused) {
					t.Fatalf("err = %v, want ErrRefused", err)
				}
				want := "token realm"
				if tc.location != "" {
					want = "redirect"
				}
				if strings.Contains(tc.name, "name resolving") {
					want = "resolves to" // refused by the dialer, after the URL check let it pass
				}
				if !strings.Contains(err.Error(), want) {
					t.Errorf("err = %v, want a refused %s", err, want)
				}
				if len(c.waits()) != 0 {
					t.Errorf("a refusal was retried (waits %v)", c.waits())
				}
				c.mu.Lock()
				for _, d := range c.dials {
					if d != "127.0.0.1:"+port {
						t.Errorf("dialled %s; only the upstream itself (127.0.0.1:%s) may be dialled", d, port)
					}
				}
				c.mu.Unlock()
			}
		})
	}
}

func TestPrivateUpstreamStillRefusesLinkLocal(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://169.254.169.254/token"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	if _, err := c.HeadManifest(t.Context(), up.host, "a/b", "latest"); !errors.Is(err, ErrRefused) {
		t.Fatalf("err = %v, want ErrRefused", err)
	}
}

func TestCheckTarget(t *testing.T) {
	t.Parallel()
	mk := func(endpoint string, realmHosts ...string) *registry {
		u, err := parseEndpoint(endpoint)
		if err != nil {
			t.Fatal(err)
		}
		return &registry{host: u.Host, endpoint: u, private: endpointIsPrivate(u), realmHosts: realmHosts}
	}
	hub := mk(DockerHubEndpoint)
	nvcr := mk("https://nvcr.io", "authn.nvidia.com")
	local := mk("http://127.0.0.1:5001")
	lan := mk("http://192.168.1.5:5000")
	for _, tc := range []struct {
		reg    *registry
		target string
		realm  bool
		ok     bool
	}{
		{hub, "https://auth.docker.io/token", true, true},
		{hub, "https://registry-1.docker.io/token", true, true},
		{hub, "https://auth.docker.io.evil.com/token", true, false},
		{hub, "https://evildocker.io/token", true, false},
		{hub, "http://auth.docker.io/token", true, false}, // downgrade: credentials in clear
		{hub, "https://user:pw@auth.docker.io/token", true, false},
		{hub, "https://169.254.169.254/token", true, false},
		{hub, "https://10.0.0.1/token", true, false},
		{hub, "https://[::1]/token", true, false},
		{hub, "https://[fd00::1]/token", true, false},
		{hub, "https://100.64.1.1/token", true, false},
		{hub, "https://[64:ff9b::a00:1]/token", true, false}, // NAT64 of 10.0.0.1
		{hub, "https://8.8.8.8/token", true, false},          // public, but not the registry's site
		{hub, "gopher://auth.docker.io/", true, false},
		{nvcr, "https://authn.nvidia.com/token", true, true},
		{nvcr, "https://authn.nvidia.com.evil.io/token", true, false},
		{local, "http://localhost:5013/token", true, true},
		{local, "http://127.0.0.1:5013/token", true, true},
		{local, "http://10.0.0.2/token", true, true},
		{local, "http://[::1]:5013/token", true, true},
		{local, "http://169.254.169.254/token", true, false},
		{local, "https://auth.docker.io/token", true, false},
		{lan, "http://192.168.1.6:5001/token", true, true},
		// Redirects: other sites are normal (CDNs), addresses are not.
		{hub, "https://production.cloudflare.docker.com/registry-v2/x", false, true},
		{hub, "http://production.cloudflare.docker.com/x", false, false},
		{hub, "https://127.0.0.1/x", false, false},
		{hub, "https://192.168.0.1/x", false, false},
		{hub, "https://[fe80::1%25eth0]/x", false, false},
		{hub, "https://localhost/x", false, false},
		{hub, "https://224.0.0.1/x", false, false},
		{local, "http://127.0.0.2:9000/x", false, true},
		{local, "http://cdn.example.com/x", false, true},
		{local, "http://169.254.169.254/x", false, false},
	} {
		u, err := url.Parse(tc.target)
		if err != nil {
			t.Fatal(err)
		}
		err = checkTarget(tc.reg, u, tc.realm)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrRefused)) {
			t.Errorf("checkTarget(%s, %s, realm=%v) = %v, want ok=%v", tc.reg.endpoint, tc.target, tc.realm, err, tc.ok)
		}
	}
}

func TestTokenBodyCapped(t *testing.T) {
	t.Parallel()
	endless := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"token":"`)
		chunk := strings.Repeat("a", 32<<10)
		for {
			if _, err := io.WriteString(w, chunk); err != nil {
				return // the client gave up: good
			}
		}
	}))
	t.Cleanup(endless.Close)
	up := newUpstream(t, nil)
	up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="s"`, endless.URL+"/token"))
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	start := time.Now()
	_, err := c.HeadManifest(t.Context(), up.host, "a/b", "latest")
	if err == nil || !strings.Contains(err.Error(), errBodyTooLarge.Error()) {
		t.Fatalf("err = %v, want the token body refused as too large", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s to refuse an endless token body", d)
	}
}

func TestStalledBodyFails(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // runs before the server's Close
	up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, strings.Repeat("x", 10))
		w.(http.Flusher).Flush()
		select { // never sends the rest
		case <-release:
		case <-r.Context().Done():
		}
		return true
	})
	cfg := cfgFor(up, RegistryConfig{})
	cfg.Timeout = 300 * time.Millisecond
	c := newTestClient(t, cfg, nil)
	rc, size, err := c.GetBlob(t.Context(), up.host, "a/b", digest.FromString("x"), 0)
	if err != nil || size != 1000 {
		t.Fatalf("GetBlob = %d, %v", size, err)
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	if !errors.Is(err, errStalled) || n != 10 {
		t.Fatalf("read %d bytes, err %v; want 10 bytes then a stall error", n, err)
	}
}

func TestStalledErrorBodyFails(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"errors":[`)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return true
	})
	cfg := cfgFor(up, RegistryConfig{})
	cfg.Timeout, cfg.Retries = 300*time.Millisecond, 0
	c := newTestClient(t, cfg, nil)
	_, _, err := c.GetManifest(t.Context(), up.host, "a/b", "latest")
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusInternalServerError {
		t.Fatalf("err = %v, want *Error 500 once the error body stalled", err)
	}
}

func TestTokenPOSTNotReplayedToAnotherHost(t *testing.T) {
	t.Parallel()
	var stolen sync.Mutex
	got := 0
	thief := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stolen.Lock()
		got++
		stolen.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(thief.Close)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, thief.URL+"/token", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirector.Close)
	iss := newIssuer(t, map[string]string{"alice": "pw"}, false)
	up := newUpstream(t, iss)
	up.realm = redirector.URL + "/token"
	c := newTestClient(t, cfgFor(up, RegistryConfig{Username: "alice", Password: "pw"}), nil)
	_, err := c.HeadManifest(t.Context(), up.host, "a/b", "latest")
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("err = %v, want ErrRefused for a token POST redirected to another host", err)
	}
	stolen.Lock()
	defer stolen.Unlock()
	if got != 0 {
		t.Fatalf("the OAuth form was replayed to another host (%d requests)", got)
	}
}
