package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/oci"
)

// pullConcurrency is how many blobs of one image a warm-up fetches at once.
const pullConcurrency = 4

// progressEvery spaces out progress events of one blob.
const progressEvery = 150 * time.Millisecond

// eventStream writes pull events as JSON lines, flushed one by one.
type eventStream struct {
	mu  sync.Mutex
	w   http.ResponseWriter
	rc  *http.ResponseController
	enc *json.Encoder
}

func (s *eventStream) send(ev adminapi.PullEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.enc.Encode(ev)
	_ = s.rc.Flush()
}

// pullTotals add up a pull.
type pullTotals struct {
	mu     sync.Mutex
	images int
	blobs  int
	bytes  int64
	errors int
}

func (t *pullTotals) add(blobs int, bytes int64, errs int) {
	t.mu.Lock()
	t.blobs += blobs
	t.bytes += bytes
	t.errors += errs
	t.mu.Unlock()
}

// pull warms the cache with images through the daemon's own mirror API, streaming progress.
func (a *admin) pull(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		WriteError(w, &apiError{status: http.StatusMethodNotAllowed, code: adminapi.CodeBadRequest, err: errors.New("pull: use POST")})
		return
	}
	var req adminapi.PullRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		WriteError(w, badRequest("pull: bad request body: %v", err))
		return
	}
	if len(req.Images) == 0 {
		WriteError(w, badRequest("pull: name at least one image"))
		return
	}
	var want *ocispec.Platform
	if req.Platform != "" {
		p, err := parsePlatform(req.Platform)
		if err != nil {
			WriteError(w, err)
			return
		}
		want = p
	}
	refs := make([]imageRef, 0, len(req.Images))
	var fileTargets []string // admin_pull_files.go
	for _, s := range req.Images {
		if isFileTarget(s) {
			fileTargets = append(fileTargets, s)
			continue
		}
		ref, err := parseImageRef(s, a.opt.DefaultRegistry)
		if err != nil {
			WriteError(w, err)
			return
		}
		refs = append(refs, ref)
	}
	if req.Cluster {
		a.clusterPull(w, r, req, refs, want)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	ev := &eventStream{w: w, rc: http.NewResponseController(w), enc: json.NewEncoder(w)}
	var tot pullTotals
	for _, ref := range refs {
		a.pullImage(r.Context(), ref, want, ev, &tot)
		tot.images++
	}
	for _, t := range fileTargets {
		a.pullFiles(r.Context(), t, req.Include, ev, &tot)
		tot.images++
	}
	ev.send(adminapi.PullEvent{Type: adminapi.EventDone, Images: tot.images, Blobs: tot.blobs, Bytes: tot.bytes, Errors: tot.errors})
}

// blobJob is one config or layer to fetch.
type blobJob struct {
	desc     ocispec.Descriptor
	kind     string
	platform string
}

// platformManifests fetches the manifests an image stands for: itself, or the children of an
// index (those matching want, or all). It reports each child as a manifest event.
func (a *admin) platformManifests(ctx context.Context, ref imageRef, top fetchedManifest, want *ocispec.Platform, onChild func(ocispec.Descriptor, fetchedManifest)) ([]oci.Doc, []string, error) {
	doc, err := oci.ParseManifest(top.data)
	if err != nil {
		return nil, nil, err
	}
	if !doc.IsIndex() {
		return []oci.Doc{doc}, []string{""}, nil
	}
	var docs []oci.Doc
	var plats []string
	for _, child := range doc.Manifests() {
		if want != nil && !oci.MatchPlatform(*want, child.Platform) {
			continue
		}
		fm, err := a.self.manifest(ctx, ref, child.Digest.String())
		if err != nil {
			return nil, nil, fmt.Errorf("manifest %s (%s): %w", child.Digest, oci.FormatPlatform(child.Platform), err)
		}
		cd, err := oci.ParseManifest(fm.data)
		if err != nil {
			return nil, nil, err
		}
		if onChild != nil {
			onChild(child, fm)
		}
		docs = append(docs, cd)
		plats = append(plats, oci.FormatPlatform(child.Platform))
	}
	if len(docs) == 0 {
		return nil, nil, notFound("%s has no manifest for platform %s", ref, oci.FormatPlatform(want))
	}
	return docs, plats, nil
}

func (a *admin) pullImage(ctx context.Context, ref imageRef, want *ocispec.Platform, ev eventSink, tot *pullTotals) {
	a.pullImageWith(ctx, ref, want, ev, tot, pullOpts{})
}

// pullOpts tune a warm-up: conc blobs at once (0: pullConcurrency); onJobs sees the blobs
// to warm once the manifests are read; storeVerifies skips hashing what the mirror sends when
// the store commits the blob (it commits only bytes that match the digest, and the warm-up
// waits for that commit), which saves a second SHA-256 pass per byte on every node of a
// cluster preheat.
type pullOpts struct {
	conc          int
	onJobs        func([]digest.Digest)
	storeVerifies bool
	// onFlowing hears of each blob as soon as this node's download of it has started (and
	// is advertised to peers), which can be long before the mirror answers the warm-up
	// (peer content is served once verified).
	onFlowing func(digest.Digest)
}

func (a *admin) pullImageWith(ctx context.Context, ref imageRef, want *ocispec.Platform, ev eventSink, tot *pullTotals, o pullOpts) {
	fail := func(err error) {
		ev.send(adminapi.PullEvent{Type: adminapi.EventImage, Image: ref.String(), State: adminapi.StateError, Error: err.Error()})
		tot.add(0, 0, 1)
	}
	top, err := a.self.manifest(ctx, ref, ref.ref())
	if err != nil {
		fail(err)
		return
	}
	ev.send(adminapi.PullEvent{Type: adminapi.EventImage, Image: ref.String(), Digest: top.digest.String(), MediaType: top.mediaType, Source: top.source, State: adminapi.StateDone})
	docs, plats, err := a.platformManifests(ctx, ref, top, want, func(child ocispec.Descriptor, fm fetchedManifest) {
		ev.send(adminapi.PullEvent{Type: adminapi.EventManifest, Image: ref.String(), Digest: fm.digest.String(), MediaType: fm.mediaType,
			Platform: oci.FormatPlatform(child.Platform), Source: fm.source, State: adminapi.StateDone})
	})
	if err != nil {
		fail(err)
		return
	}
	var jobs []blobJob
	seen := map[digest.Digest]bool{}
	for i, doc := range docs {
		var all []blobJob
		if c := doc.Config(); c != nil {
			all = append(all, blobJob{desc: *c, kind: "config", platform: plats[i]})
		}
		for _, l := range doc.Layers() {
			all = append(all, blobJob{desc: l, kind: "layer", platform: plats[i]})
		}
		for _, j := range all {
			if j.desc.Digest.Validate() != nil || seen[j.desc.Digest] {
				continue
			}
			seen[j.desc.Digest] = true
			jobs = append(jobs, j)
		}
	}
	if o.onJobs != nil {
		ds := make([]digest.Digest, len(jobs))
		for i, j := range jobs {
			ds[i] = j.desc.Digest
		}
		o.onJobs(ds)
	}
	conc := pullConcurrency
	if o.conc > 0 {
		conc = o.conc
	}
	work := make(chan blobJob)
	var wg sync.WaitGroup
	for range min(conc, len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				n, err := a.warmBlob(ctx, ref, j, ev, o)
				errs := 0
				if err != nil {
					errs = 1
				}
				tot.add(1, n, errs)
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
}

// warmBlob makes sure one blob is in the store, fetching it through the mirror if it is not.
// It returns the bytes fetched.
func (a *admin) warmBlob(ctx context.Context, ref imageRef, j blobJob, ev eventSink, o pullOpts) (int64, error) {
	base := adminapi.PullEvent{Type: adminapi.EventBlob, Image: ref.String(), Digest: j.desc.Digest.String(), Kind: j.kind,
		Platform: j.platform, Size: j.desc.Size}
	if info, err := a.store.Stat(ctx, j.desc.Digest); err == nil {
		e := base
		e.State, e.Source, e.Size, e.Done = adminapi.StateDone, "store", info.Size, info.Size
		ev.send(e)
		return 0, nil
	}
	fail := func(err error) (int64, error) {
		e := base
		e.State, e.Error = adminapi.StateError, err.Error()
		ev.send(e)
		return 0, err
	}
	start := base
	start.State = adminapi.StateStart
	ev.send(start)
	if o.onFlowing != nil {
		stop := a.dl.WhenStarted(ctx, j.desc.Digest, func() { o.onFlowing(j.desc.Digest) })
		defer stop()
	}
	rc, source, err := a.self.blob(ctx, ref, j.desc.Digest)
	if err != nil {
		return fail(err)
	}
	defer rc.Close()
	// Flowing: say so at once (a cluster preheat asks the next nodes once every blob flows).
	flowing := base
	flowing.State, flowing.Source = adminapi.StateProgress, source
	ev.send(flowing)
	if o.storeVerifies && source != "passthrough" {
		// The download runs on without this reader (it outlives its
		// clients): wait for its verified commit instead of copying every byte through the
		// mirror once more.
		rc.Close()
		n, err := a.dl.WaitStored(ctx, j.desc.Digest, func(n int64) {
			e := base
			e.State, e.Source, e.Done = adminapi.StateProgress, source, n
			ev.send(e)
		})
		if err != nil {
			return fail(err)
		}
		e := base
		e.State, e.Source, e.Done = adminapi.StateDone, source, n
		if e.Size == 0 {
			e.Size = n
		}
		ev.send(e)
		return n, nil
	}
	h := j.desc.Digest.Algorithm().Hash()
	hash := !o.storeVerifies || source == "passthrough" // passthrough: nothing is stored
	buf := make([]byte, 256<<10)
	var n int64
	last := time.Now()
	for {
		k, rerr := rc.Read(buf)
		if k > 0 {
			if hash {
				h.Write(buf[:k])
			}
			n += int64(k)
			if time.Since(last) >= progressEvery {
				last = time.Now()
				e := base
				e.State, e.Source, e.Done = adminapi.StateProgress, source, n
				ev.send(e)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fail(fmt.Errorf("reading %s from the mirror: %w", j.desc.Digest, rerr))
		}
	}
	if got := digest.NewDigest(j.desc.Digest.Algorithm(), h); hash && got != j.desc.Digest || (j.desc.Size > 0 && n != j.desc.Size) {
		return fail(fmt.Errorf("%s: got %d bytes hashing to %s", j.desc.Digest, n, got))
	}
	if source != "passthrough" { // passthrough: the store is full, nothing to wait for
		if err := a.waitStored(ctx, j.desc.Digest); err != nil {
			return fail(err)
		}
	}
	e := base
	e.State, e.Source, e.Done = adminapi.StateDone, source, n
	if e.Size == 0 {
		e.Size = n
	}
	ev.send(e)
	return n, nil
}

// waitStored waits until a blob just read through the mirror is committed: the mirror sends the
// last byte as soon as the digest is verified, before the store has made the blob durable.
func (a *admin) waitStored(ctx context.Context, d digest.Digest) error {
	_, err := a.dl.WaitStored(ctx, d, nil)
	return err
}
