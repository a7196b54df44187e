package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/shoal-mirror/shoal/files"
	"github.com/shoal-mirror/shoal/internal/fetch"
	"github.com/shoal-mirror/shoal/internal/guard"
	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/internal/ocierr"
	"github.com/shoal-mirror/shoal/push"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// Response headers that tell an operator (and the tests) where an answer came from.
const (
	HeaderSource = "X-Shoal-Source" // store | inflight | peer | designated | upstream | passthrough (fetch.Kind), canary
	HeaderStale  = "X-Shoal-Stale"  // "true": tag served from cache because the upstream failed
)

// firstByteWait bounds how long a blob response waits for its first byte before it commits to
// a status line.
const firstByteWait = 2 * time.Second

// errAborted means the response was already under way when it failed: the connection is cut
// so the client sees a broken transfer, never a short body taken for a whole one.
var errAborted = errors.New("response aborted after headers were sent")

// Options are the mirror's collaborators and settings, all handed to New.
type Options struct {
	DefaultRegistry string        // registry of a name that names none (default_registry)
	TagTTL          time.Duration // how long a stored tag is used without an upstream HEAD (tag_ttl)
	Store           *store.Store  // tags, and what push_cluster.go holds for the swarm
	Upstream        *upstream.Client
	Fetch           *fetch.Fetcher // where blobs and manifests come from (internal/fetch)
	Log             *slog.Logger
	VerifyFirst     bool          // p2p.verify_before_serving: peer bytes wait for the digest check
	VerifyMaxWait   time.Duration // p2p.verify_max_wait: ... but not longer than this without a byte
	// Push serves the cluster-local namespace, reads and writes, and write-through pushes
	// (package push); nil when pushes are off. PushUser names the htpasswd user a request
	// logged in as (guard.PushUser).
	Push     *push.Handler
	PushUser func(*http.Request) string
	// Files, when not nil, mounts the Hugging Face and GitHub file endpoints (package files,
	// files.go) with FilesDir for their state. FileUpstream is the upstream Fetch was built
	// with (NewUpstream): New points its file hosts at those endpoints.
	Files        *files.Config
	FilesDir     string
	FilesLog     *slog.Logger
	FileUpstream *Upstream
}

// Mirror serves the OCI distribution API, pull side, the canary of `shoal doctor`, the file
// endpoints and, through package push, the push side. It is an http.Handler.
type Mirror struct {
	defaultRegistry string
	tagTTL          time.Duration
	store           *store.Store
	up              *upstream.Client
	fetch           *fetch.Fetcher // where blobs and manifests come from (internal/fetch)
	log             *slog.Logger
	flight          singleflight.Group // manifests and tag lookups, keyed by digest or name
	verifyFirst     bool               // p2p.verify_before_serving: peer bytes wait for the digest check
	verifyMaxWait   time.Duration      // p2p.verify_max_wait: ... but not longer than this without a byte
	staleLog        rate.Sometimes     // the stale-answer warning, once a minute
	canary          *canaryLog         // canary.go: `shoal doctor`'s nonces
	files           *filesEndpoint     // files.go: Hugging Face and GitHub files; nil when off
	// push serves the cluster-local namespace, reads and writes (package push); nil when
	// pushes are off. pushUser names the htpasswd user a request logged in as (guard.PushUser).
	push     *push.Handler
	pushUser func(*http.Request) string
}

// New builds the mirror. Its only error is a files configuration the files endpoints refuse.
func New(o Options) (*Mirror, error) {
	m := &Mirror{
		defaultRegistry: oci.CanonicalRegistry(o.DefaultRegistry),
		tagTTL:          o.TagTTL,
		store:           o.Store,
		up:              o.Upstream,
		fetch:           o.Fetch,
		log:             o.Log,
		staleLog:        rate.Sometimes{Interval: time.Minute},
		verifyFirst:     o.VerifyFirst,
		verifyMaxWait:   o.VerifyMaxWait,
		canary:          newCanaryLog(),
		push:            o.Push,
		pushUser:        o.PushUser,
	}
	if m.pushUser == nil {
		m.pushUser = func(*http.Request) string { return "" }
	}
	if o.Files != nil {
		fend, err := newFilesEndpoint(*o.Files, o.FilesDir, m, o.FilesLog)
		if err != nil {
			return nil, err
		}
		m.files = fend
		if o.FileUpstream != nil {
			o.FileUpstream.files = fend.h
		}
	}
	return m, nil
}

// Owns reports whether the mirror answers path as it came, before any path cleaning: the
// distribution API under /v2 and, when on, the file endpoints (ServeMux would redirect
// "/https://…" to "/https:/…" and turn "/v2/../x" into a redirect instead of a NAME_INVALID).
func (m *Mirror) Owns(path string) bool {
	return path == "/v2" || strings.HasPrefix(path, "/v2/") || m.files != nil && files.IsFilePath(path)
}

// Files is the files endpoints' handler (names and digests of files for the admin API); nil
// when files are off.
func (m *Mirror) Files() *files.Handler {
	if m.files == nil {
		return nil
	}
	return m.files.h
}

// ServeHTTP answers a mirror API or file request; it expects the guard (internal/guard) in
// front of it.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if m.files != nil && files.IsFilePath(r.URL.Path) {
		m.files.ServeHTTP(w, r)
		return
	}
	err := m.serve(w, r)
	switch {
	case err == nil:
	case errors.Is(err, errAborted):
		panic(http.ErrAbortHandler)
	default:
		ocierr.Write(w, r, m.log, err)
	}
}

func (m *Mirror) serve(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return ocierr.ErrUnsupported
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = io.WriteString(w, "{}")
		}
		return nil
	}
	if !strings.HasPrefix(r.URL.Path, "/v2/") {
		return ocierr.ErrNoRoute
	}
	if m.push.Match(r) { // the cluster-local namespace: never routed upstream
		return m.push.Serve(w, r, push.Client{Addr: guard.RemoteIP(r), User: m.pushUser(r)})
	}
	if m.push != nil && push.WritesThrough(r) {
		// A push to a registry configured with write_through (push/writethrough.go).
		if host := push.WriteThroughHost(r); host != "" && m.up.WriteThrough(host) {
			return m.push.ServeWriteThrough(w, r, push.Client{Addr: guard.RemoteIP(r), User: m.pushUser(r)}, host)
		}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return ocierr.ErrUnsupported
	}
	rt, err := parseRoute(r, m.defaultRegistry)
	if err != nil {
		return err
	}
	if isCanary(rt) { // canary.go: answered here, never upstream
		return m.serveCanary(w, r, rt)
	}
	if _, err := m.up.Endpoint(rt.registry); err != nil {
		return err
	}
	switch rt.kind {
	case "manifest":
		return m.manifest(w, r, rt)
	case "blob":
		return m.blob(w, r, rt)
	case "tags":
		return m.passThrough(w, r, rt, "tags/list")
	case "referrers":
		return m.passThrough(w, r, rt, "referrers/"+rt.ref)
	}
	return ocierr.ErrNoRoute
}

// ---- blobs ----

func (m *Mirror) blob(w http.ResponseWriter, r *http.Request, rt route) error {
	d := digest.Digest(rt.ref)
	ref := fetch.Ref{Registry: rt.registry, Repo: rt.repo}
	open := m.fetch.Opener(ref, d)
	if m.push != nil && rt.registry == m.push.Namespace() {
		open = m.fetch.PeersOnly(d, store.ErrNotFound) // push_cluster.go: the local namespace has no upstream
	}
	b, err := m.fetch.Blob(r.Context(), ref, d, open) // the store, a download in flight, or a new one
	switch {
	case errors.Is(err, store.ErrNoSpace):
		return m.serveDirect(w, r, ref, d, open)
	case err != nil:
		return err
	case b.Stored != nil:
		defer b.Stored.Close()
		return m.serveStored(w, r, d, b.Stored, b.Size)
	}
	defer b.Fill.Release()
	return m.serveFill(w, r, d, b.Fill, b.Started, open)
}

func setBlobHeaders(h http.Header, d digest.Digest, source fetch.Kind) {
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Accept-Ranges", "bytes")
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set(HeaderSource, source.String())
}

// writeBlobHead answers the Range header for a blob of the given size and writes the status
// line; it returns the byte span to send, [start, end).
func writeBlobHead(w http.ResponseWriter, r *http.Request, size int64) (int64, int64, error) {
	rng, err := parseRange(r.Header.Get("Range"), size)
	if err != nil {
		if size >= 0 {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		}
		return 0, 0, &ocierr.Error{Status: http.StatusRequestedRangeNotSatisfiable, Code: "RANGE_INVALID", Message: "requested range not satisfiable", Err: err}
	}
	if rng == nil {
		if size >= 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		}
		w.WriteHeader(http.StatusOK)
		return 0, size, nil
	}
	setRangeHeaders(w.Header(), rng, size)
	w.WriteHeader(http.StatusPartialContent)
	return rng.start, rng.end + 1, nil
}

// serveStored sends committed content. io.CopyN over the *os.File lets net/http use sendfile.
func (m *Mirror) serveStored(w http.ResponseWriter, r *http.Request, d digest.Digest, rc io.ReadSeeker, size int64) error {
	setBlobHeaders(w.Header(), d, fetch.Store)
	start, end, err := writeBlobHead(w, r, size)
	if err != nil || r.Method == http.MethodHead {
		return err
	}
	if start > 0 { // a fresh reader is at 0 already: one syscall less per GET
		if _, err := rc.Seek(start, io.SeekStart); err != nil {
			return fmt.Errorf("%w: %v", errAborted, err)
		}
	}
	if _, ok := rc.(*os.File); ok {
		// Send the headers now: net/http's ReadFrom would otherwise first read 512 bytes of
		// the file through a buffer (to sniff a Content-Type we have set) before sendfile.
		// Corked, they share a segment with the first bytes (guard.Cork).
		defer guard.Cork(r.Context())()
		_ = http.NewResponseController(w).Flush()
	}
	if _, err := io.CopyN(w, rc, end-start); err != nil {
		return fmt.Errorf("%w: %v", errAborted, err)
	}
	return nil
}

// serveFill streams a blob that is being downloaded, as it arrives.
func (m *Mirror) serveFill(w http.ResponseWriter, r *http.Request, d digest.Digest, f *fetch.Fill, started bool, open fetch.Opener) error {
	ctx := r.Context()
	size, err := f.WaitStarted(ctx)
	if errors.Is(err, store.ErrNoSpace) {
		return m.serveDirect(w, r, f.Ref(), d, open)
	}
	if err != nil {
		return ocierr.NotFoundAs(err, "BLOB_UNKNOWN", "blob")
	}
	if size < 0 {
		r.Header.Del("Range") // unknown size: send it whole
	}
	setBlobHeaders(w.Header(), d, f.SourceFor(started)) // inflight when following another's download
	rng, err := parseRange(r.Header.Get("Range"), size)
	if err != nil || r.Method == http.MethodHead {
		_, _, err = writeBlobHead(w, r, size)
		return err
	}
	start, end := int64(0), size
	if rng != nil {
		start, end = rng.start, rng.end+1
	}
	// Wait briefly for the first byte before the status line, so that a download that fails
	// early (not found, wrong bytes) still gets a proper OCI error instead of a cut
	// connection. Not longer: bytes from a peer are held back until the whole blob is
	// verified, and a client must not sit without response headers meanwhile.
	buf := make([]byte, 256<<10) // net/http's ReadFrom would use 32 KiB: more syscalls per byte
	pctx, cancel := context.WithTimeout(ctx, firstByteWait)
	if rng != nil {
		// A range's last byte waits for the digest check (readAt): if the verdict comes within
		// the wait, a blob that does not verify gets an OCI error, not a cut 206.
		f.WaitSettled(pctx)
	}
	fr := f.ClientReader(pctx, start, end, m.verifyFirst, m.verifyMaxWait)
	n, err := fr.Read(buf)
	cancel()
	fr.SetContext(ctx)
	switch {
	case errors.Is(err, store.ErrNoSpace) && n == 0 && start == 0:
		return m.serveDirect(w, r, f.Ref(), d, open)
	case err == nil, err == io.EOF, errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
	default:
		return ocierr.NotFoundAs(err, "BLOB_UNKNOWN", "blob")
	}
	if _, _, err := writeBlobHead(w, r, size); err != nil {
		return err
	}
	if _, err := w.Write(buf[:n]); err != nil {
		return fmt.Errorf("%w: %v", errAborted, err)
	}
	// Send the headers and what there is now: the rest may wait for the digest check (peer
	// bytes, a range's last byte), and net/http would hold a short start in its buffer.
	_ = http.NewResponseController(w).Flush()
	if size >= 0 {
		// Down the ResponseWriter's ReadFrom to the connection, which sends the bytes from the
		// fill's temporary file with sendfile as they become readable (sendfile.go): no copy
		// through this process. Chunked (unknown size) bodies cannot, net/http copies those.
		_, err = io.Copy(w, spanner{fr})
	} else {
		_, err = io.CopyBuffer(writerOnly{w}, fr, buf)
	}
	if errors.Is(err, store.ErrNoSpace) && rng == nil && ctx.Err() == nil {
		// The disk filled up under the download: go on from the upstream where we are,
		// verifying the whole blob ourselves (the prefix is re-hashed from the temp file). Not
		// for a range: its bytes could not be verified before they went out.
		err = m.continueDirect(ctx, w, d, f, fr.Offset(), open)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", errAborted, err)
	}
	return nil
}

func (m *Mirror) continueDirect(ctx context.Context, w io.Writer, d digest.Digest, f *fetch.Fill, pos int64, open fetch.Opener) error {
	h := d.Algorithm().Hash()
	if _, err := io.Copy(h, io.NewSectionReader(readerAtFunc(f.ReadPrefixAt), 0, pos)); err != nil {
		return err
	}
	rc, size, source, err := open(ctx, pos)
	if err != nil {
		return err
	}
	defer rc.Close()
	br, err := m.fetch.DirectBound(rc, d, size, pos)
	if err == nil {
		_, err = io.Copy(w, fetch.NewVerifyingReader(br, d, h))
	}
	m.fetch.NoteBound(f.Ref(), d, source, err)
	return err
}

// spanner lets the connection send a download in flight with sendfile (conncap.go's
// fileSpanner) as its bytes become readable.
type spanner struct{ *fetch.FillReader }

var _ fileSpanner = spanner{} // in-flight downloads go out by sendfile (sendfile.go)

func (s spanner) span(max int64) (*os.File, int64, int64, error) { return s.Span(max) }
func (s spanner) sent(n int64)                                   { s.Sent(n) }

// writerOnly hides io.ReaderFrom so that io.CopyBuffer uses the buffer it is given.
type writerOnly struct{ io.Writer }

type readerAtFunc func(p []byte, off int64) (int, error)

func (f readerAtFunc) ReadAt(p []byte, off int64) (int, error) { return f(p, off) }

// serveDirect is the degraded path when the store cannot take the blob: stream it from the
// upstream, verified, without keeping it. A Range cannot be verified, so it is refused.
func (m *Mirror) serveDirect(w http.ResponseWriter, r *http.Request, ref fetch.Ref, d digest.Digest, open fetch.Opener) error {
	if r.Header.Get("Range") != "" {
		return &ocierr.Error{Status: http.StatusServiceUnavailable, Code: "UNAVAILABLE", Message: "the mirror's store is full; ranged reads need the cache, retry without Range"}
	}
	rc, size, source, err := open(r.Context(), 0)
	if err != nil {
		return ocierr.NotFoundAs(err, "BLOB_UNKNOWN", "blob")
	}
	defer rc.Close()
	// Nothing is stored, but the bound still holds: an endless body would stream for ever.
	br, err := m.fetch.DirectBound(rc, d, size, 0)
	if err == nil {
		setBlobHeaders(w.Header(), d, fetch.Passthrough)
		if _, _, err := writeBlobHead(w, r, size); err != nil || r.Method == http.MethodHead {
			return err
		}
		if _, err = io.Copy(w, fetch.NewVerifyingReader(br, d, nil)); err != nil {
			err = fmt.Errorf("%w: %w", errAborted, err)
		}
	}
	m.fetch.NoteBound(ref, d, source, err)
	return err
}

// ---- manifests ----

type manifestResult struct {
	data      []byte
	mediaType string
	source    fetch.Kind
}

func (m *Mirror) manifest(w http.ResponseWriter, r *http.Request, rt route) error {
	ctx := r.Context()
	var d digest.Digest
	stale := false
	if oci.IsDigestRef(rt.ref) {
		d = digest.Digest(rt.ref)
	} else {
		tag, st, err := m.resolveTag(ctx, rt)
		if err != nil {
			return ocierr.NotFoundAs(err, "MANIFEST_UNKNOWN", "manifest")
		}
		d, stale = tag.Digest, st
	}
	mr, err := m.manifestBytes(ctx, rt, d)
	if err != nil {
		return ocierr.NotFoundAs(err, "MANIFEST_UNKNOWN", "manifest")
	}
	if !accepts(r.Header.Values("Accept"), mr.mediaType) {
		return &ocierr.Error{Status: http.StatusNotFound, Code: "MANIFEST_UNKNOWN", Message: fmt.Sprintf("manifest is %s, which the client's Accept header does not list", mr.mediaType)}
	}
	h := w.Header()
	h.Set("Content-Type", mr.mediaType)
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Length", strconv.Itoa(len(mr.data)))
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set(HeaderSource, mr.source.String())
	if stale {
		h.Set(HeaderStale, "true")
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(mr.data)
	}
	return nil
}

// resolveTag maps a tag to a digest: from the store while the last upstream check is younger
// than the tag TTL, else by an upstream HEAD (HEADs do not count against Docker Hub's pull
// limit). When the upstream cannot answer, the last known mapping is served, marked stale.
func (m *Mirror) resolveTag(ctx context.Context, rt route) (store.Tag, bool, error) {
	name := rt.registry + "/" + rt.repo + ":" + rt.ref
	known, kerr := m.store.GetTag(ctx, name)
	if kerr == nil && m.tagTTL > 0 && time.Since(known.Checked) < m.tagTTL {
		return known, false, nil
	}
	v, err, _ := m.flight.Do("tag\x00"+name, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		desc, err := m.up.HeadManifest(ctx, rt.registry, rt.repo, rt.ref)
		if err != nil {
			return nil, err
		}
		t := store.Tag{Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size, Checked: time.Now()}
		if err := m.store.PutTag(ctx, name, t); err != nil {
			m.log.Warn("could not record tag", "tag", name, "err", err)
		}
		return t, nil
	})
	if err == nil {
		return v.(store.Tag), false, nil
	}
	if kerr == nil && upstreamUnavailable(err) {
		m.staleLog.Do(func() {
			m.log.Warn("upstream unavailable: serving the last known digest for tags (logged once a minute)", "tag", name, "digest", known.Digest, "err", err)
		})
		return known, true, nil
	}
	return store.Tag{}, false, err
}

// upstreamUnavailable is true for failures that say nothing about the tag itself: the upstream
// could not be reached, timed out, rate limited us or failed on its side.
func upstreamUnavailable(err error) bool {
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return ue.Status == http.StatusTooManyRequests || ue.Status >= 500
	}
	return !errors.Is(err, upstream.ErrUnknownRegistry) && !errors.Is(err, upstream.ErrDigestMismatch)
}

// manifestBytes returns a manifest by digest: the resolution order for manifests (fetch).
func (m *Mirror) manifestBytes(ctx context.Context, rt route, d digest.Digest) (manifestResult, error) {
	man, err := m.fetch.Manifest(ctx, fetch.Ref{Registry: rt.registry, Repo: rt.repo}, d)
	if err != nil {
		return manifestResult{}, err
	}
	return manifestResult{data: man.Data, mediaType: man.MediaType, source: man.Source}, nil
}

// accepts reports whether a client's Accept headers admit a media type. No Accept header at
// all admits anything, as registries do.
func accepts(values []string, mediaType string) bool {
	if len(values) == 0 {
		return true
	}
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			if mt == "*/*" || mt == mediaType || (strings.HasSuffix(mt, "/*") && strings.HasPrefix(mediaType, strings.TrimSuffix(mt, "*"))) {
				return true
			}
		}
	}
	return false
}

// ---- pass-through (tags/list, referrers) ----

func (m *Mirror) passThrough(w http.ResponseWriter, r *http.Request, rt route, subpath string) error {
	q := r.URL.Query()
	ns := q.Get("ns")
	q.Del("ns")
	resp, err := m.up.Get(r.Context(), rt.registry, rt.repo, subpath, q.Encode())
	if err != nil {
		return ocierr.NotFoundAs(err, "NAME_UNKNOWN", "repository")
	}
	defer resp.Body.Close()
	h := w.Header()
	for _, k := range []string{"Content-Type", "Content-Length", "Docker-Content-Digest", "OCI-Filters-Applied"} {
		if v := resp.Header.Get(k); v != "" {
			h.Set(k, v)
		}
	}
	if link := resp.Header.Get("Link"); link != "" {
		h.Set("Link", rewriteLink(link, "/v2/"+rt.clientName+"/"+subpath, ns))
	}
	h.Set(HeaderSource, fetch.Upstream.String())
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return nil
	}
	if _, err := io.Copy(w, io.LimitReader(resp.Body, 64<<20)); err != nil {
		return fmt.Errorf("%w: %v", errAborted, err)
	}
	return nil
}

// rewriteLink points a pagination Link at this mirror's path for the same repository, keeping
// the upstream's query (n, last) and the client's ns.
func rewriteLink(link, path, ns string) string {
	start, end := strings.IndexByte(link, '<'), strings.IndexByte(link, '>')
	if start < 0 || end < start {
		return link
	}
	u, err := url.Parse(link[start+1 : end])
	if err != nil {
		return link
	}
	q := u.Query()
	if ns != "" {
		q.Set("ns", ns)
	}
	nu := url.URL{Path: path, RawQuery: q.Encode()}
	return link[:start+1] + nu.String() + link[end:]
}
