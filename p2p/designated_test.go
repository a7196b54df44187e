package p2p

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
)

// swarmContent fetches "from the upstream" (a byte slice) when asked as the designated fetcher.
type swarmContent struct {
	*memContent
	upstream map[digest.Digest][]byte
	asked    chan string // registry/repo of each FetchForSwarm
}

func (c *swarmContent) FetchForSwarm(_ context.Context, d digest.Digest, off int64, registry, repo string) (io.ReadCloser, int64, error) {
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
