package p2p

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/opencontainers/go-digest"
)

// The swarm simulator: N shoal p2p nodes (this package's own Node, DHT and designation code),
// each bootstrapped to 3 random earlier nodes as a DNS sample would give, then measured.
//
// Two networks:
//   - "tcp": real libp2p hosts (TCP, TLS, yamux, shoal's connection manager and gater) on
//     127.79.x.y. Every connection costs two file descriptors in this one process and the
//     container caps them at 20,000 (ulimit -Hn, not raisable here): ~100 nodes fit.
//   - "mock": libp2p's in-memory mocknet (p2p/net/mock): the same hosts' protocol stack (identify,
//     DHT, shoal's streams) over in-memory pipes, no sockets and no crypto handshake, so 1,000
//     nodes fit in one process on 2 cores. It has no connection manager or resource manager.

// simNet names the network of a simulated swarm.
type simNet string

const (
	simTCP  simNet = "tcp"
	simMock simNet = "mock"
)

// simSwarm is a swarm of in-process nodes.
type simSwarm struct {
	t     testing.TB
	net   simNet
	mn    mocknet.Mocknet
	rng   *rand.Rand
	mu    sync.Mutex
	nodes []*testNode
	next  int // address counter
}

func newSimSwarm(t testing.TB, net simNet, seed uint64) *simSwarm {
	s := &simSwarm{t: t, net: net, rng: rand.New(rand.NewPCG(seed, 15))}
	if net == simMock {
		s.mn = mocknet.New()
		t.Cleanup(func() { s.mn.Close() })
	}
	return s
}

// simIP is the i-th loopback address of the simulator's 127.79.0.0/16.
func simIP(i int) string { return fmt.Sprintf("127.79.%d.%d", i/250, i%250+1) }

// add starts one node bootstrapped to up to 3 random nodes already in the swarm.
func (s *simSwarm) add() *testNode {
	s.mu.Lock()
	ip := simIP(s.next)
	s.next++
	cfg := testConfig(ip)
	var boot []*testNode
	for _, i := range s.rng.Perm(len(s.nodes))[:min(3, len(s.nodes))] {
		boot = append(boot, s.nodes[i])
	}
	s.mu.Unlock()
	cfg = bootstrapTo(cfg, boot...)
	var o []nodeOpt
	if s.net == simMock {
		addr := ma.StringCast("/ip4/" + ip + "/tcp/5001")
		o = append(o, nodeOpt{opts: []option{func(op *options) {
			op.makeHost = func(key crypto.PrivKey) (host.Host, error) {
				h, err := s.mn.AddPeer(key, addr)
				if err != nil {
					return nil, err
				}
				for _, p := range s.mn.Peers() { // a link is what lets two mock hosts dial
					if p != h.ID() {
						if _, err := s.mn.LinkPeers(h.ID(), p); err != nil {
							return nil, err
						}
					}
				}
				return h, nil
			}
		}}})
	}
	n := startQuietNode(s.t, cfg, o...)
	s.mu.Lock()
	s.nodes = append(s.nodes, n)
	s.mu.Unlock()
	return n
}

// startQuietNode is startNode without per-node test logs (a thousand nodes' debug lines
// would swamp the run and skew the timings).
func startQuietNode(t testing.TB, cfg Config, o ...nodeOpt) *testNode {
	t.Helper()
	content := newMemContent()
	var opts []option
	for _, x := range o {
		opts = append(opts, x.opts...)
	}
	dl := &dialLog{}
	opts = append(opts, func(o *options) { o.observeDial = dl.observe })
	dir := t.TempDir()
	n, err := newNode(t.Context(), cfg, dir, content, nil, opts...)
	if err != nil {
		t.Fatalf("start node on %v: %v", cfg.Listen, err)
	}
	t.Cleanup(func() {
		n.Close()
		if len(dl.wrong) > 0 {
			t.Errorf("node %s dialled non-loopback addresses: %v", n.ID(), dl.wrong)
		}
	})
	return &testNode{Node: n, content: content, dataDir: dir, dials: dl}
}

// grow adds nodes one after another until the swarm has n, each once its bootstrap
// connection holds (as nodes of a real cluster come up over time, not in one instant).
func (s *simSwarm) grow(n int) {
	for len(s.nodes) < n {
		x := s.add()
		if len(s.nodes) > 1 {
			waitFor(s.t, 30*time.Second, "a new node to join", func() bool { return x.dht.RoutingTable().Size() > 0 })
		}
	}
}

// settle waits until the routing tables stop growing: their total has not changed for
// quiet, or at most max.
func (s *simSwarm) settle(quiet, max time.Duration) time.Duration {
	start := time.Now()
	last, since := -1, time.Now()
	for time.Since(start) < max {
		total := 0
		for _, n := range s.nodes {
			total += n.dht.RoutingTable().Size()
		}
		if total != last {
			last, since = total, time.Now()
		} else if time.Since(since) >= quiet {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
	}
	return time.Since(start)
}

// simDigest is the i-th digest of a run.
func simDigest(seed uint64, i int) digest.Digest {
	return digest.FromString(fmt.Sprintf("shoal-sim-%d-%d", seed, i))
}

// trueClosest is the live node closest to d's key: what every node should agree on.
func (s *simSwarm) trueClosest(d digest.Digest) string {
	key, _ := digestKey(d)
	k := string(key.Hash())
	var best peer.ID
	for _, n := range s.nodes {
		if best == "" || kb.Closer(n.host.ID(), best, k) {
			best = n.host.ID()
		}
	}
	return best.String()
}

// agreement is how the nodes of a swarm answer "who is d's designated fetcher".
type agreement struct {
	digests      int
	meanDistinct float64
	exactlyOne   float64 // share of digests with one answer
	truth        float64 // share of answers that name the true closest node
	errors       int64
	lat          []time.Duration // per first (uncached) call
}

func (a agreement) pct(q float64) time.Duration {
	if len(a.lat) == 0 {
		return 0
	}
	l := slices.Clone(a.lat)
	slices.Sort(l)
	return l[min(len(l)-1, int(q*float64(len(l))))]
}

// measureAgreement asks every node for the designated fetcher of each digest with ask, at
// most par calls in flight.
func (s *simSwarm) measureAgreement(digests int, seed uint64, par int, ask func(n *testNode, d digest.Digest) (string, error)) agreement {
	var (
		a     = agreement{digests: digests}
		mu    sync.Mutex
		errs  atomic.Int64
		sumD  int
		one   int
		right int
		asked int
		sem   = make(chan struct{}, par)
	)
	for i := range digests {
		d := simDigest(seed, i)
		truth := s.trueClosest(d)
		answers := map[string]int{}
		var wg sync.WaitGroup
		for _, n := range s.nodes {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				start := time.Now()
				id, err := ask(n, d)
				took := time.Since(start)
				mu.Lock()
				defer mu.Unlock()
				a.lat = append(a.lat, took)
				if err != nil {
					errs.Add(1)
					return
				}
				answers[id]++
			}()
		}
		wg.Wait()
		sumD += len(answers)
		if len(answers) == 1 {
			one++
		}
		right += answers[truth]
		for _, c := range answers {
			asked += c
		}
	}
	a.meanDistinct = float64(sumD) / float64(digests)
	a.exactlyOne = float64(one) / float64(digests)
	if asked > 0 {
		a.truth = float64(right) / float64(asked)
	}
	a.errors = errs.Load()
	return a
}

// askDesignated is shoal's own rule, Node.Designated.
func askDesignated(n *testNode, d digest.Digest) (string, error) {
	p, _, err := n.Designated(context.Background(), d)
	return p.ID, err
}

// askTable is the rule shoal used before: the closest among this node and its routing table.
// Comparison only.
func askTable(n *testNode, d digest.Digest) (string, error) {
	key, _ := digestKey(d)
	p, _, err := n.designatedLocal(string(key.Hash()), false)
	return p.ID, err
}

// askWalk is a bare kad-dht closest-peers walk for d's key, the asker included in the
// comparison (the walk never returns the asker itself). Diagnosis only.
func askWalk(n *testNode, d digest.Digest) (string, error) {
	key, _ := digestKey(d)
	k := string(key.Hash())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ps, err := n.dht.GetClosestPeers(ctx, k)
	if err != nil {
		return "", err
	}
	best := n.host.ID()
	for _, p := range ps {
		if kb.Closer(p, best, k) {
			best = p
		}
	}
	return best.String(), nil
}

// soloLookups times count Designated calls for fresh digests from random nodes, one at a
// time: the whole swarm shares 2 cores here, so 8 walks in flight also time the scheduler.
func (s *simSwarm) soloLookups(count int, seed uint64) agreement {
	var a agreement
	for i := range count {
		n := s.nodes[s.rng.IntN(len(s.nodes))]
		start := time.Now()
		if _, err := askDesignated(n, simDigest(seed, i)); err != nil {
			a.errors++
		}
		a.lat = append(a.lat, time.Since(start))
	}
	return a
}

// conns is the mean and max of connections per node.
func (s *simSwarm) conns() (mean float64, max int) {
	sum := 0
	for _, n := range s.nodes {
		c := len(n.host.Network().Peers())
		sum += c
		max = maxInt(max, c)
	}
	return float64(sum) / float64(len(s.nodes)), max
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// rtStats is the mean routing table size and the share of nodes whose table holds their 3
// true nearest neighbours (what Kademlia's lookups rely on).
func (s *simSwarm) rtStats() (mean float64, nearOK float64) {
	ids := make([]peer.ID, len(s.nodes))
	for i, n := range s.nodes {
		ids[i] = n.host.ID()
	}
	sum, ok := 0, 0
	for _, n := range s.nodes {
		rt := n.dht.RoutingTable()
		sum += rt.Size()
		self := n.host.ID()
		others := slices.DeleteFunc(slices.Clone(ids), func(p peer.ID) bool { return p == self })
		near := kb.SortClosestPeers(others, kb.ConvertPeerID(self))
		all := true
		for _, p := range near[:min(3, len(near))] {
			if rt.Find(p) == "" {
				all = false
			}
		}
		if all {
			ok++
		}
	}
	return float64(sum) / float64(len(s.nodes)), float64(ok) / float64(len(s.nodes))
}

// rssMiB is this process's resident set size.
func rssMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kib, _ := strconv.ParseFloat(f[1], 64)
			return kib / 1024
		}
	}
	return 0
}

// joinTime starts one more node and times how long until its routing table is not empty
// and it finds a digest that another node provided.
func (s *simSwarm) joinTime(ctx context.Context) (time.Duration, error) {
	holder := s.nodes[s.rng.IntN(len(s.nodes))]
	blob := randomBlob(s.rng.Uint64(), 1024)
	d := holder.content.put(blob)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := holder.Provide(pctx, d); err != nil {
		return 0, fmt.Errorf("provide: %w", err)
	}
	start := time.Now()
	x := s.add()
	for time.Since(start) < 30*time.Second {
		if x.dht.RoutingTable().Size() > 0 {
			fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ps, err := x.FindProviders(fctx, d, 1)
			cancel()
			if err == nil && len(ps) > 0 && ps[0].ID == holder.ID() {
				return time.Since(start), nil
			}
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
	return 0, fmt.Errorf("the new node found no provider of %s within 30 s", d)
}

// simRow is one line of the simulator's table.
type simRow struct {
	n                int
	net              simNet
	grow, settle     time.Duration
	rtMean, rtNearOK float64
	ag               agreement
	join             time.Duration
	connMean         float64 // after the agreement run (its walks dialled peers)
	connMax          int
	idleMean         float64 // settled, before any lookup
	idleMax          int
	solo             agreement // walks one at a time (a real node walks on its own CPU)
	rssPerNode       float64
}

func (r simRow) String() string {
	return fmt.Sprintf("| %5d | %-4s | %6.1f s | %5.1f | %5.1f%% | %5.2f | %5.1f%% | %5.1f%% | %7.2f ms | %7.2f ms | %6d | %5.2f / %6.2f ms | %6.0f ms | %5.1f / %3d | %5.1f / %3d | %5.2f MiB |",
		r.n, r.net, r.grow.Seconds()+r.settle.Seconds(), r.rtMean, 100*r.rtNearOK,
		r.ag.meanDistinct, 100*r.ag.exactlyOne, 100*r.ag.truth,
		float64(r.ag.pct(0.5).Microseconds())/1000, float64(r.ag.pct(0.99).Microseconds())/1000, r.ag.errors,
		float64(r.solo.pct(0.5).Microseconds())/1000, float64(r.solo.pct(0.99).Microseconds())/1000,
		float64(r.join.Milliseconds()), r.idleMean, r.idleMax, r.connMean, r.connMax, r.rssPerNode)
}

const simHeader = "|     N | net  |  settle  | rt    | near3  | dist. | one    | true   | find p50   | find p99   | errors | solo p50 / p99    | join      | conns idle     | conns after    | RSS/node  |\n" +
	"|------:|------|---------:|------:|-------:|------:|-------:|-------:|-----------:|-----------:|-------:|------------------:|----------:|---------------:|---------------:|----------:|"

// runSim builds a swarm of n nodes, settles it and measures it.
func runSim(t testing.TB, n int, net simNet, digests int, seed uint64) simRow {
	runtime.GC()
	base := rssMiB()
	s := newSimSwarm(t, net, seed)
	r := simRow{n: n, net: net}
	start := time.Now()
	s.grow(n)
	r.grow = time.Since(start)
	r.settle = s.settle(5*time.Second, 60*time.Second)
	r.rtMean, r.rtNearOK = s.rtStats()
	r.idleMean, r.idleMax = s.conns()
	ask := askDesignated
	switch os.Getenv("SHOAL_SIM_RULE") {
	case "table":
		ask = askTable
	case "getclosestpeers":
		ask = askWalk
	}
	r.ag = s.measureAgreement(digests, seed, 8, ask)
	r.connMean, r.connMax = s.conns()
	r.solo = s.soloLookups(300, seed+1)
	runtime.GC()
	r.rssPerNode = (rssMiB() - base) / float64(n)
	var err error
	if r.join, err = s.joinTime(t.Context()); err != nil {
		t.Errorf("N=%d: join: %v", n, err)
	}
	return r
}

// TestSwarmSim is the swarm simulator at benchmark sizes. It runs only when asked:
//
//	SHOAL_SIM_N=100,300,1000 go test -vet=off -count=1 -run TestSwarmSim -timeout 60m -v ./p2p/
//
// SHOAL_SIM_NET=tcp|mock picks the network (default: tcp up to 100 nodes, mock above);
// SHOAL_SIM_DIGESTS the digests asked (default 200); SHOAL_SIM_RULE=table or getclosestpeers
// measures the old rule (closest in the routing table) or a bare kad-dht GetClosestPeers walk
// instead of Node.Designated.
func TestSwarmSim(t *testing.T) {
	sizes := os.Getenv("SHOAL_SIM_N")
	if sizes == "" {
		t.Skip("benchmark-size swarm simulator: set SHOAL_SIM_N=100,300,1000 to run it (TestSwarmAgreement runs a small swarm in the suite)")
	}
	digests := 200
	if v := os.Getenv("SHOAL_SIM_DIGESTS"); v != "" {
		digests, _ = strconv.Atoi(v)
	}
	var rows []simRow
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			t.Fatalf("SHOAL_SIM_N: %v", err)
		}
		net := simNet(os.Getenv("SHOAL_SIM_NET"))
		if net == "" {
			net = simTCP
			if n > 100 {
				net = simMock
			}
		}
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			r := runSim(t, n, net, digests, uint64(n))
			t.Logf("\n%s\n%s", simHeader, r)
			rows = append(rows, r)
		})
	}
	var b strings.Builder
	for _, r := range rows {
		b.WriteString(r.String() + "\n")
	}
	t.Logf("swarm simulator, %d digests asked of every node, %d CPUs:\n%s\n%s", digests, runtime.NumCPU(), simHeader, b.String())
}

// In a swarm larger than a routing table's buckets, every node names the same designated
// fetcher for (nearly) every digest, and it is the true closest live node. With the old rule
// ("closest in my routing table") 60 nodes gave 3.4 different answers per digest.
func TestSwarmAgreement(t *testing.T) {
	const n, digests = 60, 100
	s := newSimSwarm(t, simTCP, 60)
	s.grow(n)
	s.settle(3*time.Second, 30*time.Second)
	rt, near := s.rtStats()
	a := s.measureAgreement(digests, 60, 8, askDesignated)
	t.Logf("N=%d: routing table mean %.1f, near3 %.0f%%; %.2f designated per digest, %.0f%% with one, %.1f%% true closest; walk p50 %v p99 %v, %d errors",
		n, rt, 100*near, a.meanDistinct, 100*a.exactlyOne, 100*a.truth, a.pct(0.5), a.pct(0.99), a.errors)
	if a.exactlyOne < 0.99 || a.errors > 0 {
		t.Fatalf("%.0f%% of %d digests have exactly one designated fetcher (%.2f per digest, %d errors), want >= 99%%",
			100*a.exactlyOne, digests, a.meanDistinct, a.errors)
	}
	if a.truth < 0.99 {
		t.Fatalf("%.1f%% of answers name the true closest live node, want >= 99%%", 100*a.truth)
	}
}
