package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-mirror/shoal/internal/oci"
)

// imageRef is an image as an operator names it: [REGISTRY/]REPO[:TAG][@DIGEST].
type imageRef struct {
	registry string // canonical ("docker.io")
	repo     string // normalised ("library/alpine")
	tag      string // "" when only a digest was given
	digest   digest.Digest
}

// parseImageRef reads an image reference the way the mirror routes a request: a first
// element that looks like a host names the registry, otherwise defaultRegistry; a name
// without tag or digest means :latest.
func parseImageRef(s, defaultRegistry string) (imageRef, error) {
	var r imageRef
	if s == "" {
		return r, badRequest("empty image reference")
	}
	name := s
	if i := strings.IndexByte(name, '@'); i >= 0 {
		d, err := oci.ParseDigest(name[i+1:])
		if err != nil {
			return r, badRequest("%q: bad digest: %v", s, err)
		}
		r.digest, name = d, name[:i]
	}
	if i := strings.LastIndexByte(name, ':'); i >= 0 && !strings.Contains(name[i+1:], "/") {
		r.tag, name = name[i+1:], name[:i]
		if err := oci.ValidateTag(r.tag); err != nil {
			return r, badRequest("%q: bad tag: %v", s, err)
		}
	}
	r.registry, name = oci.SplitName(name, defaultRegistry)
	if err := oci.ValidateRepo(name); err != nil {
		return r, badRequest("%q: bad repository name: %v", s, err)
	}
	r.repo = name
	if r.tag == "" && r.digest == "" {
		r.tag = "latest"
	}
	return r, nil
}

// String is the full reference, registry included.
func (r imageRef) String() string {
	s := r.registry + "/" + r.repo
	if r.tag != "" {
		s += ":" + r.tag
	}
	if r.digest != "" {
		s += "@" + r.digest.String()
	}
	return s
}

// ref is what the manifests endpoint is asked for: the digest if known, else the tag.
func (r imageRef) ref() string {
	if r.digest != "" {
		return r.digest.String()
	}
	return r.tag
}

// tagKey is the store's key for the tag ("registry/repo:tag").
func (r imageRef) tagKey() string { return r.registry + "/" + r.repo + ":" + r.tag }

// familiar is the name Docker shows: "alpine:3" for docker.io/library/alpine:3.
func (r imageRef) familiar() string {
	name := r.registry + "/" + r.repo
	if r.registry == oci.DockerHub {
		name = strings.TrimPrefix(r.repo, "library/")
	}
	if r.tag != "" {
		return name + ":" + r.tag
	}
	return name
}

// hdrSource is the mirror's answer header naming where the content came from (store,
// inflight, peer, designated, upstream, passthrough, canary).
const hdrSource = "X-Shoal-Source"

// selfClient fetches through the daemon's own mirror handler, in process, so that operator
// commands (pull, export, explain) take exactly the path a client's pull takes: store, a
// download in flight, peers, upstream, with verification and caching on the way.
type selfClient struct {
	hc *http.Client
}

func newSelfClient(h http.Handler) *selfClient {
	return &selfClient{hc: &http.Client{Transport: inProcess{h: h}}}
}

func (c *selfClient) base() string { return "http://shoal-admin" }

// inProcess is an http.RoundTripper that answers with a handler in this process, streaming
// the body as the handler writes it.
type inProcess struct{ h http.Handler }

func (t inProcess) RoundTrip(req *http.Request) (*http.Response, error) {
	pr, pw := io.Pipe()
	rw := &pipeResponse{header: http.Header{}, pw: pw, ready: make(chan struct{}), head: req.Method == http.MethodHead}
	sreq := req.Clone(req.Context())
	sreq.RemoteAddr = "admin"
	sreq.RequestURI = req.URL.RequestURI()
	go func() {
		defer func() {
			if v := recover(); v != nil {
				rw.abort(fmt.Errorf("mirror broke off the answer: %v", v))
				return
			}
			rw.WriteHeader(http.StatusOK) // no-op when already written
			_ = pw.Close()
		}()
		t.h.ServeHTTP(rw, sreq)
	}()
	select {
	case <-rw.ready:
	case <-req.Context().Done():
		_ = pr.CloseWithError(req.Context().Err())
		return nil, req.Context().Err()
	}
	if rw.err != nil {
		return nil, rw.err
	}
	resp := &http.Response{StatusCode: rw.status, Status: fmt.Sprintf("%d %s", rw.status, http.StatusText(rw.status)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: rw.sent, Body: pr, ContentLength: -1, Request: req}
	if n, err := strconv.ParseInt(rw.sent.Get("Content-Length"), 10, 64); err == nil {
		resp.ContentLength = n
	}
	return resp, nil
}

// pipeResponse is the ResponseWriter of an in-process request.
type pipeResponse struct {
	header http.Header
	sent   http.Header // the header as of WriteHeader
	pw     *io.PipeWriter
	head   bool
	once   sync.Once
	ready  chan struct{} // closed once status and header are known (or the handler failed)
	status int
	err    error // set before ready when the handler failed before any header
}

func (w *pipeResponse) Header() http.Header { return w.header }

func (w *pipeResponse) WriteHeader(code int) {
	w.once.Do(func() {
		w.status, w.sent = code, w.header.Clone()
		close(w.ready)
	})
}

func (w *pipeResponse) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if w.head {
		return len(p), nil
	}
	return w.pw.Write(p)
}

// ReadFrom is there because the access log's recorder passes ReadFrom (sendfile) through.
func (w *pipeResponse) ReadFrom(src io.Reader) (int64, error) {
	w.WriteHeader(http.StatusOK)
	if w.head {
		return io.Copy(io.Discard, src)
	}
	return io.Copy(writerOnly{w.pw}, src)
}

// writerOnly hides every method but Write (io.Copy must not find the pipe's ReadFrom).
type writerOnly struct{ io.Writer }

// Flush lets handlers that flush work; the pipe delivers every write at once anyway.
func (w *pipeResponse) Flush() {}

func (w *pipeResponse) abort(err error) {
	w.once.Do(func() {
		w.err = err
		close(w.ready)
	})
	_ = w.pw.CloseWithError(err)
}

// mirrorError is a failed answer of the mirror, with its OCI code and message.
type mirrorError struct {
	status int
	code   string
	msg    string
}

func (e *mirrorError) Error() string {
	if e.msg != "" {
		return fmt.Sprintf("%s (%d %s)", e.msg, e.status, e.code)
	}
	return fmt.Sprintf("mirror answered %d", e.status)
}

func mirrorErr(resp *http.Response) error {
	defer resp.Body.Close()
	var body struct {
		Errors []struct{ Code, Message, Detail string } `json:"errors"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &mirrorError{status: resp.StatusCode}
	if json.Unmarshal(b, &body) == nil && len(body.Errors) > 0 {
		e.code, e.msg = body.Errors[0].Code, body.Errors[0].Message
		if body.Errors[0].Detail != "" {
			e.msg += ": " + body.Errors[0].Detail
		}
	}
	if resp.StatusCode == http.StatusNotFound {
		return &apiError{status: http.StatusNotFound, code: "not_found", err: e}
	}
	return e
}

func (c *selfClient) get(ctx context.Context, r imageRef, kind, ref string, accept string) (*http.Response, error) {
	u := c.base() + "/v2/" + r.registry + "/" + r.repo + "/" + kind + "/" + ref
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "shoal-admin")
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mirror API: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, mirrorErr(resp)
	}
	return resp, nil
}

// fetchedManifest is a manifest as the mirror served it.
type fetchedManifest struct {
	digest    digest.Digest
	mediaType string
	data      []byte
	source    string
}

var manifestAcceptAll = strings.Join(oci.ManifestAccept, ", ")

// manifest fetches a manifest or index by tag or digest, checking the bytes against the
// digest asked for (or, for a tag, the one the mirror named).
func (c *selfClient) manifest(ctx context.Context, r imageRef, ref string) (fetchedManifest, error) {
	resp, err := c.get(ctx, r, "manifests", ref, manifestAcceptAll)
	if err != nil {
		return fetchedManifest{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, oci.MaxManifestSize+1))
	if err != nil {
		return fetchedManifest{}, fmt.Errorf("manifest %s: %w", ref, err)
	}
	want := digest.Digest(resp.Header.Get("Docker-Content-Digest"))
	if oci.IsDigestRef(ref) {
		want = digest.Digest(ref)
	}
	if err := want.Validate(); err != nil {
		return fetchedManifest{}, fmt.Errorf("manifest %s: mirror named no digest", ref)
	}
	if want.Algorithm().FromBytes(data) != want {
		return fetchedManifest{}, fmt.Errorf("manifest %s: bytes do not match %s", ref, want)
	}
	return fetchedManifest{digest: want, mediaType: resp.Header.Get("Content-Type"), data: data, source: resp.Header.Get(hdrSource)}, nil
}

// blob opens a blob; the caller checks size and digest while reading.
func (c *selfClient) blob(ctx context.Context, r imageRef, d digest.Digest) (io.ReadCloser, string, error) {
	resp, err := c.get(ctx, r, "blobs", d.String(), "")
	if err != nil {
		return nil, "", err
	}
	return resp.Body, resp.Header.Get(hdrSource), nil
}

// parsePlatform reads the platform an operator asked for ("os/arch[/variant]").
func parsePlatform(s string) (*ocispec.Platform, error) {
	p, err := oci.ParsePlatform(s)
	if err != nil {
		return nil, badRequest("%v", strings.TrimPrefix(err.Error(), oci.ErrPlatformInvalid.Error()+": "))
	}
	return &p, nil
}
