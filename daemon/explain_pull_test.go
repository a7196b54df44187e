package daemon

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/mirror"
)

// getBlob GETs a blob from d and returns the source it reports, after checking every byte.
func getBlob(t *testing.T, d *Daemon, repo string, dg digest.Digest) string {
	t.Helper()
	resp, err := http.Get("http://" + d.Addr() + "/v2/" + repo + "/blobs/" + dg.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || digest.FromBytes(body) != dg {
		t.Fatalf("GET blob %s: status %d, %d bytes, err %v", dg, resp.StatusCode, len(body), err)
	}
	return resp.Header.Get(mirror.HeaderSource)
}

// readBlob reads a blob response to its end and checks it is the blob dg.
func readBlob(resp *http.Response, dg digest.Digest) error {
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && (resp.StatusCode != http.StatusOK || digest.FromBytes(body) != dg) {
		err = fmt.Errorf("status %d, %d bytes hashing to %s, want %s", resp.StatusCode, len(body), digest.FromBytes(body), dg)
	}
	return err
}

// explainEntries asks d's admin API to explain target and returns its entries by digest.
func explainEntries(t *testing.T, d *Daemon, target string) map[string]adminapi.ExplainEntry {
	t.Helper()
	e, err := adminFor(t, d).Explain(t.Context(), target)
	if err != nil {
		t.Fatalf("explain %s: %v", target, err)
	}
	out := map[string]adminapi.ExplainEntry{}
	for _, b := range e.Blobs {
		out[b.Digest] = b
	}
	return out
}

// TestExplainEqualsPull: what `shoal explain` predicts for a blob or manifest is where the
// next request for it is answered from (X-Shoal-Source, and the decision the history records),
// in every case of the resolution order: the upstream (the designated peer grants this node
// the fetch, this node is the designated fetcher, or P2P is off), a provider peer, the store,
// a download in flight, and a tag served from the store while the upstream is down. (A
// designated peer that streams the blob is an old node's answer: TestResolverOrder, in
// internal/fetch, covers it.)
func TestExplainEqualsPull(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/predict", 8<<10, 16)
	a := startNode(t, up, nil, withOps)
	b := startNode(t, up, a.node.Addrs(), withOps)
	waitFor(t, func() bool {
		return a.node.Status().RoutingTableSize > 0 && b.node.Status().RoutingTableSize > 0
	})
	layers := layerDigests(t, img)

	// Nobody has the layers: each is predicted from the upstream, because A, its designated
	// fetcher, grants B the fetch, or because B is its designated fetcher; and fetched from there.
	pred := explainEntries(t, b, "test/predict")
	seen := map[string]int{}
	for _, l := range layers {
		want := pred[l.String()].Next
		seen[want]++
		if strings.Contains(pred[l.String()].Reason, "would grant") {
			seen["granted"]++
		}
		if got := getBlob(t, b, "test/predict", l); got != want {
			t.Errorf("layer %s on B: explain predicted %q (%s), the pull came from %q", l, want, pred[l.String()].Reason, got)
		}
		if last := b.fetch.Recent(l, 1); len(last) != 1 || last[0].Source != want {
			t.Errorf("layer %s on B: explain predicted %q, the history says %+v", l, want, last)
		}
	}
	if seen["upstream"] != len(layers) || seen["granted"] == 0 || seen["granted"] == len(layers) {
		t.Errorf("predictions over %d layers: %v; want the upstream for all, granted by A for some", len(layers), seen)
	}

	// B provides every layer: A's explain says peer, and A's pulls agree; then A holds them
	// all: its explain says store, and its pulls agree.
	waitProvided(t, a.node, layers...)
	for _, want := range []string{"peer", "store"} {
		pred = explainEntries(t, a, "test/predict")
		for _, l := range layers {
			if got := pred[l.String()].Next; got != want {
				t.Errorf("layer %s on A: explain predicted %q (%s), want %q", l, got, pred[l.String()].Reason, want)
			}
			if got := getBlob(t, a, "test/predict", l); got != want {
				t.Errorf("layer %s on A: explain predicted %q, the pull came from %q", l, want, got)
			}
		}
		waitFor(t, func() bool { return len(a.fetch.InFlight()) == 0 }) // its downloads committed
	}

	// A node without P2P: the upstream, a download in flight, and a stale tag.
	slow := pushRandom(t, up, "test/slow", 256<<10, 1)
	sl := layerDigests(t, slow)[0]
	gate := gateBlob(up, "/v2/test/slow/blobs/"+sl.String())
	c := startDaemon(t, up, withOps, func(c *Config) { c.TagTTL = time.Nanosecond })
	pred = explainEntries(t, c, "test/slow")
	if got := pred[sl.String()].Next; got != "upstream" {
		t.Errorf("slow layer on C before any pull: predicted %q, want upstream", got)
	}
	type answer struct {
		source string
		err    error
	}
	first := make(chan answer, 1)
	go func() {
		resp, err := http.Get("http://" + c.Addr() + "/v2/test/slow/blobs/" + sl.String())
		if err != nil {
			first <- answer{err: err}
			return
		}
		first <- answer{resp.Header.Get(mirror.HeaderSource), readBlob(resp, sl)}
	}()
	<-gate.started
	if got := explainEntries(t, c, sl.String())[sl.String()]; got.Next != "inflight" {
		t.Errorf("slow layer on C while it downloads: predicted %q (%s), want inflight", got.Next, got.Reason)
	}
	// The second client gets its headers while the download is held: it joined it.
	resp, err := http.Get("http://" + c.Addr() + "/v2/test/slow/blobs/" + sl.String())
	if err != nil {
		t.Fatal(err)
	}
	gate.open()
	if got := resp.Header.Get(mirror.HeaderSource); got != "inflight" {
		t.Errorf("the client that joined the download: source %q, want inflight (as predicted)", got)
	}
	if err := readBlob(resp, sl); err != nil {
		t.Errorf("the client that joined the download: %v", err)
	}
	if got := <-first; got.err != nil || got.source != "upstream" {
		t.Errorf("the client that started the download: source %q, err %v; want upstream", got.source, got.err)
	}
	if n := gate.asked(); n != 1 {
		t.Errorf("the upstream was asked for the slow layer %d times, want 1", n)
	}

	// The upstream goes down: the tag is served from the store, marked stale, as explain says.
	up.down.Store(true)
	pred = explainEntries(t, c, "test/slow")
	top := pred[mustDigest(t, slow).String()]
	resp, err = http.Get("http://" + c.Addr() + "/v2/test/slow/manifests/latest")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get(mirror.HeaderStale) != "true" {
		t.Fatalf("manifest by tag with the upstream down: %d, stale %q; want 200 served stale", resp.StatusCode, resp.Header.Get(mirror.HeaderStale))
	}
	if got := resp.Header.Get(mirror.HeaderSource); got != top.Next {
		t.Errorf("manifest by tag with the upstream down: explain predicted %q (%s), the pull came from %q", top.Next, top.Reason, got)
	}
}

// blobGate holds the upstream's answer for one blob after its first half until opened, so
// that a download stays in flight for as long as a test needs.
type blobGate struct {
	started  chan struct{}
	release  chan struct{}
	once     sync.Once
	openOnce sync.Once
	mu       sync.Mutex
	gets     int
}

func (g *blobGate) open() { g.openOnce.Do(func() { close(g.release) }) }

func (g *blobGate) asked() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.gets
}

func gateBlob(up *upstreamLog, path string) *blobGate {
	g := &blobGate{started: make(chan struct{}), release: make(chan struct{})}
	inner := up.srv.Config.Handler
	up.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path || r.Method != http.MethodGet {
			inner.ServeHTTP(w, r)
			return
		}
		g.mu.Lock()
		g.gets++
		g.mu.Unlock()
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body[:len(body)/2])
		http.NewResponseController(w).Flush()
		g.once.Do(func() { close(g.started) })
		select {
		case <-g.release:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(body[len(body)/2:])
	})
	return g
}
