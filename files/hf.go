package files

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
)

// hfFile is a parsed /{repo}/resolve/{rev}/{path} request (repo: "ORG/NAME", "NAME",
// "datasets/ORG/NAME", "spaces/ORG/NAME").
type hfFile struct {
	repo, kind, rev string
	path            string // escaped, as sent upstream
}

func parseHFFile(rest string) (hfFile, bool) {
	s := strings.Split(rest, "/")
	for i := 1; i < len(s)-2 && i <= 3; i++ {
		if s[i] != "resolve" && s[i] != "raw" {
			continue
		}
		repo := strings.Join(s[:i], "/")
		if i == 3 && s[0] != "datasets" && s[0] != "spaces" {
			return hfFile{}, false
		}
		rev, err := url.PathUnescape(s[i+1])
		if err != nil || rev == "" {
			return hfFile{}, false
		}
		p := strings.Join(s[i+2:], "/")
		if p == "" || strings.Contains(p, "..") {
			return hfFile{}, false
		}
		return hfFile{repo: repo, kind: s[i], rev: rev, path: p}, true
	}
	return hfFile{}, false
}

func (f hfFile) upstreamPath(rev string) string {
	return "/" + f.repo + "/resolve/" + url.PathEscape(rev) + "/" + f.path
}

// getAuthed sends a request anonymously first and again with this node's token when the
// answer says the content needs one; private reports that the token was needed.
func (h *Handler) getAuthed(ctx context.Context, host, method, u string, hdr http.Header, body []byte, follow bool) (resp *http.Response, private bool, err error) {
	send := func(ctx context.Context) (*http.Response, error) {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		return h.c.do(ctx, method, u, hdr, rd, follow)
	}
	resp, err = send(ctx)
	if err != nil || !h.c.hasToken(host) {
		return resp, false, err
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		if resp.Header.Get("X-Error-Code") == "EntryNotFound" || resp.Header.Get("X-Error-Code") == "RevisionNotFound" {
			return resp, false, nil
		}
		resp.Body.Close()
		resp, err = send(withAuth(ctx))
		return resp, true, err
	}
	return resp, false, nil
}

// metaHeaders are the upstream headers kept with a cached API answer.
var metaHeaders = []string{"Content-Type", "Link", "X-Repo-Commit", "X-Error-Code", "X-Error-Message", "ETag", "X-Total-Count"}

const maxMetaBody = 32 << 20

// hfAPI answers the Hub's API (model/dataset info, revision, tree with Link pagination,
// paths-info) and small GETs, cached for MetaTTL (for good when pinned to a commit), served
// stale when the Hub fails.
func (h *Handler) hfAPI(w http.ResponseWriter, r *http.Request, rest string) error {
	var body []byte
	switch {
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
	case r.Method == http.MethodPost && strings.Contains(rest, "/paths-info/"):
		b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			return err
		}
		body = b
	default:
		return errMethod
	}
	u := "https://" + HostHF + "/" + rest
	if r.URL.RawQuery != "" {
		u += "?" + r.URL.RawQuery
	}
	immutable := false
	for _, seg := range strings.Split(rest, "/") {
		if s, err := url.PathUnescape(seg); err == nil && hex40.MatchString(s) {
			immutable = true
		}
	}
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet // one cache entry for both
	}
	key := method + " " + u + " " + string(body)
	e, stale, err := h.meta.get(r.Context(), key, func(ctx context.Context) (*metaEntry, error) {
		hdr := http.Header{"Accept": {"application/json"}}
		if body != nil {
			hdr.Set("Content-Type", "application/json")
		}
		resp, private, err := h.getAuthed(ctx, HostHF, method, u, hdr, body, true)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			return nil, statusError(resp)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxMetaBody))
		if err != nil {
			return nil, err
		}
		e := &metaEntry{Status: resp.StatusCode, Header: map[string]string{}, Body: b, Immutable: immutable, Private: private}
		for _, k := range metaHeaders {
			if v := resp.Header.Get(k); v != "" {
				e.Header[k] = v
			}
		}
		return e, nil
	})
	if err != nil {
		return err
	}
	for k, v := range e.Header {
		if k == "Link" {
			v = strings.ReplaceAll(v, "https://"+HostHF+"/", baseURL(r)+"/hf/")
		}
		w.Header().Set(k, v)
	}
	if stale {
		w.Header().Set(hdrStale, "true")
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(e.Body)))
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(e.Body)
	}
	return nil
}

// hfInfo is what a resolve HEAD tells about a file at a revision.
type hfInfo struct {
	commit, sha256, sha1 string
	size                 int64
	private              bool
}

// resolveInfo asks the Hub what rev/path is (HEAD, no redirect to the CDN followed, no Xet
// negotiation), cached like tags: for MetaTTL when rev is a branch or tag, for good when it
// is a commit; stale when the Hub fails.
func (h *Handler) resolveInfo(ctx context.Context, f hfFile, rev string) (hfInfo, bool, error) {
	immutable := hex40.MatchString(rev)
	key := "resolve " + f.upstreamPath(rev)
	e, stale, err := h.meta.get(ctx, key, func(ctx context.Context) (*metaEntry, error) {
		u := "https://" + HostHF + f.upstreamPath(rev)
		hdr := http.Header{"Accept": {"*/*"}} // never application/vnd.xet-fileinfo+json
		resp, private, err := h.getAuthed(ctx, HostHF, http.MethodHead, u, hdr, nil, false)
		if err != nil {
			return nil, err
		}
		e := &metaEntry{Status: http.StatusOK, Header: map[string]string{}, Immutable: immutable, Private: private}
		keep := func(resp *http.Response) {
			for _, k := range []string{"X-Repo-Commit", "X-Linked-Etag", "X-Linked-Size", "ETag", "Content-Length"} {
				if v := resp.Header.Get(k); v != "" && e.Header[k] == "" {
					e.Header[k] = v
				}
			}
		}
		// Follow redirects on the Hub itself (/api/resolve-cache/…, renamed repos) as the
		// official clients do; stop at the CDN.
		for range 5 {
			resp.Body.Close()
			if resp.StatusCode >= 400 {
				return nil, statusError(resp)
			}
			keep(resp)
			loc := resp.Header.Get("Location")
			if resp.StatusCode < 300 || resp.StatusCode >= 400 || !strings.HasPrefix(loc, "/") || strings.HasPrefix(loc, "//") {
				break
			}
			if resp.StatusCode != http.StatusFound && resp.StatusCode != http.StatusTemporaryRedirect && resp.StatusCode != http.StatusMovedPermanently {
				break
			}
			c := ctx
			if private {
				c = withAuth(ctx)
			}
			if resp, err = h.c.do(c, http.MethodHead, "https://"+HostHF+loc, hdr, nil, false); err != nil {
				return nil, err
			}
		}
		return e, nil
	})
	if err != nil {
		return hfInfo{}, false, err
	}
	inf := hfInfo{commit: e.Header["X-Repo-Commit"], private: e.Private, size: -1}
	if le := strings.ToLower(unquoteETag(e.Header["X-Linked-Etag"])); hex64.MatchString(le) {
		inf.sha256 = le
		inf.size, _ = strconv.ParseInt(e.Header["X-Linked-Size"], 10, 64)
	} else if et := strings.ToLower(unquoteETag(e.Header["ETag"])); hex40.MatchString(et) {
		inf.sha1 = et
		if n, err := strconv.ParseInt(e.Header["Content-Length"], 10, 64); err == nil {
			inf.size = n
		}
	}
	if inf.commit != "" && !immutable && !stale {
		// A branch resolved to a commit: the pinned form needs no further question.
		pinned := *e
		pinned.Immutable = true
		h.meta.put("resolve "+f.upstreamPath(inf.commit), &pinned)
	}
	return inf, stale, nil
}

// hfResolve serves a file: sha256 files through the daemon's blob path, small files verified
// by their git sha1 from this node's local cache.
func (h *Handler) hfResolve(w http.ResponseWriter, r *http.Request, f hfFile) error {
	inf, stale, err := h.resolveInfo(r.Context(), f, f.rev)
	if err != nil {
		return err
	}
	hd := w.Header()
	if inf.commit != "" {
		hd.Set("X-Repo-Commit", inf.commit)
	}
	if stale {
		hd.Set(hdrStale, "true")
	}
	pinned := f.rev
	if hex40.MatchString(inf.commit) {
		pinned = inf.commit
	}
	switch {
	case inf.sha256 != "":
		d := digest.NewDigestFromEncoded(digest.SHA256, inf.sha256)
		hd.Set("X-Linked-Etag", quoteETag(inf.sha256))
		hd.Set("X-Linked-Size", strconv.FormatInt(inf.size, 10))
		hd.Set("ETag", quoteETag(inf.sha256))
		if r.Method == http.MethodHead {
			hd.Set("Content-Length", strconv.FormatInt(inf.size, 10))
			hd.Set("Accept-Ranges", "bytes")
			w.WriteHeader(http.StatusOK)
			return nil
		}
		return h.blobs.ServeBlob(w, r, h.blobRef(HostHF, f.upstreamPath(pinned), d, inf.size, inf.private))
	case inf.sha1 != "":
		hd.Set("ETag", quoteETag(inf.sha1))
		key := "git-sha1:" + inf.sha1
		open := func(ctx context.Context) (io.ReadCloser, int64, error) {
			if inf.private {
				ctx = withAuth(ctx)
			}
			resp, err := h.c.do(ctx, http.MethodGet, "https://"+HostHF+f.upstreamPath(pinned), nil, nil, true)
			if err != nil {
				return nil, 0, err
			}
			if resp.StatusCode != http.StatusOK {
				defer resp.Body.Close()
				return nil, 0, statusError(resp)
			}
			size := resp.ContentLength
			if inf.size >= 0 {
				size = inf.size // the size the sha1 covers, whatever the transfer says
			}
			return resp.Body, size, nil
		}
		return h.serveLocal(w, r, key, open, inf.sha1)
	}
	return h.serveNoDigest(w, r, HostHF, f.upstreamPath(pinned), inf.private)
}
