package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/p2p"
)

// halfwayContent serves one blob to peers: the first half at once, the rest once release is
// closed; with corrupt, the byte at 3/4 is flipped (a lie told after the client got bytes).
type halfwayContent struct {
	d       digest.Digest
	data    []byte
	corrupt bool
	release chan struct{}
}

func (h *halfwayContent) OpenForPeer(ctx context.Context, d digest.Digest, off int64) (io.ReadCloser, int64, error) {
	if d != h.d {
		return nil, 0, p2p.ErrNotFound
	}
	data := bytes.Clone(h.data)
	if h.corrupt {
		data[len(data)*3/4] ^= 0x55
	}
	half := int64(len(data) / 2)
	var r io.Reader = bytes.NewReader(data[off:])
	if off < half {
		r = io.MultiReader(bytes.NewReader(data[off:half]), waitRelease{ctx, h.release}, bytes.NewReader(data[half:]))
	}
	return io.NopCloser(r), int64(len(data)), nil
}

func (h *halfwayContent) ShareList(context.Context) ([]digest.Digest, error) {
	return []digest.Digest{h.d}, nil
}

// waitRelease reads nothing until release is closed (or ctx ends).
type waitRelease struct {
	ctx     context.Context
	release chan struct{}
}

func (w waitRelease) Read([]byte) (int, error) {
	select {
	case <-w.release:
	case <-w.ctx.Done():
	}
	return 0, io.EOF
}

// eagerSetup starts a peer that serves one layer of a fresh image halfway and a node with
// p2p.verify_before_serving off that finds it; it returns the node, the layer and its bytes.
func eagerSetup(t *testing.T, corrupt bool) (*Daemon, *upstreamLog, *halfwayContent) {
	return halfwaySetup(t, corrupt, false)
}

func halfwaySetup(t *testing.T, corrupt, verifyFirst bool, mod ...func(*Config)) (*Daemon, *upstreamLog, *halfwayContent) {
	t.Helper()
	up := newUpstream(t)
	img := pushRandom(t, up, "test/eager", 1<<20, 1)
	ls, _ := img.Layers()
	rc, _ := ls[0].Compressed()
	data, _ := io.ReadAll(rc)
	hc := &halfwayContent{d: layerDigests(t, img)[0], data: data, corrupt: corrupt, release: make(chan struct{})}
	t.Cleanup(func() {
		select {
		case <-hc.release:
		default:
			close(hc.release)
		}
	})
	pcfg := p2p.DefaultConfig()
	pcfg.Listen = []string{"/ip4/" + nextIP() + "/tcp/0"}
	peer, err := p2p.New(t.Context(), pcfg, t.TempDir(), hc, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	b := startNode(t, up, peer.Addrs(), append([]func(*Config){func(c *Config) {
		c.P2PVerifyBeforeServing = verifyFirst
		// A held peer must not count as stalled: the bytes must come from it.
		c.P2P.StallTimeout = 2 * time.Minute
	}}, mod...)...)
	waitFor(t, func() bool { return b.node.Status().RoutingTableSize > 0 })
	if err := peer.Provide(t.Context(), hc.d); err != nil {
		t.Fatal(err)
	}
	waitProvided(t, b.node, hc.d)
	return b, up, hc
}

// readWithin reads exactly len(p) bytes of r, failing the test if they take longer than d.
func readWithin(t *testing.T, r io.Reader, p []byte, d time.Duration, what string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(r, p); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(d):
		t.Fatalf("%s: nothing within %v", what, d)
	}
}

// A client gets a peer's bytes while the peer is still sending: with
// p2p.verify_before_serving off, or on once it waited p2p.verify_max_wait without a byte (a
// client such as containerd, which cancels a pull that makes no progress for a while, keeps
// seeing progress on a big blob from a slow peer). With it on and no limit, it would get none
// until the whole blob verified.
func TestEagerClientGetsPeerBytesBeforeVerification(t *testing.T) {
	for _, tc := range streamingSetups(false) {
		t.Run(tc.name, func(t *testing.T) {
			b, up, hc := tc.setup(t)
			resp, err := http.Get("http://" + b.Addr() + "/v2/test/eager/blobs/" + hc.d.String())
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("X-Shoal-Source") != "peer" {
				t.Fatalf("status %d, source %q; want 200 from a peer", resp.StatusCode, resp.Header.Get("X-Shoal-Source"))
			}
			quarter := make([]byte, len(hc.data)/4) // the fill publishes in chunks of at most 256 KiB
			readWithin(t, resp.Body, quarter, 30*time.Second, "first quarter while the peer holds the second half")
			if !bytes.Equal(quarter, hc.data[:len(quarter)]) {
				t.Fatal("first quarter differs from the blob")
			}
			close(hc.release)
			rest, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(append(quarter, rest...), hc.data) {
				t.Fatalf("whole blob: %d bytes, err %v", len(quarter)+len(rest), err)
			}
			if n := up.count("GET", "/blobs/"+hc.d.String()); n != 0 {
				t.Errorf("upstream GETs for the layer: %d, want 0", n)
			}
		})
	}
}

// maxWait makes a node's gated clients stream peer bytes after d without one.
func maxWait(d time.Duration) func(*Config) { return func(c *Config) { c.P2PVerifyMaxWait = d } }

// streamingSetups are the two ways a node hands its clients peer bytes before the blob
// verified: p2p.verify_before_serving off, or on with a client that waited verify_max_wait.
func streamingSetups(corrupt bool) []struct {
	name  string
	setup func(t *testing.T) (*Daemon, *upstreamLog, *halfwayContent)
} {
	return []struct {
		name  string
		setup func(t *testing.T) (*Daemon, *upstreamLog, *halfwayContent)
	}{
		{"verify_before_serving off", func(t *testing.T) (*Daemon, *upstreamLog, *halfwayContent) { return eagerSetup(t, corrupt) }},
		{"after verify_max_wait", func(t *testing.T) (*Daemon, *upstreamLog, *halfwayContent) {
			return halfwaySetup(t, corrupt, true, maxWait(300*time.Millisecond))
		}},
	}
}

// A peer that lies after the client got its bytes (with p2p.verify_before_serving off, or on
// once the client waited p2p.verify_max_wait): the client's download is cut (never completed
// with wrong bytes), its retry gets the verified blob, the store holds only verified content
// and the peer is banned.
func TestEagerClientCutWhenPeerLied(t *testing.T) {
	for _, tc := range streamingSetups(true) {
		t.Run(tc.name, func(t *testing.T) {
			b, _, hc := tc.setup(t)
			clientCutWhenPeerLied(t, b, hc)
		})
	}
}

func clientCutWhenPeerLied(t *testing.T, b *Daemon, hc *halfwayContent) {
	t.Helper()
	url := "http://" + b.Addr() + "/v2/test/eager/blobs/" + hc.d.String()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	quarter := make([]byte, len(hc.data)/4) // the fill publishes in chunks of at most 256 KiB
	readWithin(t, resp.Body, quarter, 30*time.Second, "first quarter while the peer holds the second half")
	close(hc.release) // the peer now sends the rest, with a wrong byte
	rest, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("download completed (%d bytes, right: %v) although the peer lied; want it cut",
			len(quarter)+len(rest), bytes.Equal(append(quarter, rest...), hc.data))
	}
	if len(quarter)+len(rest) >= len(hc.data) {
		t.Fatalf("client got %d of %d bytes before the cut; the last byte must wait for the check", len(quarter)+len(rest), len(hc.data))
	}

	resp, err = http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	again, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(again, hc.data) {
		t.Fatalf("retry: %d bytes, err %v; want the verified blob", len(again), err)
	}
	banned := false
	for _, p := range b.node.Status().Peers {
		banned = banned || p.Banned
	}
	if !banned {
		t.Error("the lying peer is not banned")
	}
	waitFor(t, func() bool { _, err := b.store.Stat(t.Context(), hc.d); return err == nil }) // committed
	res, err := b.store.Verify(t.Context())
	if err != nil || len(res.Corrupt) != 0 || res.Checked == 0 {
		t.Fatalf("store verify: %+v %v", res, err)
	}
}

// With p2p.verify_before_serving on (the default), a client whose blob is still coming from a
// peer gets its response headers at once (not after the whole blob verified), then the blob.
func TestGatedClientGetsHeadersWhilePeerSends(t *testing.T) {
	b, up, hc := halfwaySetup(t, false, true)
	type answer struct {
		resp *http.Response
		err  error
	}
	got := make(chan answer, 1)
	go func() {
		resp, err := http.Get("http://" + b.Addr() + "/v2/test/eager/blobs/" + hc.d.String())
		got <- answer{resp, err}
	}()
	var a answer
	select {
	case a = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("no response headers within 30 s while the peer holds the second half")
	}
	if a.err != nil {
		t.Fatal(a.err)
	}
	defer a.resp.Body.Close()
	if a.resp.StatusCode != 200 || a.resp.ContentLength != int64(len(hc.data)) {
		t.Fatalf("status %d, length %d", a.resp.StatusCode, a.resp.ContentLength)
	}
	close(hc.release)
	body, err := io.ReadAll(a.resp.Body)
	if err != nil || !bytes.Equal(body, hc.data) {
		t.Fatalf("blob: %d bytes, err %v", len(body), err)
	}
	if n := up.count("GET", "/blobs/"+hc.d.String()); n != 0 {
		t.Errorf("upstream GETs for the layer: %d, want 0", n)
	}
}

// A node following a peer for a blob, asked by another peer to fetch that blob for the swarm
// (the fetcher it followed died, and the swarm designated it next): it leaves the peer, which
// may be the asker waiting on it, and resumes from the upstream, so the asker gets the blob
// without waiting for the stall timeout.
func TestDesignatedNodeLeavesThePeerItFollowed(t *testing.T) {
	x, up, hc := halfwaySetup(t, false, true) // hc's peer sends half the layer, then holds
	resp, z := clientStartsDownload(t, x, hc)
	rc, size, err := z.FetchVia(t.Context(), p2p.Peer{ID: x.node.ID(), Addrs: x.node.Addrs()}, hc.d, 0, up.host(), "test/eager")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := make([]byte, size)
	readWithin(t, rc, got, 30*time.Second, "the swarm fetch from the node that followed a stuck peer")
	if !bytes.Equal(got, hc.data) {
		t.Fatal("wrong bytes")
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(body, hc.data) {
		t.Fatalf("the node's own client: %d bytes, err %v", len(body), err)
	}
	// One upstream fetch of the rest. (It is two GETs here: this test registry answers an
	// open-ended Range with 416, and shoal then asks for the whole blob and skips the prefix.)
	var fromUpstream []string
	for _, dec := range x.fetch.Recent(hc.d, 0) {
		if dec.Source == "upstream" {
			fromUpstream = append(fromUpstream, dec.Reason)
		}
	}
	if len(fromUpstream) != 1 || !strings.Contains(fromUpstream[0], "designated") {
		t.Errorf("upstream fetches of the layer: %q, want one, as the designated fetcher", fromUpstream)
	}
}

// A node that follows a lying peer and is followed by another peer tells that follower to
// discard what it passed on once its own download fails verification (p2p.ErrRetracted),
// instead of letting it read on into the refetched bytes with a wrong prefix (the follower then
// banned the honest node in the middle, and the liar went unnoticed by it).
func TestFollowerIsToldToDiscardALiarsBytes(t *testing.T) {
	x, _, hc := halfwaySetup(t, true, true) // hc sends half the layer, then (released) the rest with a flipped byte
	resp, z := clientStartsDownload(t, x, hc)
	rc, size, err := z.Fetch(t.Context(), p2p.Peer{ID: x.node.ID(), Addrs: x.node.Addrs()}, hc.d, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	half := make([]byte, 64<<10) // well within what x has: it writes in chunks and holds back its last byte
	readWithin(t, rc, half, 30*time.Second, "a first part, which x follows from the lying peer")
	close(hc.release)

	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, rc); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, p2p.ErrRetracted) {
			t.Fatalf("the follower read on after x's download failed verification (err %v), want p2p.ErrRetracted", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the follower heard nothing within 30s")
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(body, hc.data) || int64(len(body)) != size {
		t.Fatalf("x's own client: %d bytes, err %v", len(body), err)
	}
}

// clientStartsDownload has a client of x start the blob hc serves, waits until x's download has
// bytes, and returns the client's response and a fresh libp2p node z to ask x as a peer would.
func clientStartsDownload(t *testing.T, x *Daemon, hc *halfwayContent) (*http.Response, *p2p.Node) {
	t.Helper()
	resp, err := http.Get("http://" + x.Addr() + "/v2/test/eager/blobs/" + hc.d.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	waitFor(t, func() bool {
		for _, in := range x.fetch.InFlight() {
			if in.Digest == hc.d.String() {
				return in.Done > 0
			}
		}
		return false
	})
	zcfg := p2p.DefaultConfig()
	zcfg.Listen = []string{"/ip4/" + nextIP() + "/tcp/0"}
	z, err := p2p.New(t.Context(), zcfg, t.TempDir(), &halfwayContent{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	return resp, z
}
