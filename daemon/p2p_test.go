package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/upstream"
)

// The nodes of these tests live on their own loopback block so they never meet other tests'.
var nodeSeq atomic.Int32

func nextIP() string { return fmt.Sprintf("127.79.%d.%d", os.Getpid()%250, nodeSeq.Add(1)) }

// startNode runs a daemon with P2P on its own loopback address, joining through bootstrap.
func startNode(t *testing.T, up *upstreamLog, bootstrap []string, mod ...func(*Config)) *Daemon {
	t.Helper()
	ip := nextIP()
	return startDaemon(t, up, append([]func(*Config){func(c *Config) {
		c.Listen = ip + ":0"
		c.P2PEnabled = true
		c.P2P.Listen = []string{"/ip4/" + ip + "/tcp/0"}
		c.P2P.Bootstrap = bootstrap
		c.P2P.LookupTimeout = 2 * time.Second // generous: the machine is shared and busy
	}}, mod...)...)
}

func layerDigests(t *testing.T, img v1.Image) []digest.Digest {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []digest.Digest
	for _, l := range ls {
		h, _ := l.Digest()
		out = append(out, digest.Digest(h.String()))
	}
	cfg, _ := img.ConfigName()
	return append(out, digest.Digest(cfg.String()))
}

// waitProvided polls until node n finds a provider for every digest.
func waitProvided(t *testing.T, n *p2p.Node, ds ...digest.Digest) {
	t.Helper()
	waitFor(t, func() bool {
		for _, d := range ds {
			ps, _ := n.FindProviders(context.Background(), d, 1)
			if len(ps) == 0 {
				return false
			}
		}
		return true
	})
}

func peerStatus(n *p2p.Node, id string) p2p.PeerStatus {
	for _, p := range n.Status().Peers {
		if p.ID == id {
			return p
		}
	}
	return p2p.PeerStatus{}
}

// A pulls from the upstream; with the upstream gone, B and C get the same image from A.
func TestPeersServeWhenUpstreamIsDown(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/p2p", 2<<20, 3)
	a := startNode(t, up, nil)
	b := startNode(t, up, a.node.Addrs())
	c := startNode(t, up, a.node.Addrs())

	if _, err := pullThrough(t, a, "test/p2p:latest"); err != nil {
		t.Fatalf("A pulls from the upstream: %v", err)
	}
	mdg := mustDigest(t, img)
	waitProvided(t, b.node, append(layerDigests(t, img), digest.Digest(mdg.String()))...)
	waitProvided(t, c.node, layerDigests(t, img)...)
	up.down.Store(true)
	up.reset()

	var layerBytes int64
	ls, _ := img.Layers()
	sizes := map[digest.Digest]int64{}
	for _, l := range ls {
		h, _ := l.Digest()
		sizes[digest.Digest(h.String())] = mustSize(t, l)
		layerBytes += mustSize(t, l)
	}
	// A's pull may already have placed some layers on B or C: they were the designated
	// fetchers for them. What they lack must come from peers.
	missing := func(n *Daemon) int64 {
		var m int64
		for d, size := range sizes {
			if _, err := n.store.Stat(t.Context(), d); err != nil {
				m += size
			}
		}
		return m
	}
	bytesIn := func(n *Daemon) int64 {
		var in int64
		for _, p := range n.node.Status().Peers {
			in += p.BytesIn
		}
		return in
	}
	// Tags are resolved by the upstream only (never by peers), so B and C pull by digest.
	for _, n := range []*Daemon{b, c} {
		need, before := missing(n), bytesIn(n)
		got, err := pullThrough(t, n, "test/p2p@"+mdg.String())
		if err != nil {
			t.Fatalf("pull from peers with the upstream down: %v", err)
		}
		if mustDigest(t, got) != mdg {
			t.Fatal("wrong image")
		}
		if in := bytesIn(n) - before; in < need {
			t.Errorf("node received %d bytes from peers, but lacked %d bytes of layers", in, need)
		}
	}
	if n := len(up.reqs); n != 0 {
		t.Errorf("the upstream saw %d requests while down", n)
	}
	if out := peerStatus(a.node, b.node.ID()).BytesOut + peerStatus(a.node, c.node.ID()).BytesOut; out == 0 {
		t.Errorf("A's counters show nothing served to B and C")
	}
}

// hostileContent advertises a blob and serves it with one byte flipped.
type hostileContent struct {
	d    digest.Digest
	data []byte
}

func (h *hostileContent) OpenForPeer(ctx context.Context, d digest.Digest, off int64) (io.ReadCloser, int64, error) {
	if d != h.d {
		return nil, 0, p2p.ErrNotFound
	}
	bad := bytes.Clone(h.data)
	bad[len(bad)/2] ^= 0x55
	return io.NopCloser(bytes.NewReader(bad[off:])), int64(len(bad)), nil
}

func (h *hostileContent) ShareList(context.Context) ([]digest.Digest, error) {
	return []digest.Digest{h.d}, nil
}

// A peer that serves wrong bytes for a digest it advertises: the pull still succeeds, only
// verified bytes are stored, and the peer is banned.
func TestHostilePeerIsBannedAndPullSucceeds(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/hostile", 1<<20, 1)
	ls, _ := img.Layers()
	rc, _ := ls[0].Compressed()
	data, _ := io.ReadAll(rc)
	ld := layerDigests(t, img)[0]

	ip := nextIP()
	hcfg := p2p.DefaultConfig()
	hcfg.Listen = []string{"/ip4/" + ip + "/tcp/0"}
	hostile, err := p2p.New(t.Context(), hcfg, t.TempDir(), &hostileContent{d: ld, data: data}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hostile.Close() })
	b := startNode(t, up, hostile.Addrs())
	waitFor(t, func() bool { return b.node.Status().RoutingTableSize > 0 })
	if err := hostile.Provide(t.Context(), ld); err != nil {
		t.Fatal(err)
	}
	waitProvided(t, b.node, ld)

	got, err := pullThrough(t, b, "test/hostile:latest")
	if err != nil {
		t.Fatalf("pull with a hostile peer: %v", err)
	}
	if mustDigest(t, got) != mustDigest(t, img) {
		t.Fatal("wrong image")
	}
	if ps := peerStatus(b.node, hostile.ID()); !ps.Banned {
		t.Errorf("hostile peer not banned: %+v", ps)
	}
	res, err := b.store.Verify(t.Context())
	if err != nil || len(res.Corrupt) != 0 || res.Checked == 0 {
		t.Fatalf("store verify: %+v %v", res, err)
	}
	if n := up.count("GET", "/blobs/"+ld.String()); n != 1 {
		t.Errorf("layer fetched %d times from the upstream after the peer lied, want 1", n)
	}
}

// A node without the swarm key can neither join nor fetch.
func TestSwarmKeyKeepsStrangersOut(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/key", 256<<10, 1)
	dir := t.TempDir()
	key, stranger := filepath.Join(dir, "swarm.key"), filepath.Join(dir, "other.key")
	for _, p := range []string{key, stranger} {
		k, err := p2p.GenerateSwarmKey()
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(p, k, 0o600)
	}
	withKey := func(p string) func(*Config) { return func(c *Config) { c.P2P.SwarmKeyFile = p } }
	a := startNode(t, up, nil, withKey(key), withOps)
	member := startNode(t, up, a.node.Addrs(), withKey(key))
	outsider := startNode(t, up, a.node.Addrs(), withKey(stranger))
	if _, err := pullThrough(t, a, "test/key:latest"); err != nil {
		t.Fatal(err)
	}
	waitProvided(t, member.node, layerDigests(t, img)...)
	up.down.Store(true)
	mdg := mustDigest(t, img).String()
	if _, err := pullThrough(t, member, "test/key@"+mdg); err != nil {
		t.Fatalf("member with the key: %v", err)
	}
	if _, err := pullThrough(t, outsider, "test/key@"+mdg); err == nil {
		t.Fatal("a node with another swarm key pulled from the swarm")
	}
	if n := outsider.node.Status().RoutingTableSize; n != 0 {
		t.Fatalf("outsider has %d peers in its routing table", n)
	}
	// A's operator sees strangers knock: its metrics count the connections that never
	// completed the handshake.
	waitFor(t, func() bool {
		v, _ := metricValue(scrape(t, a.MetricsAddr()), "shoal_p2p_inbound_handshake_failures_total", nil)
		return v >= 1
	})
}

// Content from a repository that needed credentials is neither advertised nor served.
func TestPrivateContentIsNotShared(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "private/app", 256<<10, 1)
	up.basicAuth("private/", "alice", "secret")
	creds := func(c *Config) {
		c.SetRegistry(up.host(), upstream.RegistryConfig{Username: "alice", Password: "secret"})
	}
	a := startNode(t, up, nil, creds)
	b := startNode(t, up, a.node.Addrs()) // no credentials
	if _, err := pullThrough(t, a, "private/app:latest"); err != nil {
		t.Fatalf("A with credentials: %v", err)
	}
	ld := layerDigests(t, img)[0]
	waitFor(t, func() bool { _, err := a.store.Stat(t.Context(), ld); return err == nil })
	waitFor(t, func() bool { return b.node.Status().RoutingTableSize > 0 })
	share, err := a.fetch.PeerContent(testLogger(t)).ShareList(t.Context())
	if err != nil || slices.Contains(share, ld) || len(share) != 0 {
		t.Fatalf("A would re-provide %v (err %v); want nothing private", share, err)
	}
	if ps, _ := b.node.FindProviders(t.Context(), ld, 1); len(ps) != 0 {
		t.Fatalf("private layer advertised to peers: %v", ps)
	}
	// Even asked directly, A refuses.
	if _, _, err := b.node.Fetch(t.Context(), p2p.Peer{ID: a.node.ID(), Addrs: a.node.Addrs()}, ld, 0); err == nil {
		t.Fatal("A served a private layer to a peer")
	}
	if _, err := pullThrough(t, b, "private/app@"+mustDigest(t, img).String()); err == nil {
		t.Fatal("B without credentials got the private image")
	}
}

// basicAuth makes repositories under prefix require HTTP Basic credentials, like a private
// repository on a real registry.
func (u *upstreamLog) basicAuth(prefix, user, pass string) {
	inner := u.registry
	u.registry = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v2/"+prefix) {
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
				return
			}
		}
		inner.ServeHTTP(w, r)
	})
}

// Every node pulls the same cold image at the same instant: the swarm agrees on one designated
// fetcher per digest, so the upstream serves each blob once.
func TestSimultaneousColdPullsFetchEachBlobOnce(t *testing.T) {
	// limit 1: the designated node streams each blob to one peer and redirects the others,
	// which then chain (C from B from A from the upstream).
	for _, limit := range []int{4, 1} {
		t.Run(fmt.Sprintf("max_uploads_per_blob=%d", limit), func(t *testing.T) {
			up := newUpstream(t)
			size := int64(4 << 20)
			if limit == 1 {
				// Bigger blobs keep the first stream running while the others ask, so that the
				// limit is met even when a loaded machine staggers the pulls.
				size = 16 << 20
			}
			img := pushRandom(t, up, "test/rollout", size, 3)
			mod := func(c *Config) { c.P2P.MaxUploadsPerBlob = limit }
			first := startNode(t, up, nil, mod)
			nodes := []*Daemon{first}
			for range 3 {
				nodes = append(nodes, startNode(t, up, first.node.Addrs(), mod))
			}
			for _, n := range nodes {
				waitFor(t, func() bool { return n.node.Status().RoutingTableSize >= len(nodes)-1 })
			}
			up.reset()
			start := make(chan struct{})
			errs := make(chan error, len(nodes))
			for _, n := range nodes {
				go func() {
					<-start
					got, err := pullThrough(t, n, "test/rollout:latest")
					if err == nil && mustDigest(t, got) != mustDigest(t, img) {
						err = fmt.Errorf("wrong image")
					}
					errs <- err
				}()
			}
			close(start)
			for range nodes {
				if err := <-errs; err != nil {
					t.Fatalf("pull: %v", err)
				}
			}
			for _, d := range layerDigests(t, img) {
				if n := up.count("GET", "/blobs/"+d.String()); n != 1 {
					t.Errorf("blob %s: %d upstream GETs for %d simultaneous pulls, want 1", d, n, len(nodes))
				}
			}
			var redirected int64
			for _, n := range nodes {
				redirected += n.node.Status().Redirected
			}
			t.Logf("requests redirected at the upload limit: %d", redirected)
			if limit == 1 && redirected == 0 {
				t.Error("4 nodes pulled at once with max_uploads_per_blob=1, and no node redirected a peer")
			}
		})
	}
}

// A designated peer that is slow to give its first answer (here: the asker's
// p2p.designated_timeout is shorter than any answer can be) is busy, not gone: the asker asks
// it again, patiently, instead of going to the upstream itself. Before, it went to the
// upstream at once (on a 60-daemon herd, 17 of 19 extra upstream GETs in one run). Here the
// patient second request is answered: the designated peer, which has no download of the
// blob, grants the asker the fetch (the only upstream GET).
func TestBusyDesignatedPeerIsAskedAgain(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/busy", 256<<10, 8)
	b := startNode(t, up, nil)
	a := startNode(t, up, b.node.Addrs(), func(c *Config) { c.P2P.DesignatedTimeout = time.Nanosecond })
	waitFor(t, func() bool { return a.node.Status().RoutingTableSize > 0 && b.node.Status().RoutingTableSize > 0 })
	up.reset()
	asked := 0
	for _, d := range layerDigests(t, img) {
		des, err := a.node.Designate(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		if des.Self {
			continue // a is the designated fetcher of this one: nobody to ask
		}
		asked++
		resp, err := http.Get("http://" + a.Addr() + "/v2/test/busy/blobs/" + d.String())
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || digest.FromBytes(body) != d {
			t.Fatalf("GET %s: status %d, err %v", d, resp.StatusCode, err)
		}
		var sources []string
		for _, dec := range a.fetch.Recent(d, 0) {
			sources = append(sources, dec.Source+": "+dec.Reason)
		}
		if len(sources) != 1 || !strings.HasPrefix(sources[0], "upstream: no peer had it; granted by designated peer "+b.node.ID()) {
			t.Errorf("layer %s through a: decisions %q, want one, granted by the designated peer", d, sources)
		}
		if n := up.count("GET", "/blobs/"+d.String()); n != 1 {
			t.Errorf("layer %s fetched %d times from the upstream, want 1 (by a, granted)", d, n)
		}
	}
	if asked == 0 {
		t.Fatal("a is the designated fetcher of all 8 layers; nothing was tested")
	}
}
