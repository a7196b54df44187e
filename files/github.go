package files

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// ghRelease is the part of GitHub's REST release object shoal reads
// (GET /repos/{owner}/{repo}/releases/tags/{tag}, …/releases/latest).
type ghRelease struct {
	TagName string `json:"tag_name"`
	Assets  []struct {
		Name   string `json:"name"`
		Size   int64  `json:"size"`
		Digest string `json:"digest"` // "sha256:…" since June 2025; null for older assets
	} `json:"assets"`
}

func (h *Handler) github(w http.ResponseWriter, r *http.Request, host, rest string) error {
	if host == HostGitHub {
		s := strings.Split(rest, "/")
		var tag, name string
		switch {
		case len(s) == 6 && s[2] == "releases" && s[3] == "download":
			tag, name = s[4], s[5]
		case len(s) == 6 && s[2] == "releases" && s[3] == "latest" && s[4] == "download":
			name = s[5]
		}
		tag, _ = url.PathUnescape(tag)
		name, _ = url.PathUnescape(name)
		if name != "" {
			return h.releaseFile(w, r, s[0], s[1], tag, name)
		}
	}
	return h.serveNoDigest(w, r, host, "/"+rest, false)
}

func (h *Handler) releaseFile(w http.ResponseWriter, r *http.Request, owner, repo, tag, name string) error {
	api := "https://" + HostGHAPI + "/repos/" + url.PathEscape(owner) + "/" + url.PathEscape(repo) + "/releases/"
	if tag == "" {
		api += "latest"
	} else {
		api += "tags/" + url.PathEscape(tag)
	}
	e, stale, err := h.meta.get(r.Context(), "GET "+api, func(ctx context.Context) (*metaEntry, error) {
		hdr := http.Header{"Accept": {"application/vnd.github+json"}, "X-Github-Api-Version": {"2022-11-28"}}
		resp, private, err := h.getAuthed(ctx, HostGHAPI, http.MethodGet, api, hdr, nil, true)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusForbidden && resp.Header.Get("X-Ratelimit-Remaining") == "0" {
			// GitHub's API rate limit (60/h anonymous): a 429 to the client, and a stale
			// answer when there is one.
			resp.StatusCode = http.StatusTooManyRequests
		}
		if resp.StatusCode != http.StatusOK {
			return nil, statusError(resp)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxMetaBody))
		if err != nil {
			return nil, err
		}
		return &metaEntry{Status: http.StatusOK, Body: b, Private: private}, nil
	})
	if err != nil {
		return err
	}
	if stale {
		w.Header().Set(hdrStale, "true")
	}
	var rel ghRelease
	if err := json.Unmarshal(e.Body, &rel); err != nil || rel.TagName == "" {
		return &upstreamErr{status: http.StatusBadGateway, msg: "GitHub's release answer is not a release"}
	}
	path := "/" + owner + "/" + repo + "/releases/download/" + url.PathEscape(rel.TagName) + "/" + url.PathEscape(name)
	for _, a := range rel.Assets {
		if a.Name != name {
			continue
		}
		d, err := digest.Parse(a.Digest)
		if err != nil || d.Algorithm() != digest.SHA256 {
			break // no digest stated: node-local
		}
		w.Header().Set("ETag", quoteETag(d.Encoded()))
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", strconv.FormatInt(a.Size, 10))
			w.Header().Set("Accept-Ranges", "bytes")
			w.Header().Set("Content-Type", "application/octet-stream")
			w.WriteHeader(http.StatusOK)
			return nil
		}
		return h.blobs.ServeBlob(w, r, h.blobRef(HostGitHub, path, d, a.Size, e.Private))
	}
	return h.serveNoDigest(w, r, HostGitHub, path, e.Private)
}

// upstreamErr is an answer shoal makes up about an upstream (a malformed reply).
type upstreamErr struct {
	status int
	msg    string
}

func (e *upstreamErr) Error() string { return e.msg }

// HTTPStatus is the status the client gets.
func (e *upstreamErr) HTTPStatus() int { return e.status }

// serveLocal serves a file kept on this node under key, downloading it first if needed
// (checked against wantSHA1 when set).
func (h *Handler) serveLocal(w http.ResponseWriter, r *http.Request, key string, open func(context.Context) (io.ReadCloser, int64, error), wantSHA1 string) error {
	source := "store"
	f, err := h.local.open(key)
	if errors.Is(err, os.ErrNotExist) {
		source = "upstream"
		if err := h.local.fill(r.Context(), key, open, wantSHA1); err != nil {
			return err
		}
		f, err = h.local.open(key)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	h.local.touch(f)
	w.Header().Set(hdrSource, source)
	serveFile(w, r, f)
	return nil
}

// serveNoDigest serves content whose upstream states no digest: kept on this node only,
// keyed by its URL and validators, revalidated after MetaTTL, served stale when the upstream
// fails.
func (h *Handler) serveNoDigest(w http.ResponseWriter, r *http.Request, host, path string, private bool) error {
	u := "https://" + host + path
	mkey := "nodigest " + u
	e := h.meta.peek(mkey)
	have := func(e *metaEntry) bool {
		if e == nil {
			return false
		}
		_, err := os.Stat(h.local.path(e.Header["file"]))
		return err == nil
	}
	source := "store"
	if !have(e) || (!e.Immutable && time.Since(e.Fetched) >= h.meta.ttl) {
		v, err, _ := h.local.flight.Do("reval "+u, func() (any, error) {
			ctx := context.WithoutCancel(r.Context())
			if private {
				ctx = withAuth(ctx)
			}
			hdr := http.Header{}
			if have(e) {
				if v := e.Header["ETag"]; v != "" {
					hdr.Set("If-None-Match", v)
				}
				if v := e.Header["Last-Modified"]; v != "" {
					hdr.Set("If-Modified-Since", v)
				}
			}
			resp, err := h.c.do(ctx, http.MethodGet, u, hdr, nil, true)
			if err != nil {
				return nil, err
			}
			defer resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusNotModified && have(e):
				n := *e
				n.Fetched = time.Now()
				h.meta.put(mkey, &n)
				return &n, nil
			case resp.StatusCode != http.StatusOK:
				return nil, statusError(resp)
			}
			n := &metaEntry{Status: http.StatusOK, Fetched: time.Now(), Private: private, Header: map[string]string{
				"ETag": resp.Header.Get("ETag"), "Last-Modified": resp.Header.Get("Last-Modified"), "Content-Type": resp.Header.Get("Content-Type"),
			}}
			n.Header["file"] = "url:" + u + "\x00" + n.Header["ETag"] + "\x00" + n.Header["Last-Modified"]
			body := resp.Body
			if err := h.local.fill(ctx, n.Header["file"], func(context.Context) (io.ReadCloser, int64, error) {
				return io.NopCloser(body), resp.ContentLength, nil
			}, ""); err != nil {
				return nil, err
			}
			h.meta.put(mkey, n)
			return n, nil
		})
		switch {
		case err == nil:
			e, source = v.(*metaEntry), "upstream"
		case have(e) && unavailable(err):
			w.Header().Set(hdrStale, "true")
		default:
			return err
		}
	}
	f, err := h.local.open(e.Header["file"])
	if err != nil {
		return err
	}
	defer f.Close()
	if ct := e.Header["Content-Type"]; ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	if et := e.Header["ETag"]; et != "" {
		w.Header().Set("ETag", et)
	}
	h.local.touch(f)
	w.Header().Set(hdrSource, source)
	serveFile(w, r, f)
	return nil
}
