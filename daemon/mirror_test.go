package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/shoal-mirror/shoal/internal/mirror"
	"github.com/shoal-mirror/shoal/internal/testutil"
	"github.com/shoal-mirror/shoal/upstream"
)

// upstreamLog is a real in-process registry (go-containerregistry's pkg/registry) behind a
// handler that records requests and can corrupt blobs or fail, like a flaky upstream would.
type upstreamLog struct {
	mu       sync.Mutex
	reqs     []string // "METHOD path"
	corrupt  map[string]bool
	down     atomic.Bool
	srv      *httptest.Server
	registry http.Handler
}

func newUpstream(t *testing.T) *upstreamLog {
	t.Helper()
	u := &upstreamLog{corrupt: map[string]bool{}, registry: registry.New(registry.Logger(nopLog()))}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		u.mu.Lock()
		u.reqs = append(u.reqs, r.Method+" "+r.URL.Path)
		bad := u.corrupt[r.URL.Path]
		u.mu.Unlock()
		if bad {
			rec := httptest.NewRecorder()
			u.registry.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			if len(body) > 0 {
				body[len(body)/2] ^= 0xff
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(body)
			return
		}
		u.registry.ServeHTTP(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstreamLog) host() string { return strings.TrimPrefix(u.srv.URL, "http://") }

func (u *upstreamLog) count(method, pathPart string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, r := range u.reqs {
		if strings.HasPrefix(r, method+" ") && strings.Contains(r, pathPart) {
			n++
		}
	}
	return n
}

func (u *upstreamLog) reset() {
	u.mu.Lock()
	u.reqs = nil
	u.mu.Unlock()
}

func nopLog() *log.Logger { return log.New(io.Discard, "", 0) }

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("SHOAL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startDaemon runs a real daemon on loopback whose default registry is the given upstream.
func startDaemon(t *testing.T, up *upstreamLog, mod ...func(*Config)) *Daemon {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.DefaultRegistry = up.host()
	cfg.Upstream.OnlyConfigured = true
	cfg.P2PEnabled = false
	cfg.SetRegistry(up.host(), upstream.RegistryConfig{URL: up.srv.URL})
	for _, f := range mod {
		f(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatalf("daemon.New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon.Run: %v", err)
		}
	})
	return d
}

func pushRandom(t *testing.T, up *upstreamLog, repo string, size int64, layers int) v1.Image {
	t.Helper()
	img, err := random.Image(size, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(up.host()+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return img
}

// pullThrough pulls repo:tag through the mirror with go-containerregistry's client and checks
// every byte against its digest, as a real client does.
func pullThrough(t *testing.T, d *Daemon, repoTag string) (v1.Image, error) {
	t.Helper()
	ref, err := name.ParseReference(d.Addr()+"/"+repoTag, name.Insecure)
	if err != nil {
		return nil, err
	}
	img, err := remote.Image(ref)
	if err != nil {
		return nil, err
	}
	return img, validate.Image(img)
}

func mustDigest(t *testing.T, img v1.Image) v1.Hash {
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestPullThroughThenFromStore(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/app", 1<<20, 3)
	d := startDaemon(t, up)
	up.reset()

	got, err := pullThrough(t, d, "test/app:latest")
	if err != nil {
		t.Fatalf("first pull: %v", err)
	}
	if mustDigest(t, got) != mustDigest(t, img) {
		t.Fatalf("digest through mirror %s != upstream %s", mustDigest(t, got), mustDigest(t, img))
	}
	if n := up.count("GET", "/blobs/"); n != 4 { // 3 layers + config
		t.Errorf("first pull: %d upstream blob GETs, want 4", n)
	}

	up.reset()
	if _, err := pullThrough(t, d, "test/app:latest"); err != nil {
		t.Fatalf("second pull: %v", err)
	}
	if n := up.count("GET", "/blobs/"); n != 0 {
		t.Errorf("second pull: %d upstream blob GETs, want 0", n)
	}
	if n := up.count("GET", "/manifests/sha256:"); n != 0 {
		t.Errorf("second pull: %d upstream manifest-by-digest GETs, want 0", n)
	}
}

func TestConcurrentColdPullsShareOneUpstreamFetch(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/busy", 4<<20, 3)
	d := startDaemon(t, up)
	up.reset()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := pullThrough(t, d, "test/busy:latest")
			if err == nil && mustDigest(t, got) != mustDigest(t, img) {
				err = fmt.Errorf("wrong image digest")
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("pull: %v", err)
		}
	}
	layers, _ := img.Layers()
	for _, l := range layers {
		dg, _ := l.Digest()
		if n := up.count("GET", "/blobs/"+dg.String()); n != 1 {
			t.Errorf("layer %s: %d upstream GETs for 20 concurrent pulls, want 1", dg, n)
		}
	}
}

func TestCorruptUpstreamBlobIsNeverServedOrStored(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/bad", 256<<10, 1)
	layers, _ := img.Layers()
	dg, _ := layers[0].Digest()
	path := "/v2/test/bad/blobs/" + dg.String()
	d := startDaemon(t, up)
	up.mu.Lock()
	up.corrupt[path] = true
	up.mu.Unlock()

	resp, err := http.Get("http://" + d.Addr() + path)
	if err != nil {
		t.Fatal(err)
	}
	body, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if rerr == nil && int64(len(body)) == mustSize(t, layers[0]) {
		t.Fatalf("client received a complete body of corrupted bytes (status %d)", resp.StatusCode)
	}

	up.mu.Lock()
	up.corrupt[path] = false
	up.mu.Unlock()
	up.reset()
	resp, err = http.Get("http://" + d.Addr() + path)
	if err != nil {
		t.Fatal(err)
	}
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after upstream recovered: status %d err %v", resp.StatusCode, err)
	}
	if got := v1Hash(body); got != dg {
		t.Fatalf("served %s, want %s", got, dg)
	}
	if up.count("GET", path) != 1 || resp.Header.Get(mirror.HeaderSource) != "upstream" {
		t.Fatalf("corrupted bytes were stored: second fetch came from %q", resp.Header.Get(mirror.HeaderSource))
	}
}

func mustSize(t *testing.T, l v1.Layer) int64 {
	n, err := l.Size()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func v1Hash(b []byte) v1.Hash {
	h, _, _ := v1.SHA256(strings.NewReader(string(b)))
	return h
}

func TestStaleTagWhenUpstreamDown(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/stale", 64<<10, 1)
	d := startDaemon(t, up, func(c *Config) { c.TagTTL = 0 })
	if _, err := pullThrough(t, d, "test/stale:latest"); err != nil {
		t.Fatal(err)
	}
	up.down.Store(true)
	got, err := pullThrough(t, d, "test/stale:latest")
	if err != nil {
		t.Fatalf("pull with upstream down: %v", err)
	}
	if mustDigest(t, got) != mustDigest(t, img) {
		t.Fatal("wrong digest")
	}
	resp, err := http.Get("http://" + d.Addr() + "/v2/test/stale/manifests/latest")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get(mirror.HeaderStale) != "true" {
		t.Fatalf("status %d, %s=%q; want 200 and stale", resp.StatusCode, mirror.HeaderStale, resp.Header.Get(mirror.HeaderStale))
	}
}

func TestManifestHeadersMatchUpstream(t *testing.T) {
	up := newUpstream(t)
	pushRandom(t, up, "test/hdr", 1024, 1)
	d := startDaemon(t, up)
	accept := "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
	do := func(base string) http.Header {
		req, _ := http.NewRequest(http.MethodHead, base+"/v2/test/hdr/manifests/latest", nil)
		req.Header.Set("Accept", accept)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("HEAD %s: %d", base, resp.StatusCode)
		}
		return resp.Header
	}
	want, got := do(up.srv.URL), do("http://"+d.Addr())
	for _, k := range []string{"Content-Type", "Docker-Content-Digest", "Content-Length"} {
		if got.Get(k) != want.Get(k) {
			t.Errorf("%s: mirror %q, upstream %q", k, got.Get(k), want.Get(k))
		}
	}
}

func TestBadInputGetsOCIErrors(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/ok", 1000, 1)
	layers, _ := img.Layers()
	dg, _ := layers[0].Digest()
	d := startDaemon(t, up)
	base := "http://" + d.Addr()
	long := strings.Repeat("a/", 130) + "x"
	cases := []struct {
		name, method, path, rng string
		status                  int
		code                    string
	}{
		{"dot-dot name", "GET", "/v2/../x/manifests/v1", "", 400, "NAME_INVALID"},
		{"upper case", "GET", "/v2/Test/Ok/manifests/latest", "", 400, "NAME_INVALID"},
		{"too long", "GET", "/v2/" + long + "/manifests/latest", "", 400, "NAME_INVALID"},
		{"bad digest", "GET", "/v2/test/ok/blobs/sha256:nothex", "", 400, "DIGEST_INVALID"},
		{"short digest", "GET", "/v2/test/ok/blobs/sha256:abcd", "", 400, "DIGEST_INVALID"},
		{"unknown algo", "GET", "/v2/test/ok/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", "", 400, "DIGEST_INVALID"},
		{"bad tag", "GET", "/v2/test/ok/manifests/-bad", "", 400, "MANIFEST_INVALID"},
		{"unknown registry in ns", "GET", "/v2/test/ok/manifests/latest?ns=127.0.0.1:1", "", 404, "NAME_UNKNOWN"},
		{"ns not a host", "GET", "/v2/test/ok/manifests/latest?ns=a%20b", "", 400, "NAME_INVALID"},
		{"unknown manifest", "GET", "/v2/test/ok/manifests/nope", "", 404, "MANIFEST_UNKNOWN"},
		{"unknown blob", "GET", "/v2/test/ok/blobs/sha256:" + strings.Repeat("0", 64), "", 404, "BLOB_UNKNOWN"},
		{"push POST", "POST", "/v2/test/ok/blobs/uploads/", "", 405, "UNSUPPORTED"},
		{"push PUT", "PUT", "/v2/test/ok/manifests/v2", "", 405, "UNSUPPORTED"},
		{"DELETE", "DELETE", "/v2/test/ok/blobs/" + dg.String(), "", 405, "UNSUPPORTED"},
		{"PATCH", "PATCH", "/v2/test/ok/blobs/uploads/x", "", 405, "UNSUPPORTED"},
		{"range past end", "GET", "/v2/test/ok/blobs/" + dg.String(), "bytes=999999999-", 416, "RANGE_INVALID"},
		{"range garbage", "GET", "/v2/test/ok/blobs/" + dg.String(), "bytes=x-y", 416, "RANGE_INVALID"},
		{"range reversed", "GET", "/v2/test/ok/blobs/" + dg.String(), "bytes=9-2", 416, "RANGE_INVALID"},
		{"not v2", "GET", "/v1/_ping", "", 404, "NAME_UNKNOWN"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, err := http.NewRequest(c.method, base+c.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if c.rng != "" {
				req.Header.Set("Range", c.rng)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct {
				Errors []struct{ Code string } `json:"errors"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("status %d, body is not OCI error JSON: %v", resp.StatusCode, err)
			}
			if resp.StatusCode != c.status || len(body.Errors) != 1 || body.Errors[0].Code != c.code {
				t.Fatalf("got %d %+v, want %d %s", resp.StatusCode, body.Errors, c.status, c.code)
			}
		})
	}
}

func TestRangeOnCachedAndInFlightBlobs(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/rng", 1<<20, 1)
	layers, _ := img.Layers()
	dg, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	full, _ := io.ReadAll(rc)
	d := startDaemon(t, up)
	url := "http://" + d.Addr() + "/v2/test/rng/blobs/" + dg.String()
	for _, pass := range []string{"cold", "cached"} {
		for _, c := range []struct {
			rng        string
			start, end int
		}{{"bytes=0-9", 0, 10}, {"bytes=100-", 100, len(full)}, {"bytes=-5", len(full) - 5, len(full)}} {
			req, _ := http.NewRequest("GET", url, nil)
			req.Header.Set("Range", c.rng)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 206 {
				t.Fatalf("%s %s: status %d err %v", pass, c.rng, resp.StatusCode, err)
			}
			wantCR := fmt.Sprintf("bytes %d-%d/%d", c.start, c.end-1, len(full))
			if resp.Header.Get("Content-Range") != wantCR || string(b) != string(full[c.start:c.end]) {
				t.Fatalf("%s %s: Content-Range %q (want %q), %d bytes", pass, c.rng, resp.Header.Get("Content-Range"), wantCR, len(b))
			}
		}
		// Let the cold fill finish before the cached pass.
		waitFor(t, func() bool {
			resp, err := http.Head(url)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.Header.Get(mirror.HeaderSource) == "store"
		})
	}
}

// waitFor polls cond with a deadline; it is how tests wait for background work without sleeping
// a fixed time.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, "the condition", cond)
}

func TestPingAndHealth(t *testing.T) {
	up := newUpstream(t)
	d := startDaemon(t, up)
	resp, err := http.Get("http://" + d.Addr() + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Distribution-Api-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/: %d %v", resp.StatusCode, resp.Header)
	}
}
