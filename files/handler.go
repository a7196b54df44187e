package files

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/upstream"
)

// Blobs is the daemon's blob path. ServeBlob answers r with the content of ref.Digest from the
// store, a download in flight, a peer or the upstream, whose bytes come from
// Handler.OpenBlob(ref.Registry, ref.Repo, ...), and never sends the last byte before the
// digest checked. Headers already set on w (X-Repo-Commit, ETag, ...) are kept.
type Blobs interface {
	ServeBlob(w http.ResponseWriter, r *http.Request, ref BlobRef) error
}

// BlobRef names a file that has a sha256 digest: Registry is the logical host (HostHF,
// HostGitHub), Repo encodes the commit- or tag-pinned path the bytes come from, in the OCI
// repository grammar, so that a designated peer can fetch it for the swarm.
type BlobRef struct {
	Registry string
	Repo     string
	Digest   digest.Digest
	Size     int64
}

// Response headers shoal adds.
const (
	hdrSource = "X-Shoal-Source"
	hdrStale  = "X-Shoal-Stale"
)

// Handler serves the file endpoints.
type Handler struct {
	cfg   Config
	c     *client
	meta  *metaCache
	local *localCache
	blobs Blobs
	log   *slog.Logger

	mu      sync.Mutex
	sources map[digest.Digest]blobSource // where each digest served here comes from
	private map[string]bool              // BlobRef.Repo → fetched with this node's token
}

type blobSource struct {
	path    string // on the logical host
	private bool   // needed this node's token
}

// New builds the handler; its caches live under dir.
func New(cfg Config, dir string, blobs Blobs, log *slog.Logger) (*Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	ttl := cfg.MetaTTL
	if ttl == 0 {
		ttl = DefaultMetaTTL
	}
	meta, err := newMetaCache(filepath.Join(dir, "meta"), ttl)
	if err != nil {
		return nil, err
	}
	local, err := newLocalCache(filepath.Join(dir, "local"), cfg.MaxLocalSize, cfg.LocalMaxTotal)
	if err != nil {
		return nil, err
	}
	return &Handler{cfg: cfg, c: c, meta: meta, local: local, blobs: blobs, log: log, sources: map[digest.Digest]blobSource{}, private: map[string]bool{}}, nil
}

// IsFilePath reports whether a request path belongs to the file endpoints.
func IsFilePath(p string) bool {
	return strings.HasPrefix(p, "/hf/") || strings.HasPrefix(p, "/https:/") || strings.HasPrefix(p, "/github.com/")
}

// IsFileRegistry reports whether a blob's registry is one of the file hosts.
func IsFileRegistry(host string) bool { return host == HostHF || host == HostGitHub }

// GuardName names the repository a file request is for, as the guard's repository patterns
// see it: "hf" + "ORG/NAME" (datasets: "datasets/ORG/NAME"), "github.com" + "OWNER/REPO".
func GuardName(p string) (registry, repo string, ok bool) {
	if rest, ok := strings.CutPrefix(p, "/hf/"); ok {
		if strings.HasPrefix(rest, "api/") {
			s := strings.Split(rest, "/")
			if len(s) >= 5 && (s[1] == "models" || s[1] == "datasets" || s[1] == "spaces") {
				if s[1] == "models" {
					return "hf", s[2] + "/" + s[3], true
				}
				return "hf", s[1] + "/" + s[2] + "/" + s[3], true
			}
			return "hf", "", true
		}
		if pr, ok := parseHFFile(rest); ok {
			return "hf", pr.repo, true
		}
		return "hf", "", true
	}
	if host, rest, ok := splitGitHubURL(p); ok {
		s := strings.SplitN(rest, "/", 3)
		if len(s) >= 2 {
			return host, s[0] + "/" + s[1], true
		}
		return host, "", true
	}
	return "", "", false
}

// Serve answers a file request. Errors are the daemon's to write (upstream.Error carries the
// upstream's status and Hub error code).
// CloseIdleConnections closes the keep-alive connections to the file hosts that no request
// uses. Call it once the handler's work is done: each holds two goroutines and a socket until
// the host closes it, for as long as the process lives.
func (h *Handler) CloseIdleConnections() { h.c.follow.CloseIdleConnections() }

func (h *Handler) Serve(w http.ResponseWriter, r *http.Request) error {
	p := r.URL.EscapedPath()
	if rest, ok := strings.CutPrefix(p, "/hf/"); ok {
		if strings.HasPrefix(rest, "api/") {
			return h.hfAPI(w, r, rest)
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return errMethod
		}
		if f, ok := parseHFFile(rest); ok && f.kind == "resolve" {
			return h.hfResolve(w, r, f)
		}
		return h.hfAPI(w, r, rest) // raw/… and the rest of the Hub's GETs: small, cached
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return errMethod
	}
	host, rest, ok := splitGitHubURL(p)
	if !ok {
		return ErrNotFound
	}
	return h.github(w, r, host, rest)
}

// ErrNotFound is returned for a path the file endpoints do not serve.
var ErrNotFound = errors.New("not a file endpoint")

var errMethod = &upstream.Error{Host: "shoal", Status: http.StatusMethodNotAllowed, Message: "method not allowed"}

// splitGitHubURL reads /https://HOST/REST (also /https:/HOST/… as some clients collapse
// slashes, and /github.com/…): HOST must be a configured GitHub host.
func splitGitHubURL(p string) (host, rest string, ok bool) {
	s := strings.TrimPrefix(p, "/")
	s = strings.TrimPrefix(s, "https:")
	s = strings.TrimLeft(s, "/")
	host, rest, ok = strings.Cut(s, "/")
	if !ok || host == "" {
		return "", "", false
	}
	host = strings.ToLower(host)
	switch host {
	case HostGitHub, "raw.githubusercontent.com", "codeload.github.com", "objects.githubusercontent.com", "release-assets.githubusercontent.com":
		return host, rest, true
	}
	return "", "", false
}

// ---- blobs: the fetch the daemon's blob path uses ----

var repoEnc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// maxRepoLen is the OCI grammar's bound on a repository name.
const maxRepoLen = 255

// blobRef names d, fetched from path on host, for the daemon's blob path.
func (h *Handler) blobRef(host, path string, d digest.Digest, size int64, private bool) BlobRef {
	h.mu.Lock()
	h.sources[d] = blobSource{path: path, private: private}
	h.mu.Unlock()
	if key := "name " + d.String(); h.meta.peek(key) == nil {
		name := fileName(host, path)
		h.meta.put(key, &metaEntry{Status: http.StatusOK, Header: map[string]string{"name": name}, Immutable: true})
		h.meta.put("digest "+name, &metaEntry{Status: http.StatusOK, Header: map[string]string{"digest": d.String()}, Immutable: true})
	}
	repo := repoEnc.EncodeToString([]byte(path))
	if len(repo) > maxRepoLen {
		// Too long to name in the OCI grammar: a peer asked to fetch it for the swarm cannot
		// (it answers not-found and the asker goes upstream itself); this node finds it by digest.
		sum := sha256.Sum256([]byte(path))
		repo = "long-" + hex.EncodeToString(sum[:16])
	}
	h.mu.Lock()
	h.private[repo] = private
	h.mu.Unlock()
	return BlobRef{Registry: host, Repo: repo, Digest: d, Size: size}
}

var (
	hfPinned = regexp.MustCompile(`^/(?:(?:datasets|spaces)/)?[^/?#]+(?:/[^/?#]+)?/resolve/[0-9a-f]{40}/[^?#]+$`)
	ghPinned = regexp.MustCompile(`^/[^/?#]+/[^/?#]+/releases/download/[^/?#]+/[^/?#]+$`)
)

// source finds where d's bytes come from: the path this node served it for, or the path a peer
// named (only the pinned shapes above: a peer cannot make this node fetch anything else).
func (h *Handler) source(host, repo string, d digest.Digest) (blobSource, bool) {
	h.mu.Lock()
	src, ok := h.sources[d]
	h.mu.Unlock()
	if ok {
		return src, true
	}
	b, err := repoEnc.DecodeString(repo)
	if err != nil {
		return blobSource{}, false
	}
	p := string(b)
	if strings.Contains(p, "..") || (host == HostHF && !hfPinned.MatchString(p)) || (host == HostGitHub && !ghPinned.MatchString(p)) {
		return blobSource{}, false
	}
	return blobSource{path: p}, true
}

// Private reports whether d (named by host and repo) needed this node's token: the daemon
// keeps such content from peers unless configured to share it.
func (h *Handler) Private(host, repo string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.private[repo] // a path named by a peer was fetched without a token: not private
}

// OpenBlob opens d's bytes from the upstream at offset (redirects to CDN hosts followed here).
// size is the file's total size. The bytes are not verified: the daemon's spool does that.
func (h *Handler) OpenBlob(ctx context.Context, host, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	src, ok := h.source(host, repo, d)
	if !ok || !IsFileRegistry(host) {
		return nil, 0, &upstream.Error{Host: host, Status: http.StatusNotFound, Message: "no known source for " + d.String()}
	}
	if src.private {
		ctx = withAuth(ctx)
	}
	hdr := http.Header{}
	if offset > 0 {
		hdr.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := h.c.do(ctx, http.MethodGet, "https://"+host+src.path, hdr, nil, true)
	if err != nil {
		return nil, 0, err
	}
	size := resp.ContentLength
	switch {
	case resp.StatusCode == http.StatusPartialContent:
		start, total, ok := upstream.ParseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != offset {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("%s: asked for bytes %d-, got Content-Range %q", host, offset, resp.Header.Get("Content-Range"))
		}
		size = total
	case resp.StatusCode == http.StatusOK:
		if offset > 0 {
			if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
				resp.Body.Close()
				return nil, 0, err
			}
		}
	default:
		defer resp.Body.Close()
		return nil, 0, statusError(resp)
	}
	if size < 0 {
		size = -1
	}
	return resp.Body, size, nil
}

// baseURL is shoal's own address as the client used it.
func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func quoteETag(s string) string { return `"` + s + `"` }

func unquoteETag(s string) string {
	s = strings.TrimPrefix(strings.TrimSpace(s), "W/")
	return strings.Trim(s, `"`)
}

var (
	hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)
	hex40 = regexp.MustCompile(`^[0-9a-f]{40}$`)
)

// fileName is how operators see a file: hf://ORG/NAME@COMMIT/PATH, https://github.com/….
func fileName(host, path string) string {
	if host == HostHF {
		if repo, rest, ok := strings.Cut(strings.TrimPrefix(path, "/"), "/resolve/"); ok {
			rev, p, _ := strings.Cut(rest, "/")
			if u, err := url.PathUnescape(p); err == nil {
				p = u
			}
			return "hf://" + repo + "@" + rev + "/" + p
		}
	}
	if u, err := url.PathUnescape(path); err == nil {
		path = u
	}
	return "https://" + host + path
}

// Name returns the name of a file kept in the content store under d ("" if d is not a file
// this node served), for `shoal cache ls`.
func (h *Handler) Name(d digest.Digest) string {
	if e := h.meta.peek("name " + d.String()); e != nil {
		return e.Header["name"]
	}
	return ""
}

// DigestOf returns the digest of a file this node served, by the name Name gives it.
func (h *Handler) DigestOf(name string) (digest.Digest, bool) {
	if e := h.meta.peek("digest " + name); e != nil {
		if d, err := digest.Parse(e.Header["digest"]); err == nil {
			return d, true
		}
	}
	return "", false
}
