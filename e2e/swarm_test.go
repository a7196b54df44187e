package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// Issue 5: one upstream fetch per digest per cluster, even when every node pulls at once.
//
// The swarm tests are not parallel on purpose: each runs five daemons and five clients on a
// two-core machine, and runs alone (before the package's parallel tests) so that its figures
// mean something. The image is 4 layers of 24 MiB of random bytes, uncompressed.

const (
	swarmNodes  = 5
	swarmLayers = 4
	swarmLayer  = 24 << 20
)

// TestSwarmColdPullFetchesUpstreamOnce: five nodes pull the same uncached image at the same
// instant, each through its own mirror API with a real client (crane or skopeo). Every pull
// succeeds with the right digests, and the upstream serves at most 1.1× the image's blob bytes
// (without the swarm's designated fetcher it would be ≈ 5×).
func TestSwarmColdPullFetchesUpstreamOnce(t *testing.T) {
	reg, img := seedSwarmImage(t, 51, swarmLayers, swarmLayer)
	p := startUpstreamProxy(t, reg.URL)
	p.shapeLink(64 << 20) // ~1.5 s for the image: the five pulls overlap for real
	nodes := startSwarm(t, swarmNodes, p)

	res := pullAtOnce(t, nodes, img.Ref())
	for _, r := range res {
		checkPull(t, r, img)
	}
	p50, slowest, times := pullTimes(res)
	tr := p.blobTraffic(t, time.Minute)
	ratio := float64(tr.Bytes) / float64(img.BlobBytes)
	t.Logf("%d nodes, cold pull of %.1f MiB at once: upstream blob bytes %d = %.3f× the image (limit 1.1×); pulls p50 %.2fs max %.2fs (%s)",
		len(nodes), float64(img.BlobBytes)/(1<<20), tr.Bytes, ratio, p50.Seconds(), slowest.Seconds(), times)
	logSwarmReport(t, nodes, tr, img)
	if ratio > 1.1 {
		t.Errorf("upstream served %.3f× the image's blob bytes (%d of %d) for %d concurrent cold pulls, want ≤ 1.1×; upstream saw:\n%s",
			ratio, tr.Bytes, img.BlobBytes, len(nodes), describeBy(nodes, tr.Requests))
	}
}

// TestSwarmDesignatedFetcherKilled: while five nodes pull at once, the node fetching a layer from
// the upstream for the swarm is SIGKILLed in the middle of that layer (the upstream holds the
// layer after its first 8 MiB until the kill, so the kill lands mid-stream, with the other nodes
// waiting on it). The four other pulls still succeed with the right digests, the upstream
// serves at most 2× the image's blob bytes, and the rest of the layer is fetched once more by
// the fetcher the survivors designate next, not once per survivor. Run as shipped, and with
// p2p.verify_before_serving off, where the clients were already reading the peers' bytes when
// the fetcher died.
func TestSwarmDesignatedFetcherKilled(t *testing.T) {
	for i, mode := range []struct {
		name  string
		flags []string
	}{
		{"verify-before-serving", nil},
		{"eager", []string{"--p2p-verify-before-serving=false"}},
	} {
		t.Run(mode.name, func(t *testing.T) { designatedFetcherKilled(t, uint64(52+10*i), mode.flags) })
	}
}

func designatedFetcherKilled(t *testing.T, seed uint64, flags []string) {
	reg, img := seedSwarmImage(t, seed, swarmLayers, swarmLayer)
	p := startUpstreamProxy(t, reg.URL)
	p.shapeLink(64 << 20)
	layer := img.Layers[0]
	h := p.holdBlob(layer, 8<<20)
	t.Cleanup(h.Release)
	nodes := startSwarm(t, swarmNodes, p, flags...)

	tool(t, "crane") // here, not in the goroutine below, when a client is missing
	tool(t, "skopeo")
	results := make(chan []pullResult, 1)
	go func() { results <- pullAtOnce(t, nodes, img.Ref()) }()

	var res []pullResult
	select {
	case <-h.reached:
	case res = <-results:
		t.Fatalf("the pulls ended before the upstream sent 8 MiB of layer %s", short(layer))
	case <-time.After(2 * time.Minute):
		t.Fatalf("no node fetched 8 MiB of layer %s from the upstream within 2 minutes", short(layer))
	}
	// The node streaming the layer from the upstream right now is the one the others wait on:
	// the designated fetcher (whether a peer asked it first, "fetching for the swarm", or its own
	// client did). The proxy knows which node made each request.
	var fetchers []*swarmNode
	for _, r := range p.requests() {
		if r.Method == "GET" && !r.Done && strings.HasSuffix(r.Path, "/blobs/"+layer) {
			if n := nodeOf(nodes, r); n != nil && !slices.Contains(fetchers, n) {
				fetchers = append(fetchers, n)
			}
		}
	}
	if len(fetchers) == 0 {
		t.Fatalf("the upstream sent 8 MiB of layer %s but no node's GET of it is under way:\n%s", short(layer), describeBy(nodes, p.requests()))
	}
	if len(fetchers) > 1 {
		var names []string
		for _, f := range fetchers {
			names = append(names, f.Name)
		}
		t.Errorf("%d nodes fetch layer %s from the upstream at once (%v), want one designated fetcher", len(fetchers), short(layer), names)
	}
	victim := fetchers[0]
	mark := len(p.requests())
	victim.kill(t)
	killedAt := time.Now()
	h.Release()
	asked := "its own client asked first"
	if slices.Contains(victim.swarmFetches(), layer) {
		asked = "it logged \"fetching for the swarm\""
	}
	t.Logf("SIGKILLed %s (%s), the node fetching layer %s from the upstream (%s), with 8 MiB of it fetched", victim.Name, victim.Addr, short(layer), asked)

	res = <-results
	var survivors []*swarmNode
	for _, r := range res {
		if r.Node == victim {
			t.Logf("the killed node's own pull: err=%v (expected to fail)", r.Err)
			continue
		}
		survivors = append(survivors, r.Node)
		checkPull(t, r, img)
	}
	p50, slowest, times := pullTimes(res)
	tr := p.blobTraffic(t, time.Minute)
	ratio := float64(tr.Bytes) / float64(img.BlobBytes)
	after := 0
	var layerGETs []proxyReq
	for i, r := range tr.Requests {
		if r.Method == "GET" && r.Path == "/v2/"+img.Repo+"/blobs/"+layer {
			layerGETs = append(layerGETs, r)
			if i >= mark {
				after++
			}
		}
	}
	t.Logf("upstream GETs of layer %s:\n%s", short(layer), describeBy(nodes, layerGETs))
	t.Logf("designated fetcher killed: upstream blob bytes %d = %.3f× the image (limit 2×); layer %s fetched upstream %d times (%d after the kill); pulls p50 %.2fs max %.2fs, %.2fs after the kill (%s)",
		tr.Bytes, ratio, short(layer), tr.GETs[layer], after, p50.Seconds(), slowest.Seconds(), time.Since(killedAt).Seconds(), times)
	logSwarmReport(t, survivors, tr, img)
	if ratio > 2 {
		t.Errorf("upstream served %.3f× the image's blob bytes (%d of %d) with the designated fetcher killed, want ≤ 2×; upstream saw:\n%s",
			ratio, tr.Bytes, img.BlobBytes, describeBy(nodes, tr.Requests))
	}
	// The survivors designate a new fetcher among themselves instead of each going to the
	// upstream for the rest of the layer (that would be one GET per survivor).
	if after > 2 {
		t.Errorf("layer %s fetched from the upstream %d times after the kill, want the swarm to pay it once (≤ 2)", short(layer), after)
	}
}

// TestSwarmColdPullTime: over a slow upstream link (32 MiB/s shared by all blob downloads), the
// time of one node's cold pull alone and of five nodes' cold pulls at once. It asserts only that
// the pulls succeed (the machine is shared, timings are reported, not enforced); issue 5 wants
// the five-node pull within 1.5× the single one.
func TestSwarmColdPullTime(t *testing.T) {
	const link = 32 << 20
	reg, img := seedSwarmImage(t, 53, swarmLayers, swarmLayer)

	pa := startUpstreamProxy(t, reg.URL)
	pa.shapeLink(link)
	alone := startSwarm(t, 1, pa)
	res1 := pullAtOnce(t, alone, img.Ref())
	checkPull(t, res1[0], img)
	alone[0].proc.stop()
	single := res1[0].Took
	tr1 := pa.blobTraffic(t, time.Minute)

	pb := startUpstreamProxy(t, reg.URL)
	pb.shapeLink(link)
	nodes := startSwarm(t, swarmNodes, pb)
	res := pullAtOnce(t, nodes, img.Ref())
	for _, r := range res {
		checkPull(t, r, img)
	}
	p50, slowest, times := pullTimes(res)
	tr := pb.blobTraffic(t, time.Minute)
	t.Logf("cold pull of %.1f MiB over a %d MiB/s upstream link: one node alone %.2fs (upstream %.2f× the image); %d nodes at once p50 %.2fs max %.2fs (upstream %.2f× the image); max/alone = %.2f (issue 5 target ≤ 1.5) [%s]",
		float64(img.BlobBytes)/(1<<20), link>>20, single.Seconds(), float64(tr1.Bytes)/float64(img.BlobBytes),
		len(nodes), p50.Seconds(), slowest.Seconds(), float64(tr.Bytes)/float64(img.BlobBytes), slowest.Seconds()/single.Seconds(), times)
	logSwarmReport(t, nodes, tr, img)
}
