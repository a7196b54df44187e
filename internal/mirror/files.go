package mirror

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/files"
	"github.com/shoal-mirror/shoal/internal/fetch"
	"github.com/shoal-mirror/shoal/internal/ocierr"
	"github.com/shoal-mirror/shoal/upstream"
)

// filesEndpoint mounts package files (Hugging Face and GitHub files, docs/files.md) on the
// mirror listener. Files with a sha256 digest go through the mirror's blob path.
type filesEndpoint struct {
	h   *files.Handler
	m   *Mirror
	log *slog.Logger
}

func newFilesEndpoint(cfg files.Config, dir string, m *Mirror, log *slog.Logger) (*filesEndpoint, error) {
	if log == nil {
		log = m.log
	}
	fe := &filesEndpoint{m: m, log: log}
	h, err := files.New(cfg, dir, fe, log)
	if err != nil {
		return nil, err
	}
	fe.h = h
	return fe, nil
}

var _ files.Blobs = (*filesEndpoint)(nil)

// ServeBlob serves a file that has a sha256 digest exactly as a blob: store, download in
// flight, peers, designated fetcher, upstream (through Upstream), verified.
func (fe *filesEndpoint) ServeBlob(w http.ResponseWriter, r *http.Request, ref files.BlobRef) error {
	rt := route{kind: "blob", registry: ref.Registry, repo: ref.Repo, ref: ref.Digest.String(), clientName: ref.Repo}
	return fe.m.blob(&keepHeaders{ResponseWriter: w, etag: w.Header().Get("Etag")}, r, rt)
}

// keepHeaders restores the file's own ETag, which the blob path sets to the digest.
type keepHeaders struct {
	http.ResponseWriter
	etag string
}

func (k *keepHeaders) WriteHeader(code int) {
	if k.etag != "" && code < 300 {
		k.Header().Set("Etag", k.etag)
	}
	k.Header().Del("Docker-Distribution-Api-Version")
	k.ResponseWriter.WriteHeader(code)
}

func (k *keepHeaders) Unwrap() http.ResponseWriter { return k.ResponseWriter }

// ReadFrom keeps sendfile for stored files (serveStored copies from an *os.File).
func (k *keepHeaders) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := k.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{k.ResponseWriter}, r)
}

func (fe *filesEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	err := fe.h.Serve(w, r)
	switch {
	case err == nil:
	case errors.Is(err, errAborted):
		panic(http.ErrAbortHandler)
	case errors.Is(err, files.ErrNotFound):
		ocierr.Write(w, r, fe.log, ocierr.ErrNoRoute)
	case errors.Is(err, files.ErrMismatch):
		ocierr.Write(w, r, fe.log, &ocierr.Error{Status: http.StatusBadGateway, Code: "DIGEST_INVALID", Message: "the upstream sent a file that does not match its digest; nothing was kept", Err: err})
	case errors.Is(err, files.ErrTooLarge):
		ocierr.Write(w, r, fe.log, &ocierr.Error{Status: http.StatusBadGateway, Code: "UNAVAILABLE", Message: "file larger than files.max_local_size", Err: err})
	case errors.Is(err, files.ErrRefused):
		ocierr.Write(w, r, fe.log, &ocierr.Error{Status: http.StatusBadGateway, Code: "UNAVAILABLE", Message: "the upstream pointed shoal at a host it may not contact", Err: err})
	default:
		if ue, ok := errors.AsType[*upstream.Error](err); ok && ue.Code != "" {
			w.Header().Set("X-Error-Code", ue.Code) // the Hub's clients read it (EntryNotFound, …)
		}
		ocierr.Write(w, r, fe.log, err)
	}
}

// Upstream is the upstream as the blob path sees it (fetch.Options.Upstream): file hosts
// answer through package files, registries through the registry client. New points it at the
// file endpoints it mounts (Options.FileUpstream); until then, and when files are off, every
// host is the registry client's.
type Upstream struct {
	fetch.UpstreamClient
	files *files.Handler
}

// NewUpstream wraps the registry client for internal/fetch.
func NewUpstream(up fetch.UpstreamClient) *Upstream { return &Upstream{UpstreamClient: up} }

// GetBlob opens a blob from its file host or registry.
func (u *Upstream) GetBlob(ctx context.Context, host, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	if u.files != nil && files.IsFileRegistry(host) {
		return u.files.OpenBlob(ctx, host, repo, d, offset)
	}
	return u.UpstreamClient.GetBlob(ctx, host, repo, d, offset)
}

// Private reports whether the content needed credentials (it is then not shared with peers).
func (u *Upstream) Private(host, repo string) bool {
	if u.files != nil && files.IsFileRegistry(host) {
		return u.files.Private(host, repo)
	}
	return u.UpstreamClient.Private(host, repo)
}

// Endpoint is the host's base URL; an error for a registry the client refuses.
func (u *Upstream) Endpoint(host string) (*url.URL, error) {
	if u.files != nil && files.IsFileRegistry(host) {
		return &url.URL{Scheme: "https", Host: host}, nil
	}
	return u.UpstreamClient.Endpoint(host)
}

// CloseIdleConnections closes the files endpoint's idle connections to the file hosts (at
// shutdown: else they outlive the daemon).
func (m *Mirror) CloseIdleConnections() {
	if m.files != nil {
		m.files.h.CloseIdleConnections()
	}
}
