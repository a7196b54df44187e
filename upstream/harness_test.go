package upstream

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// issuer is a small token server like the ones registries use: it issues signed, opaque
// tokens for (user, scopes) over GET (Basic credentials optional) and OAuth POST, and the
// upstream middleware checks them.
type issuer struct {
	srv        *httptest.Server
	key        []byte
	users      map[string]string
	anonPull   bool
	expiresIn  int // 0: left out of the response
	postStatus int // non-zero: POST answers this status (a server without OAuth POST)

	gets, posts atomic.Int32
	generation  atomic.Int32 // bumping it revokes every token issued before
	mu          sync.Mutex
	lastQuery   string
	issued      []string
}

type claims struct {
	Sub    string   `json:"sub"`
	Access []string `json:"access"` // "repo:pull"
	Gen    int32    `json:"gen"`
	Nonce  string   `json:"nonce"`
}

func newIssuer(t *testing.T, users map[string]string, anonPull bool) *issuer {
	t.Helper()
	is := &issuer{key: make([]byte, 32), users: users, anonPull: anonPull, expiresIn: 300}
	rand.Read(is.key)
	is.srv = httptest.NewServer(http.HandlerFunc(is.serve))
	t.Cleanup(is.srv.Close)
	return is
}

func (is *issuer) serve(w http.ResponseWriter, r *http.Request) {
	var user, pass string
	var authed bool
	var scopes []string
	is.mu.Lock()
	is.lastQuery = r.URL.RawQuery
	is.mu.Unlock()
	switch r.Method {
	case http.MethodPost:
		is.posts.Add(1)
		if is.postStatus != 0 {
			http.Error(w, "no oauth here", is.postStatus)
			return
		}
		if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "password" || r.PostForm.Get("client_id") == "" {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		user, pass, authed = r.PostForm.Get("username"), r.PostForm.Get("password"), true
		scopes = strings.Fields(r.PostForm.Get("scope"))
	case http.MethodGet:
		is.gets.Add(1)
		user, pass, authed = r.BasicAuth()
		for _, s := range r.URL.Query()["scope"] {
			scopes = append(scopes, strings.Fields(s)...)
		}
	default:
		http.Error(w, "method", http.StatusMethodNotAllowed)
		return
	}
	if authed {
		if p, ok := is.users[user]; !ok || p != pass {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`)
			return
		}
	}
	cl := claims{Sub: user, Gen: is.generation.Load(), Nonce: rand.Text()}
	for _, s := range scopes {
		parts := strings.Split(s, ":")
		if len(parts) == 3 && parts[0] == "repository" && (authed || is.anonPull) {
			cl.Access = append(cl.Access, parts[1]+":pull")
		}
		// Push only for users who logged in and asked for it (write-through tests).
		if len(parts) == 3 && parts[0] == "repository" && authed && strings.Contains(","+parts[2]+",", ",push,") {
			cl.Access = append(cl.Access, parts[1]+":push")
		}
	}
	tok := is.sign(cl)
	is.mu.Lock()
	is.issued = append(is.issued, tok)
	is.mu.Unlock()
	resp := map[string]any{"token": tok, "access_token": tok, "issued_at": time.Now().UTC().Format(time.RFC3339)}
	if is.expiresIn > 0 {
		resp["expires_in"] = is.expiresIn
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

func (is *issuer) sign(cl claims) string {
	b, _ := json.Marshal(cl)
	m := hmac.New(sha256.New, is.key)
	m.Write(b)
	return base64.RawURLEncoding.EncodeToString(b) + "." + hex.EncodeToString(m.Sum(nil))
}

// verify returns the claims of a valid, unrevoked token.
func (is *issuer) verify(tok string) (claims, bool) {
	p, sig, ok := strings.Cut(tok, ".")
	if !ok {
		return claims{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return claims{}, false
	}
	m := hmac.New(sha256.New, is.key)
	m.Write(b)
	if !hmac.Equal([]byte(hex.EncodeToString(m.Sum(nil))), []byte(sig)) {
		return claims{}, false
	}
	var cl claims
	if json.Unmarshal(b, &cl) != nil || cl.Gen != is.generation.Load() {
		return claims{}, false
	}
	return cl, true
}

// testRegistry is go-containerregistry's in-process registry behind test middleware that
// demands Bearer tokens from an issuer or Basic credentials, and lets a test intercept
// requests.
type testRegistry struct {
	t       *testing.T
	srv     *httptest.Server
	reg     http.Handler
	seed    *httptest.Server // the bare registry, for seeding
	host    string           // "127.0.0.1:PORT"
	iss     *issuer
	realm   string // challenge realm; default iss URL + "/token"
	service string
	basic   [2]string // user, password when Basic is demanded

	mu   sync.Mutex
	log  []string
	hook func(w http.ResponseWriter, r *http.Request) bool // after auth; true: handled
}

func newUpstream(t *testing.T, iss *issuer) *testRegistry {
	t.Helper()
	u := &testRegistry{t: t, iss: iss, service: "test-registry",
		reg: ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)))}
	u.seed = httptest.NewServer(u.reg)
	t.Cleanup(u.seed.Close)
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)
	u.host = strings.TrimPrefix(u.srv.URL, "http://")
	if iss != nil {
		u.realm = iss.srv.URL + "/token"
	}
	return u
}

func (u *testRegistry) setHook(h func(w http.ResponseWriter, r *http.Request) bool) {
	u.mu.Lock()
	u.hook = h
	u.mu.Unlock()
}

func (u *testRegistry) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.log...)
}

// repoOf extracts the repository from /v2/<repo>/(manifests|blobs|tags|referrers)/….
func repoOf(path string) string {
	for _, k := range []string{"/manifests/", "/blobs/", "/tags/", "/referrers/"} {
		if i := strings.LastIndex(path, k); i > len("/v2") {
			return path[len("/v2/"):i]
		}
	}
	return ""
}

func (u *testRegistry) serve(w http.ResponseWriter, r *http.Request) {
	authz := r.Header.Get("Authorization")
	u.mu.Lock()
	u.log = append(u.log, r.Method+" "+r.URL.Path+" auth="+strings.Fields(authz + " none")[0])
	hook := u.hook
	u.mu.Unlock()
	repo := repoOf(r.URL.Path)
	switch {
	case u.iss != nil:
		cl, ok := u.iss.verify(strings.TrimPrefix(authz, "Bearer "))
		// Reads need pull, writes push; the challenge names what the request needs, as
		// distribution's token auth does ("repository:R:pull,push" on an upload).
		need, actions := repo+":pull", "pull"
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			need, actions = repo+":push", "pull,push"
		}
		granted := false
		for _, a := range cl.Access {
			granted = granted || a == need
		}
		if !ok || !strings.HasPrefix(authz, "Bearer ") || !granted {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service=%q,scope="repository:%s:%s"`, u.realm, u.service, repo, actions))
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
	case u.basic[0] != "":
		user, pass, ok := r.BasicAuth()
		if !ok || user != u.basic[0] || pass != u.basic[1] {
			w.Header().Set("WWW-Authenticate", `Basic realm="shoal test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	}
	if hook != nil && hook(w, r) {
		return
	}
	u.reg.ServeHTTP(w, r)
}

// image seeds a random image (2 layers) as repo:tag and returns it.
func (u *testRegistry) image(repo, tag string) v1.Image {
	u.t.Helper()
	img, err := random.Image(4096, 2)
	if err != nil {
		u.t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(u.seed.URL, "http://") + "/" + repo + ":" + tag)
	if err != nil {
		u.t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		u.t.Fatalf("seeding %s: %v", ref, err)
	}
	return img
}

// fakeClock is the client's clock in token-lifetime tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

// testClient is a Client whose waits are recorded instead of slept, whose clock is fake,
// which fails the test on any dial to an address outside loopback, and which never asks
// DNS about a name the test did not map.
type testClient struct {
	*Client
	clock *fakeClock

	mu     sync.Mutex
	sleeps []time.Duration
	dials  []string
}

func (tc *testClient) waits() []time.Duration {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return append([]time.Duration(nil), tc.sleeps...)
}

func newTestClient(t *testing.T, cfg Config, names map[string]string) *testClient {
	t.Helper()
	tc := &testClient{clock: &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := newClient(cfg, logger, func(c *Client) {
		c.now = tc.clock.Now
		c.sleep = func(ctx context.Context, d time.Duration) error {
			tc.mu.Lock()
			tc.sleeps = append(tc.sleeps, d)
			tc.mu.Unlock()
			return ctx.Err()
		}
		c.resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			if ip, ok := names[host]; ok {
				return []netip.Addr{netip.MustParseAddr(ip)}, nil
			}
			t.Errorf("test client tried to resolve %q, which the test did not map", host)
			return nil, &net.DNSError{Err: "not mapped by the test", Name: host, IsNotFound: true}
		}
		c.dialHook = func(network, addr string) error {
			tc.mu.Lock()
			tc.dials = append(tc.dials, addr)
			tc.mu.Unlock()
			ap, err := netip.ParseAddrPort(addr)
			if err != nil || !ap.Addr().Unmap().IsLoopback() {
				t.Errorf("test client tried to dial %s, outside loopback", addr)
				return fmt.Errorf("dial %s blocked by the test", addr)
			}
			return nil
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	tc.Client = c
	return tc
}

// testWriter sends the client's log to t.Log, so secrets in logs would show in -v output
// and in the log-scanning assertions.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// cfgFor configures exactly one upstream, as tests use it.
func cfgFor(u *testRegistry, rc RegistryConfig) Config {
	rc.URL = u.srv.URL
	return Config{Registries: map[string]RegistryConfig{u.host: rc}, OnlyConfigured: true, Retries: 3}
}
