package p2p

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"

	"github.com/opencontainers/go-digest"
)

// swarmContent fetches "from the upstream" (a byte slice) when asked as the designated fetcher.
type swarmContent struct {
	*memContent
	upstream map[digest.Digest][]byte
	asked    chan string // registry/repo of each FetchForSwarm
}

func (c *swarmContent) FetchForSwarm(_ context.Context, _ string, d digest.Digest, off int64, registry, repo string) (io.ReadCloser, int64, error) {
	c.asked <- registry + "/" + repo
	b, ok := c.upstream[d]
	if !ok {
		return nil, 0, ErrNotFound
	}
	return io.NopCloser(bytes.NewReader(b[off:])), int64(len(b)), nil
}

// Every node computes the same designated fetcher for a digest, without talking.
func TestDesignatedIsAgreedOn(t *testing.T) {
	ips := loopbackIPs(4)
	first := startNode(t, testConfig(ips[0]), nil)
	nodes := []*testNode{first}
	for _, ip := range ips[1:] {
		nodes = append(nodes, startNode(t, bootstrapTo(testConfig(ip), first), nil))
	}
	for _, n := range nodes {
		waitRT(t, n, len(nodes)-1)
	}
	selfCount := map[string]int{}
	for i := range 32 {
		d := digest.FromBytes(randomBlob(uint64(i), 64))
		want := ""
		for _, n := range nodes {
			p, self, err := n.Designated(t.Context(), d)
			if err != nil {
				t.Fatal(err)
			}
			if self != (p.ID == n.ID()) {
				t.Fatalf("self=%v but designated %s is node %s", self, p.ID, n.ID())
			}
			if want == "" {
				want = p.ID
			} else if p.ID != want {
				t.Fatalf("digest %s: nodes disagree on the designated fetcher (%s vs %s)", d, want, p.ID)
			}
		}
		selfCount[want]++
	}
	if len(selfCount) < 2 {
		t.Fatalf("32 digests all designated the same node: %v", selfCount)
	}
}

// FetchVia asks the designated peer, which fetches for the swarm and streams the bytes; a peer
// that cannot fetch for the swarm answers not-found at once.
func TestFetchViaDesignatedPeer(t *testing.T) {
	ips := loopbackIPs(3)
	blob := randomBlob(7, 300<<10)
	d := digest.FromBytes(blob)
	sc := &swarmContent{memContent: newMemContent(), upstream: map[digest.Digest][]byte{d: blob}, asked: make(chan string, 4)}
	fetcher := startNode(t, testConfig(ips[0]), nil, nodeOpt{content: sc})
	plain := startNode(t, bootstrapTo(testConfig(ips[1]), fetcher), nil)
	asker := startNode(t, bootstrapTo(testConfig(ips[2]), fetcher), nil)
	waitRT(t, asker, 2)

	rc, size, err := asker.FetchVia(t.Context(), peerOf(fetcher), d, 1000, "docker.io", "library/alpine")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || size != int64(len(blob)) || !bytes.Equal(got, blob[1000:]) {
		t.Fatalf("FetchVia: size %d, %d bytes, err %v", size, len(got), err)
	}
	if who := <-sc.asked; who != "docker.io/library/alpine" {
		t.Fatalf("designated peer was asked for %q", who)
	}
	if _, _, err := asker.FetchVia(t.Context(), peerOf(plain), d, 0, "docker.io", "library/alpine"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a peer without SwarmFetcher: %v, want ErrNotFound", err)
	}
	if _, _, err := asker.FetchVia(t.Context(), peerOf(fetcher), d, 0, "docker.io", "bad repo"); err == nil {
		t.Fatal("a repository with a space was sent")
	}
}

// In a swarm larger than a k-bucket (24 nodes on libp2p's mocknet, so the designation walk
// runs), a designated node that is down, frozen (every message to it delayed beyond the
// walk's per-peer timeout) or banned hands its role to the next closest live node, and every
// node that asks afresh names that one.
func TestDesignatedWalkSkipsDownFrozenAndBanned(t *testing.T) {
	s := newSimSwarm(t, simMock, 24)
	s.grow(24)
	s.settle(time.Second, 20*time.Second)
	for _, n := range s.nodes {
		waitRT(t, n, designateLocalMax)
	}
	// ranked lists the live nodes by distance to d's key, the closest first.
	ranked := func(d digest.Digest, skip ...*testNode) []*testNode {
		key, _ := digestKey(d)
		k := string(key.Hash())
		var out []*testNode
		for _, n := range s.nodes {
			if !slices.Contains(skip, n) {
				out = append(out, n)
			}
		}
		slices.SortFunc(out, func(a, b *testNode) int {
			if kb.Closer(a.host.ID(), b.host.ID(), k) {
				return -1
			}
			return 1
		})
		return out
	}
	agree := func(phase string, d digest.Digest, want *testNode, askers []*testNode, fresh bool) {
		t.Helper()
		errs := make(chan error, len(askers))
		for _, n := range askers {
			go func() {
				var p Peer
				var self bool
				var err error
				if fresh {
					p, self, err = n.DesignatedAmongConnected(t.Context(), d)
				} else {
					p, self, err = n.Designated(t.Context(), d)
				}
				switch {
				case err != nil:
					errs <- fmt.Errorf("%s: node %s: %w", phase, n.ID(), err)
				case p.ID != want.ID() || self != (n == want):
					errs <- fmt.Errorf("%s: digest %s: node %s named %s (self %v), want %s", phase, d, n.ID(), p.ID, self, want.ID())
				default:
					errs <- nil
				}
			}()
		}
		for range askers {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}

	d := digest.FromString("designated walk")
	r := ranked(d)
	agree("all up", d, r[0], r, false)

	// Down: the closest node stops (on the mocknet a closed host still accepts new
	// connections: its links go too); a fresh walk from everyone else names the second.
	r[0].Close()
	for _, n := range s.nodes {
		if n != r[0] {
			if err := s.mn.UnlinkPeers(n.host.ID(), r[0].host.ID()); err != nil {
				t.Fatal(err)
			}
		}
	}
	agree("closest down", d, r[1], r[2:], true)

	// Frozen: the second closest answers nothing in time; everyone names the third.
	for _, n := range s.nodes {
		if n != r[1] {
			for _, l := range s.mn.LinksBetweenPeers(n.host.ID(), r[1].host.ID()) {
				l.SetOptions(mocknet.LinkOptions{Latency: 2 * time.Second})
			}
		}
	}
	start := time.Now()
	agree("second frozen", d, r[2], r[3:], true)
	t.Logf("%d fresh walks at once past a frozen node took %v", len(r)-3, time.Since(start))

	// Banned: a node that banned the closest of another digest names the next one; the
	// others still name the closest.
	d2 := digest.FromString("designated walk, banned")
	r2 := ranked(d2, r[0], r[1])
	asker := r2[len(r2)-1]
	asker.Ban(r2[0].ID(), "test")
	agree("banned by the asker", d2, r2[1], []*testNode{asker}, false)
	agree("banned by another", d2, r2[0], r2[:len(r2)-1], false)
}

// grantingContent grants the first asker of each digest the fetch (as the designated node
// does when nobody has the blob), and fetches for the swarm for every later asker.
type grantingContent struct {
	*swarmContent
	mu      sync.Mutex
	granted map[digest.Digest]string
}

func (c *grantingContent) Grant(_ context.Context, asker string, d digest.Digest, _, _ string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.granted[d]; ok && cur != asker {
		return false
	}
	c.granted[d] = asker
	return true
}

// A node that speaks /shoal/blob/1.1.0 may answer FetchVia with GRANTED (ErrGranted): the
// first asker fetches for itself, the next one gets the bytes. An old node (1.0.0 only) is
// never granted: a granting node answers its fetch-mode request as before.
func TestFetchViaGranted(t *testing.T) {
	blob := randomBlob(9, 200<<10)
	d, gc, fetcher, first, second := grantingTrio(t, blob)
	if !first.SpeaksGrant(fetcher.ID()) {
		t.Fatal("the fetcher does not say it speaks /shoal/blob/1.1.0")
	}
	if _, _, err := first.FetchVia(t.Context(), peerOf(fetcher), d, 0, "docker.io", "library/alpine"); !errors.Is(err, ErrGranted) {
		t.Fatalf("the first asker: %v, want ErrGranted", err)
	}
	rc, size, err := second.FetchVia(t.Context(), peerOf(fetcher), d, 0, "docker.io", "library/alpine")
	if err != nil {
		t.Fatalf("the second asker: %v, want the bytes", err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || size != int64(len(blob)) || !bytes.Equal(got, blob) {
		t.Fatalf("the second asker got %d of %d bytes, err %v", len(got), size, err)
	}

	// An old designated node (it speaks /shoal/blob/1.0.0 only; its content would grant):
	// a new asker gets the bytes, never a grant.
	oldGC := &grantingContent{granted: map[digest.Digest]string{},
		swarmContent: &swarmContent{memContent: newMemContent(), upstream: map[digest.Digest][]byte{d: blob}, asked: make(chan string, 4)}}
	old := startNode(t, testConfig(loopbackIPs(4)[3]), nil, nodeOpt{content: oldGC})
	old.host.RemoveStreamHandler(blobProtocolGrant) // before anyone connects: identify tells 1.0.0 only
	if err := second.host.Connect(t.Context(), peer.AddrInfo{ID: old.host.ID(), Addrs: old.host.Addrs()}); err != nil {
		t.Fatal(err)
	}
	if second.SpeaksGrant(old.ID()) {
		t.Fatal("an old node is taken for one that grants")
	}
	rc, size, err = second.FetchVia(t.Context(), peerOf(old), d, 0, "docker.io", "library/alpine")
	if err != nil {
		t.Fatalf("a new asker of an old designated node: %v, want the bytes", err)
	}
	got, err = io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("a new asker of an old designated node got %d of %d bytes, err %v", len(got), size, err)
	}

	// An old asker: the same fetch-mode request on /shoal/blob/1.0.0 is accepted and
	// answered with the bytes, not granted (a fresh digest, which nobody was granted).
	blob2 := randomBlob(10, 64<<10)
	d2 := digest.FromBytes(blob2)
	gc.upstream[d2] = blob2
	s, err := second.host.NewStream(t.Context(), fetcher.host.ID(), blobProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	req := request{Digest: d2, Offset: 0, Mode: modeFetch, Registry: "docker.io", Repo: "library/alpine"}
	if _, err := s.Write(req.marshal()); err != nil {
		t.Fatal(err)
	}
	_ = s.CloseWrite()
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := io.ReadAll(s)
	if want := fmt.Sprintf("ACCEPTED\nOK %d\n", len(blob2)); err != nil || !bytes.HasPrefix(resp, []byte(want)) || !bytes.HasSuffix(resp, blob2) {
		t.Fatalf("an old asker's fetch: %q… (%d bytes), err %v; want %q and the blob", resp[:min(len(resp), 40)], len(resp), err, want)
	}
}

// grantingTrio starts a designated fetcher whose content grants (and whose upstream holds
// blob) and two nodes bootstrapped to it.
func grantingTrio(t *testing.T, blob []byte) (d digest.Digest, gc *grantingContent, fetcher, first, second *testNode) {
	t.Helper()
	ips := loopbackIPs(3)
	d = digest.FromBytes(blob)
	gc = &grantingContent{granted: map[digest.Digest]string{},
		swarmContent: &swarmContent{memContent: newMemContent(), upstream: map[digest.Digest][]byte{d: blob}, asked: make(chan string, 4)}}
	fetcher = startNode(t, testConfig(ips[0]), nil, nodeOpt{content: gc})
	first = startNode(t, bootstrapTo(testConfig(ips[1]), fetcher), nil)
	second = startNode(t, bootstrapTo(testConfig(ips[2]), fetcher), nil)
	waitRT(t, first, 1)
	waitRT(t, second, 1)
	return d, gc, fetcher, first, second
}
