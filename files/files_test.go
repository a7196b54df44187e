package files

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func TestParseHFFile(t *testing.T) {
	for _, tc := range []struct {
		in       string
		ok       bool
		repo     string
		rev, pth string
	}{
		{"acme/m/resolve/main/config.json", true, "acme/m", "main", "config.json"},
		{"gpt2/resolve/main/model.safetensors", true, "gpt2", "main", "model.safetensors"},
		{"datasets/acme/d/resolve/refs%2Fpr%2F1/data/train-0.parquet", true, "datasets/acme/d", "refs/pr/1", "data/train-0.parquet"},
		{"acme/m/resolve/main/../../../etc/passwd", false, "", "", ""},
		{"a/b/c/resolve/main/x", false, "", "", ""},
		{"acme/m/resolve/main/", false, "", "", ""},
		{"acme/m/blob/main/x", false, "", "", ""},
	} {
		f, ok := parseHFFile(tc.in)
		if ok != tc.ok || ok && (f.repo != tc.repo || f.rev != tc.rev || f.path != tc.pth) {
			t.Errorf("parseHFFile(%q) = %+v, %v; want %s %s %s, %v", tc.in, f, ok, tc.repo, tc.rev, tc.pth, tc.ok)
		}
	}
}

func TestGuardName(t *testing.T) {
	for in, want := range map[string]string{
		"/hf/acme/m/resolve/main/x":                         "hf/acme/m",
		"/hf/datasets/acme/d/resolve/main/x":                "hf/datasets/acme/d",
		"/hf/api/models/acme/m/revision/main":               "hf/acme/m",
		"/hf/api/datasets/acme/d/tree/main":                 "hf/datasets/acme/d",
		"/https://github.com/o/r/releases/download/v1/f":    "github.com/o/r",
		"/https:/github.com/o/r/releases/download/v1/f":     "github.com/o/r",
		"/https://raw.githubusercontent.com/o/r/main/x.txt": "raw.githubusercontent.com/o/r",
	} {
		reg, repo, ok := GuardName(in)
		if !ok || reg+"/"+repo != want {
			t.Errorf("GuardName(%q) = %q %q %v, want %q", in, reg, repo, ok, want)
		}
	}
	if _, _, ok := GuardName("/https://evil.example/x"); ok {
		t.Error("an unknown host is a file path")
	}
}

// A peer names a file by an encoded path: only pinned resolve and release-download paths are
// fetched, so a peer cannot make this node fetch anything else.
func TestPeerNamedSourceIsPinned(t *testing.T) {
	h := &Handler{sources: map[digest.Digest]blobSource{}}
	d := digest.FromString("x")
	for p, ok := range map[string]bool{
		"/acme/m/resolve/0123456789abcdef0123456789abcdef01234567/w.bin": true,
		"/acme/m/resolve/main/w.bin":                                     false, // not pinned
		"/api/models/acme/m":                                             false,
		"/acme/tool/releases/download/v1/t.tgz":                          false, // wrong host below
	} {
		if _, got := h.source(HostHF, repoEnc.EncodeToString([]byte(p)), d); got != ok {
			t.Errorf("huggingface.co %s: accepted %v, want %v", p, got, ok)
		}
	}
	if _, ok := h.source(HostGitHub, repoEnc.EncodeToString([]byte("/acme/tool/releases/download/v1/t.tgz")), d); !ok {
		t.Error("a release download path is refused")
	}
	if _, ok := h.source(HostGitHub, repoEnc.EncodeToString([]byte("/acme/tool/archive/../../x")), d); ok {
		t.Error("an archive path is accepted from a peer")
	}
}

// A redirect to a host that is not configured is refused, and the token never leaves the host
// it belongs to.
func TestRedirectToUnknownHostRefused(t *testing.T) {
	var sawAuth []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawAuth = append(sawAuth, r.URL.Path+"="+r.Header.Get("Authorization"))
		switch r.URL.Path {
		case "/evil":
			http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
		case "/cdn":
			http.Redirect(w, r, "https://cdn-lfs.hf.co/file", http.StatusFound)
		default:
			_, _ = io.WriteString(w, "ok")
		}
	}))
	defer srv.Close()
	cfg := DefaultConfig()
	cfg.Hosts = map[string]string{HostHF: srv.URL, "cdn-lfs.hf.co": srv.URL}
	cfg.HFToken = "hf_secret"
	h, err := New(cfg, t.TempDir(), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.c.do(withAuth(t.Context()), http.MethodGet, "https://huggingface.co/evil", nil, nil, true); err == nil || !strings.Contains(err.Error(), ErrRefused.Error()) {
		t.Errorf("redirect to a metadata address: err %v, want refused", err)
	}
	resp, err := h.c.do(withAuth(t.Context()), http.MethodGet, "https://huggingface.co/cdn", nil, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := strings.Join(sawAuth, " "); !strings.Contains(got, "/cdn=Bearer hf_secret") || !strings.Contains(got, "/file=") || strings.Contains(got, "/file=Bearer") {
		t.Errorf("Authorization per request: %s (want the token on huggingface.co only)", got)
	}
	if _, err := h.c.do(t.Context(), http.MethodGet, "https://example.com/", nil, nil, true); err == nil {
		t.Error("a request to an unconfigured host went out")
	}
}

// Node-local files stay within their total bound, least recently served first.
func TestLocalCacheTrims(t *testing.T) {
	l, err := newLocalCache(t.TempDir(), 0, 2500)
	if err != nil {
		t.Fatal(err)
	}
	fill := func(key string) {
		t.Helper()
		body := strings.Repeat("x", 1000)
		if err := l.fill(t.Context(), key, func(context.Context) (io.ReadCloser, int64, error) {
			return io.NopCloser(strings.NewReader(body)), int64(len(body)), nil
		}, ""); err != nil {
			t.Fatal(err)
		}
	}
	fill("a")
	fill("b")
	old := time.Now().Add(-time.Hour)
	_ = os.Chtimes(l.path("a"), old, old) // a: served long ago
	fill("c")
	for key, want := range map[string]bool{"a": false, "b": true, "c": true} {
		_, err := os.Stat(l.path(key))
		if (err == nil) != want {
			t.Errorf("%s kept = %v, want %v", key, err == nil, want)
		}
	}
}
