package p2p

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dhtpb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/proto"
)

// msgCounter counts the DHT messages a node sends (requests it starts: FIND_NODE,
// ADD_PROVIDER, GET_PROVIDERS, PING), by type. Answers to other nodes' requests are theirs.
type msgCounter struct {
	mu     sync.Mutex
	byType map[dhtpb.Message_MessageType]int64
	total  atomic.Int64
}

func newMsgCounter() *msgCounter {
	return &msgCounter{byType: map[dhtpb.Message_MessageType]int64{}}
}

// count reads one write of the DHT's message writer: a varint length and one message (the
// DHT buffers and flushes each message in one write).
func (c *msgCounter) count(b []byte) {
	c.total.Add(1)
	l, k := binary.Uvarint(b)
	if k <= 0 || int(l) > len(b)-k {
		return
	}
	var m dhtpb.Message
	if proto.Unmarshal(b[k:k+int(l)], &m) != nil {
		return
	}
	c.mu.Lock()
	c.byType[m.GetType()]++
	c.mu.Unlock()
}

func (c *msgCounter) snapshot() map[dhtpb.Message_MessageType]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[dhtpb.Message_MessageType]int64, len(c.byType))
	for k, v := range c.byType {
		out[k] = v
	}
	return out
}

func (c *msgCounter) option() option {
	return func(o *options) {
		o.dhtHost = func(h host.Host) host.Host { return countingHost{Host: h, c: c} }
	}
}

type countingHost struct {
	host.Host
	c *msgCounter
}

func (h countingHost) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	s, err := h.Host.NewStream(ctx, p, pids...)
	if err != nil {
		return nil, err
	}
	return &countingStream{Stream: s, c: h.c}, nil
}

type countingStream struct {
	network.Stream
	c *msgCounter
}

func (s *countingStream) Write(b []byte) (int, error) {
	s.c.count(b)
	return s.Stream.Write(b)
}

// scaleRun makes node logs Info-level: per-message debug lines from hundreds of nodes would
// measure the logger.
var scaleRun atomic.Bool

// envInts reads a comma-separated list of integers from an environment variable.
func envInts(t *testing.T, name string) []int {
	v := os.Getenv(name)
	if v == "" {
		return nil
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		x, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || x < 2 {
			t.Fatalf("%s=%q: want a comma-separated list of node counts ≥ 2", name, v)
		}
		out = append(out, x)
	}
	return out
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return d
}

// connSummary is connections per node: mean, p50, p90, max; and the mean routing table.
func connSummary(nodes []*testNode) string {
	cs := make([]int, 0, len(nodes))
	rt := 0
	for _, n := range nodes {
		cs = append(cs, len(n.host.Network().Peers()))
		rt += n.dht.RoutingTable().Size()
	}
	slices.Sort(cs)
	sum := 0
	for _, c := range cs {
		sum += c
	}
	return fmt.Sprintf("conns mean %.1f p50 %d p90 %d max %d; routing table mean %.1f",
		float64(sum)/float64(len(cs)), cs[len(cs)/2], cs[len(cs)*9/10], cs[len(cs)-1], float64(rt)/float64(len(nodes)))
}

// Connections per node, idle after settling, for a swarm of N real hosts in this process
// behind one DNS name (each joining through p2p.bootstrap_sample random addresses). A
// benchmark-size run, off by default:
//
//	ulimit -n 1048576; SHOAL_SCALE_N=50,100,200 flock /tmp/shoal-heavy.lock \
//	  go test -vet=off -count=1 -v -run TestScaleConnections -timeout 30m ./p2p/
//
// SHOAL_SCALE_SETTLE (default 90s: past the connection manager's grace period) sets how
// long the swarm idles before the figure is taken; a line every 15 s shows the way there.
func TestScaleConnections(t *testing.T) {
	ns := envInts(t, "SHOAL_SCALE_N")
	if ns == nil {
		t.Skip("benchmark-size run: set SHOAL_SCALE_N=50,100,200 (see the doc comment); the default suite covers bootstrap sampling in TestBootstrapDNSSample")
	}
	scaleRun.Store(true)
	defer scaleRun.Store(false)
	settle := envDuration(t, "SHOAL_SCALE_SETTLE", 90*time.Second)
	for _, n := range ns {
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			ips := loopbackIPs(n)
			start := time.Now()
			nodes := dnsSwarm(t, n, DefaultConfig().BootstrapSample, fmt.Sprintf("shoal-scale-%d.test", n), ips, nil)
			waitJoined(t, nodes)
			t.Logf("N=%d: %d nodes started and joined in %v", n, n, time.Since(start))
			tick := time.NewTicker(15 * time.Second)
			defer tick.Stop()
			end := time.After(settle)
			cpu0, t0 := cpuTime(), time.Now()
		idle:
			for {
				select {
				case <-tick.C:
					t.Logf("N=%d +%v: %s", n, time.Since(start).Round(time.Second), connSummary(nodes))
				case <-end:
					break idle
				}
			}
			t.Logf("RESULT N=%d idle after %v: %s; process CPU over the settle window %.3f%% of one core per node",
				n, settle, connSummary(nodes), 100*(cpuTime()-cpu0).Seconds()/time.Since(t0).Seconds()/float64(n))
		})
	}
}

// digestList is Content that serves nothing and shares a fixed list of digests: enough to
// measure what announcing costs.
type digestList struct {
	mu   sync.Mutex
	list []digest.Digest
}

func (c *digestList) OpenForPeer(context.Context, digest.Digest, int64) (io.ReadCloser, int64, error) {
	return nil, 0, ErrNotFound
}

func (c *digestList) ShareList(context.Context) ([]digest.Digest, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.list), nil
}

func (c *digestList) set(l []digest.Digest) {
	c.mu.Lock()
	c.list = l
	c.mu.Unlock()
}

// What announcing costs a node that stores many digests, in a swarm of N real hosts in this
// process: DHT messages the node sends and the CPU the whole process spends (the node's own
// work plus what the other nodes spend storing its records; idle CPU subtracted) for one
// round of announcing everything, scaled to an hour. Off by default:
//
//	ulimit -n 1048576; SHOAL_PROVIDE_N=100 SHOAL_PROVIDE_DIGESTS=10000 flock /tmp/shoal-heavy.lock \
//	  go test -vet=off -count=1 -v -run TestScaleProvideCost -timeout 30m ./p2p/
func TestScaleProvideCost(t *testing.T) {
	ns := envInts(t, "SHOAL_PROVIDE_N")
	if ns == nil {
		t.Skip("benchmark-size run: set SHOAL_PROVIDE_N=100 and SHOAL_PROVIDE_DIGESTS=10000 (see the doc comment); the default suite covers provide and reprovide in the cluster tests")
	}
	k := 10000
	if v := os.Getenv("SHOAL_PROVIDE_DIGESTS"); v != "" {
		var err error
		if k, err = strconv.Atoi(v); err != nil || k < 1 {
			t.Fatalf("SHOAL_PROVIDE_DIGESTS=%q", v)
		}
	}
	scaleRun.Store(true)
	defer scaleRun.Store(false)
	settle := envDuration(t, "SHOAL_PROVIDE_SETTLE", 30*time.Second)
	n := ns[0]
	ips := loopbackIPs(n)
	counter := newMsgCounter()
	content := &digestList{}
	nodes := dnsSwarm(t, n, DefaultConfig().BootstrapSample, fmt.Sprintf("shoal-provide-%d.test", n), ips,
		func(i int, _ *Config, o *nodeOpt) {
			if i == 0 {
				o.content = content
				o.opts = append(o.opts, counter.option())
			}
		})
	waitJoined(t, nodes)
	// Settle, then take the idle CPU rate over the last 10 s.
	idleWin := 10 * time.Second
	idleStart := time.After(max(settle-idleWin, 0))
	<-idleStart
	cpuI, tI := cpuTime(), time.Now()
	<-time.After(idleWin)
	idleRate := (cpuTime() - cpuI).Seconds() / time.Since(tI).Seconds()
	t.Logf("N=%d settled: %s; idle process CPU %.1f%% of one core", n, connSummary(nodes), 100*idleRate)

	list := make([]digest.Digest, k)
	for i := range list {
		list[i] = digest.FromString(fmt.Sprintf("provide-cost-%d", i))
	}
	content.set(list)
	m0, b0 := counter.total.Load(), counter.snapshot()
	cpu0, t0 := cpuTime(), time.Now()
	announceAll(t, nodes[0].Node)
	took := time.Since(t0)
	raw := (cpuTime() - cpu0).Seconds()
	// The idle rate again, after the round: the swarm's own background work drifts, and
	// the round's cost is the difference of two large numbers when the round is cheap.
	cpuJ, tJ := cpuTime(), time.Now()
	<-time.After(idleWin)
	idleAfter := (cpuTime() - cpuJ).Seconds() / time.Since(tJ).Seconds()
	idle := (idleRate + idleAfter) / 2
	cpu := max(raw-idle*took.Seconds(), 0)
	msgs := counter.total.Load() - m0
	b1 := counter.snapshot()
	var kinds []string
	for typ, v := range b1 {
		if d := v - b0[typ]; d > 0 {
			kinds = append(kinds, fmt.Sprintf("%s %d", typ, d))
		}
	}
	slices.Sort(kinds)
	perHour := float64(time.Hour) / float64(announceEvery(nodes[0].Node))
	t.Logf("RESULT N=%d digests=%d: one round took %v, sent %d DHT messages (%.1f per digest: %s); process CPU %.2f s during the round, idle rate %.1f%%/%.1f%% of one core before/after, so %.2f CPU-s for the round",
		n, k, took.Round(time.Millisecond), msgs, float64(msgs)/float64(k), strings.Join(kinds, ", "), raw, 100*idleRate, 100*idleAfter, cpu)
	t.Logf("RESULT N=%d digests=%d: %.1f rounds/h → %.0f DHT messages/h, %.1f CPU-s/h = %.2f%% of one core per node",
		n, k, perHour, perHour*float64(msgs), perHour*cpu, 100*perHour*cpu/3600)

	// Every announced digest is findable: a sample, from other nodes.
	for i := range 20 {
		d := list[(i*7919)%k]
		x := nodes[1+(i*31)%(n-1)]
		ps, err := findWithin(t, x, d, 5*time.Second)
		if err != nil || len(ps) == 0 || ps[0].ID != nodes[0].ID() {
			t.Fatalf("digest %d not found from node %s: %v %v", i, x.ID(), ps, err)
		}
	}
}

// announceAll announces everything the node shares once, as one cycle of the periodic
// loop does: it hands the list to the sweeper (online by then) and waits until the sweeper
// has nothing queued or running.
func announceAll(t *testing.T, n *Node) {
	t.Helper()
	idle := func(wantOnline bool) bool {
		st, err := n.sweeper.Stats(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if wantOnline {
			return st.Connectivity.Status == "online"
		}
		q := st.Queues
		return q.PendingKeyProvides == 0 && q.PendingRegionProvides == 0 && q.PendingRegionReprovides == 0 && st.Workers.Active == 0
	}
	waitFor(t, 30*time.Second, "the sweeper to be online", func() bool { return idle(true) })
	n.reprovideAll(t.Context())
	waitFor(t, 10*time.Minute, "the sweeper to announce everything", func() bool { return idle(false) })
}

// announceEvery is how often the periodic loop announces everything.
func announceEvery(n *Node) time.Duration { return n.cfg.RecordTTL / 2 }

// waitJoined waits for every node's routing table to hold a peer. Hundreds of nodes starting
// on two shared cores take their time (a bootstrap dial whose identify exchange misses
// dialTimeout is retried after a back-off), hence a budget far above the suite's.
func waitJoined(t *testing.T, nodes []*testNode) {
	t.Helper()
	waitFor(t, 2*time.Minute, "every node to join", func() bool {
		for _, x := range nodes {
			if x.dht.RoutingTable().Size() == 0 {
				return false
			}
		}
		return true
	})
}
