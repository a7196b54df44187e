package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/oci"
)

// pullAll fetches the manifest by tag and by digest and every layer, checking each digest,
// the way the daemon will.
func pullAll(t *testing.T, c *testClient, host, repo, tag string, want v1.Image) {
	t.Helper()
	ctx := t.Context()
	body, desc, err := c.GetManifest(ctx, host, repo, tag)
	if err != nil {
		t.Fatalf("GetManifest(%s:%s): %v", repo, tag, err)
	}
	wd := imgDigest(t, want)
	if desc.Digest != wd || desc.Size != int64(len(body)) || desc.MediaType == "" {
		t.Fatalf("GetManifest descriptor = %+v, want digest %s size %d and a media type", desc, wd, len(body))
	}
	if _, _, err := c.GetManifest(ctx, host, repo, wd.String()); err != nil {
		t.Fatalf("GetManifest by digest: %v", err)
	}
	var m struct {
		Config struct{ Digest digest.Digest }
		Layers []struct{ Digest digest.Digest }
	}
	if err := jsonUnmarshalT(body, &m); err != nil {
		t.Fatal(err)
	}
	for _, l := range append(m.Layers, struct{ Digest digest.Digest }{m.Config.Digest}) {
		rc, size, err := c.GetBlob(ctx, host, repo, l.Digest, 0)
		if err != nil {
			t.Fatalf("GetBlob(%s): %v", l.Digest, err)
		}
		v := l.Digest.Verifier()
		n, err := io.Copy(v, rc)
		rc.Close()
		if err != nil || !v.Verified() || n != size {
			t.Fatalf("GetBlob(%s): read %d of %d bytes, err %v, verified %v", l.Digest, n, size, err, v.Verified())
		}
	}
}

func TestAnonymousTokenFlow(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, nil, true)
	up := newUpstream(t, iss)
	img := up.image("library/alpine", "3.20")
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)

	pullAll(t, c, up.host, "library/alpine", "3.20", img)

	if got := iss.gets.Load(); got != 1 {
		t.Errorf("token GETs = %d, want 1 (one token for the repository, reused)", got)
	}
	if got := iss.posts.Load(); got != 0 {
		t.Errorf("token POSTs = %d, want 0 without credentials", got)
	}
	if c.Private(up.host, "library/alpine") {
		t.Error("anonymous pull reported as private")
	}
	// Only the very first request went out without a token.
	reqs := up.requests()
	for _, r := range reqs[1:] {
		if strings.HasSuffix(r, "auth=none") {
			t.Errorf("request after the first had no token: %q (all: %q)", r, reqs)
		}
	}
}

func TestCredentialedTokenViaPOST(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, map[string]string{"alice": "s3cret-pw"}, false)
	up := newUpstream(t, iss)
	img := up.image("team/app", "v1")
	c := newTestClient(t, cfgFor(up, RegistryConfig{Username: "alice", Password: "s3cret-pw"}), nil)

	pullAll(t, c, up.host, "team/app", "v1", img)
	if p, g := iss.posts.Load(), iss.gets.Load(); p != 1 || g != 0 {
		t.Errorf("token POSTs/GETs = %d/%d, want 1/0", p, g)
	}
	if !c.Private(up.host, "team/app") {
		t.Error("pull with credentials not reported as private")
	}
}

func TestOAuthPOSTFallsBackToGET(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusBadRequest} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			t.Parallel()
			iss := newIssuer(t, map[string]string{"alice": "pw"}, false)
			iss.postStatus = status
			up := newUpstream(t, iss)
			img := up.image("team/app", "v1")
			c := newTestClient(t, cfgFor(up, RegistryConfig{Username: "alice", Password: "pw"}), nil)
			pullAll(t, c, up.host, "team/app", "v1", img)
			if p, g := iss.posts.Load(), iss.gets.Load(); p != 1 || g != 1 {
				t.Errorf("token POSTs/GETs = %d/%d, want 1/1 (POST refused once, then GET with Basic)", p, g)
			}
		})
	}
}

func TestPrivateRepoWithoutCredentials(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, map[string]string{"alice": "pw"}, false)
	up := newUpstream(t, iss)
	up.image("team/app", "v1")
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	_, _, err := c.GetManifest(t.Context(), up.host, "team/app", "v1")
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusUnauthorized || ue.Code != "UNAUTHORIZED" {
		t.Fatalf("GetManifest of a private repo anonymously: err = %v, want *Error 401 UNAUTHORIZED", err)
	}
	if got := iss.gets.Load(); got != 1 {
		t.Errorf("token fetches = %d, want 1 (no loop on a refused anonymous token)", got)
	}
	if w := c.waits(); len(w) != 0 {
		t.Errorf("401 was retried with waits %v", w)
	}
}

func TestBadCredentialsErrorHasNoSecret(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, map[string]string{"alice": "right"}, false)
	up := newUpstream(t, iss)
	up.image("team/app", "v1")
	c := newTestClient(t, cfgFor(up, RegistryConfig{Username: "alice", Password: "wrong-s3cret"}), nil)
	_, err := c.HeadManifest(t.Context(), up.host, "team/app", "v1")
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusUnauthorized {
		t.Fatalf("err = %v, want *Error 401", err)
	}
	if strings.Contains(err.Error(), "wrong-s3cret") {
		t.Fatalf("error reveals the password: %v", err)
	}
}

func TestTokenReuseAndExpiry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		expiresIn int
		fresh     time.Duration // still reused after this long
		stale     time.Duration // refetched after this long (from the start)
	}{
		{"expires_in 300", 300, 260 * time.Second, 300 * time.Second},
		{"expires_in absent: 60s", 0, 50 * time.Second, 60 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			iss := newIssuer(t, nil, true)
			iss.expiresIn = tc.expiresIn
			up := newUpstream(t, iss)
			up.image("library/busybox", "latest")
			c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
			head := func() {
				t.Helper()
				if _, err := c.HeadManifest(t.Context(), up.host, "library/busybox", "latest"); err != nil {
					t.Fatal(err)
				}
			}
			head()
			head()
			c.clock.Advance(tc.fresh)
			head()
			if got := iss.gets.Load(); got != 1 {
				t.Fatalf("token fetches after %s = %d, want 1", tc.fresh, got)
			}
			c.clock.Advance(tc.stale - tc.fresh)
			head()
			if got := iss.gets.Load(); got != 2 {
				t.Fatalf("token fetches after %s = %d, want 2 (refetched at expiry)", tc.stale, got)
			}
		})
	}
}

func TestConcurrentRequestsShareOneTokenFetch(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, nil, true)
	up := newUpstream(t, iss)
	img := up.image("library/nginx", "latest")
	d := imgDigest(t, img)
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			_, _, err := c.GetManifest(t.Context(), up.host, "library/nginx", d.String())
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := iss.gets.Load(); got != 1 {
		t.Errorf("token fetches for 20 concurrent requests = %d, want 1", got)
	}
}

func TestRefetchTokenOn401(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, nil, true)
	up := newUpstream(t, iss)
	up.image("library/redis", "7")
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	if _, err := c.HeadManifest(t.Context(), up.host, "library/redis", "7"); err != nil {
		t.Fatal(err)
	}
	iss.generation.Add(1) // the registry stops accepting every token issued so far
	if _, err := c.HeadManifest(t.Context(), up.host, "library/redis", "7"); err != nil {
		t.Fatalf("after revocation: %v", err)
	}
	if got := iss.gets.Load(); got != 2 {
		t.Errorf("token fetches = %d, want 2 (refetched once after the 401)", got)
	}
	// A token server that keeps issuing refused tokens: one refetch, then the 401 stands.
	up.setHook(nil)
	iss.mu.Lock()
	iss.anonPull = false
	iss.mu.Unlock()
	iss.generation.Add(1)
	_, err := c.HeadManifest(t.Context(), up.host, "library/redis", "7")
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusUnauthorized {
		t.Fatalf("err = %v, want *Error 401", err)
	}
	if got := iss.gets.Load(); got != 3 {
		t.Errorf("token fetches = %d, want 3 (exactly one refetch per refused request)", got)
	}
}

func TestBasicAuth(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	up.basic = [2]string{"bob", "hunter2"}
	img := up.image("private/db", "1")
	c := newTestClient(t, cfgFor(up, RegistryConfig{Username: "bob", Password: "hunter2"}), nil)
	pullAll(t, c, up.host, "private/db", "1", img)
	if !c.Private(up.host, "private/db") {
		t.Error("Basic-authenticated pull not reported as private")
	}
	noCreds := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	_, err := noCreds.HeadManifest(t.Context(), up.host, "private/db", "1")
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusUnauthorized {
		t.Fatalf("without credentials: err = %v, want *Error 401", err)
	}
}

func TestBasicAuthFromPasswordFileAndDockerConfig(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	up.basic = [2]string{"bob", "from-file"}
	img := up.image("private/db", "1")
	dir := t.TempDir()
	pf := dir + "/pw"
	writeFile(t, pf, "from-file\n")
	c := newTestClient(t, cfgFor(up, RegistryConfig{Username: "bob", PasswordFile: pf}), nil)
	pullAll(t, c, up.host, "private/db", "1", img)

	dc := dir + "/config.json"
	auth := base64Std("bob:from-file")
	writeFile(t, dc, fmt.Sprintf(`{"auths":{"http://%s":{"auth":%q}}}`, up.host, auth))
	cfg := cfgFor(up, RegistryConfig{})
	cfg.DockerConfig = dc
	c2 := newTestClient(t, cfg, nil)
	pullAll(t, c2, up.host, "private/db", "1", img)
}

func TestChallengeRealmWithQuotedComma(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, nil, true)
	up := newUpstream(t, iss)
	up.realm = iss.srv.URL + `/token?tenant=a,b&x=\"q\"`
	up.image("library/alpine", "latest")
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	if _, err := c.HeadManifest(t.Context(), up.host, "library/alpine", "latest"); err != nil {
		t.Fatal(err)
	}
	iss.mu.Lock()
	q := iss.lastQuery
	iss.mu.Unlock()
	if !strings.Contains(q, "tenant=a%2Cb") && !strings.Contains(q, "tenant=a,b") {
		t.Errorf("token request query %q lost the realm's quoted comma", q)
	}
	if !strings.Contains(q, "service=test-registry") || !strings.Contains(q, "scope=repository%3Alibrary%2Falpine%3Apull") {
		t.Errorf("token request query %q lacks service or scope", q)
	}
}

func TestRedirectToCDNDropsAuthorization(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, nil, true)
	up := newUpstream(t, iss)
	img := up.image("library/alpine", "latest")
	layers, _ := img.Layers()
	ld := layerDigest(t, layers[0])
	blob := layerBytes(t, layers[0])

	var mu sync.Mutex
	var cdnAuth []string
	cdnHits := 0
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		cdnHits++
		cdnAuth = append(cdnAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		if r.URL.Query().Get("sig") != "ok" {
			http.Error(w, "bad signature", http.StatusForbidden)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	t.Cleanup(cdn.Close)
	up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
			http.Redirect(w, r, cdn.URL+"/cdn/"+strings.ReplaceAll(r.URL.Path, "/", "_")+"?sig=ok", http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	for _, off := range []int64{0, 100} {
		rc, size, err := c.GetBlob(t.Context(), up.host, "library/alpine", ld, off)
		if err != nil {
			t.Fatalf("GetBlob offset %d: %v", off, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, blob[off:]) || size != int64(len(blob)) {
			t.Fatalf("GetBlob offset %d: %d bytes (size %d), err %v; want %d bytes of %d", off, len(got), size, err, len(blob)-int(off), len(blob))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if cdnHits != 2 {
		t.Fatalf("CDN hits = %d, want 2 (redirects are never cached, but followed)", cdnHits)
	}
	for _, a := range cdnAuth {
		if a != "" {
			t.Errorf("Authorization %q was sent to the CDN", a)
		}
	}
	// The registry itself did get the token with each blob request.
	for _, r := range up.requests() {
		if strings.Contains(r, "/blobs/") && !strings.HasSuffix(r, "auth=Bearer") && !strings.HasSuffix(r, "auth=none") {
			t.Errorf("unexpected registry request %q", r)
		}
	}
}

func TestRedirectLoopStops(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		http.Redirect(w, r, r.URL.Path+"x", http.StatusFound)
		return true
	})
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	_, _, err := c.GetBlob(t.Context(), up.host, "a/b", digest.FromString("x"), 0)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "redirects") {
		t.Fatalf("err = %v, want a refusal after %d redirects", err, maxRedirects)
	}
	if n := len(up.requests()); n != maxRedirects {
		t.Errorf("registry saw %d requests, want %d", n, maxRedirects)
	}
}

func TestRetriesOn503ThenSuccess(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	img := up.image("library/alpine", "latest")
	var mu sync.Mutex
	fails := 2
	up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	desc, err := c.HeadManifest(t.Context(), up.host, "library/alpine", "latest")
	d := imgDigest(t, img)
	if err != nil || desc.Digest != d {
		t.Fatalf("HeadManifest = %v, %v; want %s after two 503s", desc, err, d)
	}
	w := c.waits()
	if len(w) != 2 || w[0] < backoffBase/2 || w[0] > backoffBase || w[1] < backoffBase || w[1] > 2*backoffBase {
		t.Errorf("waits = %v, want two exponential back-offs (%v±, %v±)", w, backoffBase, 2*backoffBase)
	}

	// Persistent 503: 1 + Retries attempts, then the typed error.
	mu.Lock()
	fails = 100
	mu.Unlock()
	before := len(up.requests())
	_, err = c.HeadManifest(t.Context(), up.host, "library/alpine", "latest")
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusServiceUnavailable {
		t.Fatalf("err = %v, want *Error 503", err)
	}
	if n := len(up.requests()) - before; n != 4 {
		t.Errorf("attempts = %d, want 4 (1 + 3 retries)", n)
	}
}

func TestNoRetryOn404(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	up.image("library/alpine", "3.19")
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	_, _, err := c.GetManifest(t.Context(), up.host, "library/alpine", "latest")
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusNotFound || ue.Code != "MANIFEST_UNKNOWN" {
		t.Fatalf("err = %v, want *Error 404 MANIFEST_UNKNOWN", err)
	}
	if n := len(up.requests()); n != 1 || len(c.waits()) != 0 {
		t.Errorf("404 was retried: %d requests, waits %v", n, c.waits())
	}
}

func TestRetryAfterOn429(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	up.image("library/alpine", "latest")
	var mu sync.Mutex
	retryAfter := "2"
	fails := 1
	up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("RateLimit-Limit", "100;w=21600")
		w.Header().Set("RateLimit-Remaining", "0;w=21600")
		if fails > 0 {
			fails--
			w.Header().Set("Retry-After", retryAfter)
			w.WriteHeader(http.StatusTooManyRequests)
			io.WriteString(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`)
			return true
		}
		return false
	})
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	if _, err := c.HeadManifest(t.Context(), up.host, "library/alpine", "latest"); err != nil {
		t.Fatal(err)
	}
	if w := c.waits(); !slices.Equal(w, []time.Duration{2 * time.Second}) {
		t.Errorf("waits = %v, want [2s] from Retry-After", w)
	}
	rl, ok := c.RateLimit(up.host)
	if !ok || rl.Limit != 100 || rl.Remaining != 0 || rl.Window != 6*time.Hour || !rl.Seen.Equal(c.clock.Now()) {
		t.Errorf("RateLimit = %+v, %v; want 100/0 per 6h seen now", rl, ok)
	}

	// A Retry-After too long to wait for goes back to the caller at once.
	mu.Lock()
	fails, retryAfter = 1, "3600"
	mu.Unlock()
	_, err := c.HeadManifest(t.Context(), up.host, "library/alpine", "latest")
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusTooManyRequests || ue.RetryAfter != time.Hour {
		t.Fatalf("err = %#v, want *Error 429 with RetryAfter 1h", err)
	}
	if w := c.waits(); len(w) != 1 {
		t.Errorf("waited %v for a 1h Retry-After", w[1:])
	}
}

func TestHeadManifestFallsBackToGET(t *testing.T) {
	t.Parallel()
	for _, drop := range []string{"Docker-Content-Digest", "Content-Length"} {
		t.Run(drop, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t, nil)
			img := up.image("library/alpine", "latest")
			up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method != http.MethodHead {
					return false
				}
				rec := httptest.NewRecorder()
				up.reg.ServeHTTP(rec, r)
				for k, v := range rec.Header() {
					if k != drop {
						w.Header()[k] = v
					}
				}
				w.WriteHeader(rec.Code)
				return true
			})
			c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
			desc, err := c.HeadManifest(t.Context(), up.host, "library/alpine", "latest")
			if err != nil {
				t.Fatal(err)
			}
			d := imgDigest(t, img)
			raw, _ := img.RawManifest()
			mt, _ := img.MediaType()
			if desc.Digest != d || desc.Size != int64(len(raw)) || desc.MediaType != string(mt) {
				t.Errorf("desc = %+v, want %s %d %s", desc, d, len(raw), mt)
			}
			reqs := up.requests()
			if len(reqs) != 2 || !strings.HasPrefix(reqs[0], "HEAD ") || !strings.HasPrefix(reqs[1], "GET ") {
				t.Errorf("requests = %q, want HEAD then GET", reqs)
			}
		})
	}
}

func TestHeadManifestUsesHeaders(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	img := up.image("library/alpine", "latest")
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	desc, err := c.HeadManifest(t.Context(), up.host, "library/alpine", "latest")
	d := imgDigest(t, img)
	raw, _ := img.RawManifest()
	if err != nil || desc.Digest != d || desc.Size != int64(len(raw)) {
		t.Fatalf("HeadManifest = %+v, %v", desc, err)
	}
	if reqs := up.requests(); len(reqs) != 1 || !strings.HasPrefix(reqs[0], "HEAD ") {
		t.Errorf("requests = %q, want one HEAD", reqs)
	}
}

func TestGetManifestDigestMismatch(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	img := up.image("library/alpine", "latest")
	d := imgDigest(t, img)
	up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/manifests/") {
			return false
		}
		rec := httptest.NewRecorder()
		up.reg.ServeHTTP(rec, r)
		body := append(rec.Body.Bytes(), ' ') // one byte more: same JSON, another digest
		w.Header().Set("Content-Type", rec.Header().Get("Content-Type"))
		w.Header().Set("Docker-Content-Digest", d.String())
		w.Write(body)
		return true
	})
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	_, _, err := c.GetManifest(t.Context(), up.host, "library/alpine", d.String())
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err = %v, want ErrDigestMismatch", err)
	}
	// By tag the body's own digest is reported, not the upstream's header.
	_, desc, err := c.GetManifest(t.Context(), up.host, "library/alpine", "latest")
	if err != nil || desc.Digest == d {
		t.Fatalf("by tag: desc %+v err %v; want the digest of the bytes received", desc, err)
	}
}

func TestOversizeManifestRefused(t *testing.T) {
	t.Parallel()
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t, nil)
			up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
				w.Header().Set("Content-Type", oci.MediaTypeDockerManifest)
				if !chunked {
					w.Header().Set("Content-Length", strconv.Itoa(oci.MaxManifestSize+1))
				}
				chunk := bytes.Repeat([]byte{' '}, 64<<10)
				for n := 0; n <= oci.MaxManifestSize; n += len(chunk) {
					if _, err := w.Write(chunk); err != nil {
						return true
					}
				}
				return true
			})
			c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
			_, _, err := c.GetManifest(t.Context(), up.host, "library/alpine", "latest")
			if !errors.Is(err, ErrManifestTooLarge) {
				t.Fatalf("err = %v, want ErrManifestTooLarge", err)
			}
		})
	}
}

func TestGetBlobRangeIgnored(t *testing.T) {
	t.Parallel()
	up := newUpstream(t, nil)
	img := up.image("library/alpine", "latest")
	layers, _ := img.Layers()
	ld := layerDigest(t, layers[1])
	blob := layerBytes(t, layers[1])
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	// go-containerregistry's registry answers "bytes=N-" with 416; shoal then takes the
	// whole blob and skips.
	rc, size, err := c.GetBlob(t.Context(), up.host, "library/alpine", ld, 1000)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if size != int64(len(blob)) || !bytes.Equal(got, blob[1000:]) {
		t.Fatalf("got %d bytes, size %d; want %d, %d", len(got), size, len(blob)-1000, len(blob))
	}
}

func TestGetPassThrough(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, nil, true)
	up := newUpstream(t, iss)
	up.image("library/alpine", "a")
	up.image("library/alpine", "b")
	c := newTestClient(t, cfgFor(up, RegistryConfig{}), nil)
	resp, err := c.Get(t.Context(), up.host, "library/alpine", "tags/list", "n=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"tags":["a"]`) {
		t.Errorf("tags/list?n=1 = %s", body)
	}
	if _, err := c.Get(t.Context(), up.host, "library/alpine", "../../etc", ""); err == nil {
		t.Error("a subpath with .. was sent")
	}
	_, err = c.Get(t.Context(), up.host, "library/nothing", "tags/list", "")
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusNotFound {
		t.Errorf("tags of a missing repo: err = %v, want *Error 404", err)
	}
}

func TestEndpoint(t *testing.T) {
	t.Parallel()
	c, err := New(Config{Registries: map[string]RegistryConfig{"127.0.0.1:5001": {URL: "http://127.0.0.1:5001"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ host, want string }{
		{"docker.io", DockerHubEndpoint},
		{"index.docker.io", DockerHubEndpoint},
		{"ghcr.io", "https://ghcr.io"},
		{"registry.example.com:5443", "https://registry.example.com:5443"},
		{"127.0.0.1:5001", "http://127.0.0.1:5001"},
		{"127.0.0.1:5002", ""},
		{"10.0.0.1", ""},
		{"[::1]:5000", ""},
		{"169.254.169.254", ""},
		{"localhost:5000", ""},
		{"registry", ""},
		{"metadata.google.internal", ""},
		{"evil.com/x", ""},
		{"", ""},
	} {
		u, err := c.Endpoint(tc.host)
		switch {
		case tc.want == "" && !errors.Is(err, ErrUnknownRegistry):
			t.Errorf("Endpoint(%q) = %v, %v; want ErrUnknownRegistry", tc.host, u, err)
		case tc.want != "" && (err != nil || u.String() != tc.want):
			t.Errorf("Endpoint(%q) = %v, %v; want %s", tc.host, u, err, tc.want)
		}
	}
	only, _ := New(Config{OnlyConfigured: true, Registries: map[string]RegistryConfig{"ghcr.io": {}}}, nil)
	if _, err := only.Endpoint("docker.io"); !errors.Is(err, ErrUnknownRegistry) {
		t.Errorf("OnlyConfigured: Endpoint(docker.io) err = %v", err)
	}
	if u, err := only.Endpoint("ghcr.io"); err != nil || u.String() != "https://ghcr.io" {
		t.Errorf("OnlyConfigured: Endpoint(ghcr.io) = %v, %v", u, err)
	}
}

func TestSecretsStayOutOfLogsAndErrors(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, map[string]string{"alice": "pa55-w0rd"}, false)
	up := newUpstream(t, iss)
	img := up.image("team/app", "v1")
	var logs bytes.Buffer
	cfg := cfgFor(up, RegistryConfig{Username: "alice", Password: "pa55-w0rd"})
	c, err := New(cfg, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	tc := &testClient{Client: c, clock: &fakeClock{}}
	pullAll(t, tc, up.host, "team/app", "v1", img)
	var errs []string
	iss.generation.Add(1)
	iss.mu.Lock()
	iss.users["alice"] = "changed" // the configured password now fails
	iss.mu.Unlock()
	for _, call := range []func() error{
		func() error { _, err := c.HeadManifest(t.Context(), up.host, "team/app", "v1"); return err },
		func() error { _, _, err := c.GetManifest(t.Context(), up.host, "team/app", "nope"); return err },
		func() error { _, err := c.Get(t.Context(), up.host, "team/app", "tags/list", ""); return err },
	} {
		err := call()
		if err == nil {
			t.Fatal("call succeeded with a revoked password")
		}
		errs = append(errs, err.Error())
	}
	if !strings.Contains(logs.String(), "fetched upstream token") {
		t.Fatalf("debug log did not record the token fetch: %s", logs.String())
	}
	iss.mu.Lock()
	secrets := append([]string{"pa55-w0rd", base64Std("alice:pa55-w0rd")}, iss.issued...)
	iss.mu.Unlock()
	for _, s := range secrets {
		for _, where := range append([]string{logs.String()}, errs...) {
			if strings.Contains(where, s) {
				t.Errorf("secret %.12s… appears in %q", s, where)
			}
		}
	}
}
