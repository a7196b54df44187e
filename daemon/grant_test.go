package daemon

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/mirror"
	"github.com/shoal-mirror/shoal/p2p"
)

// grantTrio starts three nodes and picks, among the layers of a fresh image, one per test
// case: y is the layer's designated node, x and z the two others. It returns the layers with
// their designated node's index.
func grantTrio(t *testing.T, up *upstreamLog, repo string, layers int) (nodes []*Daemon, byDesignated map[int][]digest.Digest) {
	t.Helper()
	img := pushRandom(t, up, repo, 256<<10, layers)
	first := startNode(t, up, nil)
	nodes = []*Daemon{first, startNode(t, up, first.node.Addrs()), startNode(t, up, first.node.Addrs())}
	for _, n := range nodes {
		waitFor(t, func() bool { return n.node.Status().RoutingTableSize >= 2 })
	}
	byDesignated = map[int][]digest.Digest{}
	for _, d := range layerDigests(t, img) {
		des, err := nodes[0].node.Designate(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range nodes {
			if des.Peer.ID == n.node.ID() || des.Self && i == 0 {
				byDesignated[i] = append(byDesignated[i], d)
			}
		}
	}
	return nodes, byDesignated
}

// rolesFor picks a layer and names its designated node y and the two others x and z.
func rolesFor(t *testing.T, nodes []*Daemon, byDesignated map[int][]digest.Digest, skip map[digest.Digest]bool) (x, y, z *Daemon, d digest.Digest) {
	t.Helper()
	for i := range nodes {
		for _, l := range byDesignated[i] {
			if skip[l] {
				continue
			}
			skip[l] = true
			return nodes[(i+1)%3], nodes[i], nodes[(i+2)%3], l
		}
	}
	t.Fatal("no layer left")
	return nil, nil, nil, ""
}

// A lone cold pull on X, whose designated node is Y, goes straight to the upstream: Y grants
// X the fetch (it has no copy, no download, no earlier grant) instead of fetching and
// streaming it to X over libp2p. A second node Z that asks Y while X downloads is served from
// Y, which follows X's download: the upstream is asked once.
func TestLonePullIsGrantedByTheDesignatedNode(t *testing.T) {
	up := newUpstream(t)
	nodes, byDes := grantTrio(t, up, "test/grant", 6)
	x, y, z, d := rolesFor(t, nodes, byDes, map[digest.Digest]bool{})
	gate := gateBlob(up, "/v2/test/grant/blobs/"+d.String())
	up.reset()

	type answer struct {
		source string
		err    error
	}
	xDone := make(chan answer, 1)
	go func() {
		resp, err := http.Get("http://" + x.Addr() + "/v2/test/grant/blobs/" + d.String())
		if err != nil {
			xDone <- answer{err: err}
			return
		}
		xDone <- answer{resp.Header.Get(mirror.HeaderSource), readBlob(resp, d)}
	}()
	select {
	case <-gate.started: // X's own upstream GET is under way (held after half the blob)
	case a := <-xDone:
		t.Fatalf("X's pull ended before its upstream GET was held: %+v", a)
	case <-time.After(30 * time.Second):
		t.Fatal("X never asked the upstream: the designated node did not grant it the fetch")
	}

	// Z asks Y to fetch the blob for the swarm, as a node with no provider in sight does.
	rc, size, err := z.node.FetchVia(t.Context(), p2p.Peer{ID: y.node.ID(), Addrs: y.node.Addrs()}, d, 0, up.host(), "test/grant")
	if err != nil {
		t.Fatalf("Z asking designated Y while X downloads: %v, want Y's download (following X's)", err)
	}
	gate.open()
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || int64(len(got)) != size || digest.FromBytes(got) != d {
		t.Fatalf("Z got %d of %d bytes from Y, err %v", len(got), size, err)
	}
	a := <-xDone
	if a.err != nil {
		t.Fatalf("X's pull: %v", a.err)
	}
	if a.source != "upstream" {
		t.Errorf("X's pull: X-Shoal-Source %q, want upstream (granted by Y)", a.source)
	}
	if last := x.fetch.Recent(d, 0); len(last) != 1 || last[0].Source != "upstream" ||
		!strings.Contains(last[0].Reason, "granted by designated peer "+y.node.ID()) {
		t.Errorf("X's history for the layer: %+v, want one decision: upstream, granted by designated peer %s", last, y.node.ID())
	}
	if last := y.fetch.Recent(d, 0); len(last) != 1 || last[0].Source != "peer" ||
		!strings.Contains(last[0].Reason, "granted the fetch to peer "+x.node.ID()) {
		t.Errorf("Y's history for the layer: %+v, want one decision: following X's download (peer %s)", last, x.node.ID())
	}
	// Z's own client now gets it from a peer, and the upstream has still been asked once.
	if src := getBlob(t, z, "test/grant", d); src != "peer" && src != "inflight" {
		t.Errorf("Z's client: source %q, want a peer", src)
	}
	if n := up.count("GET", "/blobs/"+d.String()); n != 1 {
		t.Errorf("upstream GETs of the layer: %d, want 1 (by X, granted)", n)
	}
}

// A node granted the fetch dies mid-download: nobody's pull fails. Z, which follows X's
// download (through Y, or found X as a provider), gets the blob: Y resumes from the upstream
// itself, or grants Z the rest.
func TestKilledGrantHolderHandsTheRoleOn(t *testing.T) {
	up := newUpstream(t)
	nodes, byDes := grantTrio(t, up, "test/grantkill", 6)
	x, y, z, d := rolesFor(t, nodes, byDes, map[digest.Digest]bool{})
	gate := gateBlob(up, "/v2/test/grantkill/blobs/"+d.String())
	up.reset()

	go func() { // X's own client: X is killed under it; its result does not matter
		if resp, err := http.Get("http://" + x.Addr() + "/v2/test/grantkill/blobs/" + d.String()); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	select {
	case <-gate.started:
	case <-time.After(30 * time.Second):
		t.Fatal("X never asked the upstream: the designated node did not grant it the fetch")
	}
	// Z's first half comes through Y, which follows X.
	rc, size, err := z.node.FetchVia(t.Context(), p2p.Peer{ID: y.node.ID(), Addrs: y.node.Addrs()}, d, 0, up.host(), "test/grantkill")
	if err != nil {
		t.Fatalf("Z asking designated Y while X downloads: %v", err)
	}
	defer rc.Close()
	got := make([]byte, size)
	readWithin(t, rc, got[:size/4], 30*time.Second, "the first quarter of the layer through Y")
	x.node.Close() // X dies mid-download, from the swarm's point of view
	gate.open()
	readWithin(t, rc, got[size/4:], 30*time.Second, "the rest of the layer after X died")
	if digest.FromBytes(got) != d {
		t.Fatal("Z got wrong bytes")
	}
	var fromUpstream []string
	for _, dec := range y.fetch.Recent(d, 0) {
		if dec.Source == "upstream" {
			fromUpstream = append(fromUpstream, dec.Reason)
		}
	}
	if len(fromUpstream) != 1 || !strings.Contains(fromUpstream[0], "granted the fetch") {
		t.Errorf("Y's upstream fetches of the layer: %q, want one, after X (granted the fetch) went", fromUpstream)
	}
	// A client of Z now gets the blob without fail.
	resp, err := http.Get("http://" + z.Addr() + "/v2/test/grantkill/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := readBlob(resp, d); err != nil {
		t.Fatalf("Z's client after X died: %v", err)
	}
}
