package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/p2p"
)

// Cluster preheat (`shoal pull --cluster`): the asked node resolves each image to a digest and
// fetches its manifests, then asks the swarm over P2P (p2p.Node.Preheat) to warm the pinned
// images; every node reached warms them through its own mirror, as `shoal pull` does, so the
// blobs come from the store, a peer, the designated fetcher or (once) the upstream.

// preheatNode is the P2P node's side of a cluster pull.
type preheatNode interface {
	Preheat(ctx context.Context, req p2p.PreheatRequest, fn func(p2p.PreheatProgress)) (p2p.PreheatProgress, error)
}

var (
	_ preheatNode   = (*p2p.Node)(nil)
	_ p2p.Preheater = (*admin)(nil)
)

// eventSink receives a pull's progress events.
type eventSink interface {
	send(adminapi.PullEvent)
}

// clusterPull answers POST /v1/pull with cluster set.
func (a *admin) clusterPull(w http.ResponseWriter, r *http.Request, req adminapi.PullRequest, refs []imageRef, want *ocispec.Platform) {
	switch {
	case req.Nodes < 0 || req.Nodes > p2p.PreheatMaxNodes:
		WriteError(w, badRequest("pull --cluster: nodes must be 1 to %d", p2p.PreheatMaxNodes))
		return
	case req.Fraction < 0 || req.Fraction > 1 || req.Fraction != req.Fraction:
		WriteError(w, badRequest("pull --cluster: fraction must be in (0, 1]"))
		return
	case req.Nodes > 0 && req.Fraction > 0:
		WriteError(w, badRequest("pull --cluster: give nodes or fraction, not both"))
		return
	}
	pn, ok := a.node.(preheatNode)
	if a.node == nil || !ok {
		WriteError(w, &apiError{status: http.StatusConflict, code: adminapi.CodeDisabled,
			err: errors.New("pull --cluster: P2P is disabled on this node (set p2p: true), so there is no swarm to ask")})
		return
	}
	ctx := r.Context()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	ev := &eventStream{w: w, rc: http.NewResponseController(w), enc: json.NewEncoder(w)}
	// Resolve here, once: the nodes then pull by digest and find the manifests at this node
	// (a provider) instead of each asking the upstream for the tag.
	var pinned []string
	errs := 0
	for _, ref := range refs {
		top, err := a.self.manifest(ctx, ref, ref.ref())
		if err == nil {
			ev.send(adminapi.PullEvent{Type: adminapi.EventImage, Image: ref.String(), Digest: top.digest.String(), MediaType: top.mediaType, Source: top.source, State: adminapi.StateDone})
			_, _, err = a.platformManifests(ctx, ref, top, want, func(child ocispec.Descriptor, fm fetchedManifest) {
				ev.send(adminapi.PullEvent{Type: adminapi.EventManifest, Image: ref.String(), Digest: fm.digest.String(), MediaType: fm.mediaType,
					Platform: oci.FormatPlatform(child.Platform), Source: fm.source, State: adminapi.StateDone})
			})
		}
		if err != nil {
			ev.send(adminapi.PullEvent{Type: adminapi.EventImage, Image: ref.String(), State: adminapi.StateError, Error: err.Error()})
			errs++
			continue
		}
		p := ref
		p.digest = top.digest
		pinned = append(pinned, p.String())
	}
	done := adminapi.PullEvent{Type: adminapi.EventDone, Images: len(pinned), Errors: errs}
	if len(pinned) == 0 {
		ev.send(done)
		return
	}
	start := time.Now()
	a.log.Info("cluster pull started", "images", pinned, "nodes", req.Nodes, "fraction", req.Fraction)
	final, err := pn.Preheat(ctx, p2p.PreheatRequest{Images: pinned, Platform: req.Platform, Nodes: req.Nodes, Fraction: req.Fraction, Lead: true},
		func(p p2p.PreheatProgress) {
			ev.send(adminapi.PullEvent{Type: adminapi.EventCluster, Cluster: clusterProgress(p)})
		})
	done.Cluster = clusterProgress(final)
	done.Bytes = final.Bytes
	done.Errors += final.Failed + final.Unreached
	if err != nil {
		done.Errors++
		done.Cluster.Errors = append(done.Cluster.Errors, err.Error())
	}
	a.log.Info("cluster pull finished", "images", pinned, "took", time.Since(start).Round(time.Millisecond),
		"reached", final.Reached, "done", final.Done, "failed", final.Failed, "unreached", final.Unreached, "bytes", final.Bytes, "err", err)
	ev.send(done)
}

func clusterProgress(p p2p.PreheatProgress) *adminapi.ClusterProgress {
	return &adminapi.ClusterProgress{Reached: p.Reached, Selected: p.Selected, Done: p.Done, Failed: p.Failed,
		Unreached: p.Unreached, Total: p.Total, Bytes: p.Bytes, Errors: p.Errors}
}

// preheatConcurrency is how many blobs of one image a preheat fetches at once: all of them up
// to this, so that each is in flight (and advertised) early and the next level of the preheat
// tree can follow them.
const preheatConcurrency = 16

// Preheat warms this node's cache with images a cluster pull asked for (p2p.Preheater): the
// same pull as `shoal pull`, all images at once and up to preheatConcurrency blobs of each,
// reporting the bytes it fetches, and calling started once every blob is in flight here or
// done (the preheat then asks the next nodes, which find this node a provider).
func (a *admin) Preheat(ctx context.Context, images []string, plat string, progress func(int64), started func()) error {
	var want *ocispec.Platform
	if plat != "" {
		p, err := parsePlatform(plat)
		if err != nil {
			return err
		}
		want = p
	}
	refs := make([]imageRef, 0, len(images))
	for _, s := range images {
		ref, err := parseImageRef(s, a.opt.DefaultRegistry)
		if err != nil {
			return err
		}
		refs = append(refs, ref)
	}
	start := time.Now()
	sink := &bytesSink{progress: progress, seen: map[string]int64{}, started: map[string]bool{},
		expect: map[string]bool{}, pending: len(refs), onStarted: started}
	var tot pullTotals
	var wg sync.WaitGroup
	for _, ref := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.pullImageWith(ctx, ref, want, sink, &tot, pullOpts{conc: preheatConcurrency, onJobs: sink.jobs, storeVerifies: true, onFlowing: sink.flowing})
		}()
	}
	wg.Wait()
	err := ctx.Err()
	if err == nil && tot.errors > 0 {
		err = fmt.Errorf("%d error(s), first: %s", tot.errors, sink.firstErr)
	}
	a.log.Info("preheat done", "images", images, "blobs", tot.blobs, "bytes", tot.bytes, "took", time.Since(start).Round(time.Millisecond), "err", err)
	return err
}

// bytesSink turns a pull's events into bytes fetched, reported as they come, and says when
// every blob has started.
type bytesSink struct {
	progress  func(int64)
	onStarted func()
	mu        sync.Mutex
	seen      map[string]int64 // per blob, bytes reported
	started   map[string]bool  // blobs with bytes flowing, done or failed
	expect    map[string]bool  // blobs of the images whose manifests were read
	pending   int              // images whose blobs are not known yet
	fired     bool
	firstErr  string
}

func (s *bytesSink) jobs(ds []digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		s.expect[d.String()] = true
	}
	s.pending--
	s.checkLocked()
}

func (s *bytesSink) checkLocked() {
	if s.fired || s.pending > 0 || s.onStarted == nil {
		return
	}
	for d := range s.expect {
		if !s.started[d] {
			return
		}
	}
	s.fired = true
	go s.onStarted()
}

// flowing marks d started: this node's download of it runs (and is advertised).
func (s *bytesSink) flowing(d digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started[d.String()] {
		s.started[d.String()] = true
		s.checkLocked()
	}
}

func (s *bytesSink) send(ev adminapi.PullEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ev.State == adminapi.StateError && s.firstErr == "" {
		s.firstErr = ev.Digest + ev.Image + ": " + ev.Error
	}
	if ev.Type != adminapi.EventBlob {
		return
	}
	if ev.State != adminapi.StateStart && !s.started[ev.Digest] {
		s.started[ev.Digest] = true
		s.checkLocked()
	}
	if ev.Source == "store" || ev.Source == "" {
		return
	}
	if d := ev.Done - s.seen[ev.Digest]; d > 0 {
		s.seen[ev.Digest] = ev.Done
		s.progress(d)
	}
}
