package p2p

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kb "github.com/libp2p/go-libp2p-kbucket"
)

// testWarmer is a Preheater that counts its calls; with block set it runs until cancelled.
type testWarmer struct {
	calls   atomic.Int64
	running atomic.Int64
	ended   atomic.Int64 // calls that returned because their context ended
	block   bool
	gate    chan struct{} // set: wait for it, then say started
	entered chan struct{} // closed on the first call (with gate)
	said    chan struct{} // closed once started was called (with gate)
	finish  chan struct{} // with gate: wait for it after saying started
	bytes   int64
	mu      sync.Mutex
	images  [][]string
}

func (w *testWarmer) Preheat(ctx context.Context, images []string, _ string, progress func(int64), started func()) error {
	w.calls.Add(1)
	w.running.Add(1)
	defer w.running.Add(-1)
	w.mu.Lock()
	w.images = append(w.images, images)
	w.mu.Unlock()
	if w.gate != nil {
		close(w.entered)
		<-w.gate
		started()
		close(w.said)
		<-w.finish
	}
	if w.block {
		<-ctx.Done()
		w.ended.Add(1)
		return ctx.Err()
	}
	progress(w.bytes)
	return nil
}

// warmSwarm gives every node of s a testWarmer.
func warmSwarm(nodes []*testNode, block bool) []*testWarmer {
	ws := make([]*testWarmer, len(nodes))
	for i, n := range nodes {
		ws[i] = &testWarmer{block: block, bytes: 1000}
		n.SetPreheater(ws[i])
	}
	return ws
}

func (n *Node) preheatCounts() (handled, seen int) {
	n.preheat.mu.Lock()
	defer n.preheat.mu.Unlock()
	return n.preheat.handled, n.preheat.dropped
}

// The ask reaches every node of a 100-node swarm exactly once, through a tree in which no
// node sends more than a few asks per level, and the reports sum up at the initiator.
func TestPreheatReachesEveryNodeOnce(t *testing.T) {
	const n = 100
	s := newSimSwarm(t, simMock, 17)
	t0 := time.Now()
	s.grow(n)
	grown := time.Since(t0)
	settled := s.settle(time.Second, 10*time.Second)
	t.Logf("%d nodes grown in %v, settled in %v", n, grown.Round(time.Millisecond), settled.Round(time.Millisecond))
	ws := warmSwarm(s.nodes, false)
	init := s.nodes[41]
	var reports []PreheatProgress
	start := time.Now()
	final, err := init.Preheat(t.Context(), PreheatRequest{Images: []string{"example.com/app@sha256:" + strings.Repeat("ab", 32)}}, func(p PreheatProgress) {
		reports = append(reports, p)
	})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	var never, twice []int
	for i, w := range ws {
		switch c := w.calls.Load(); {
		case c == 0:
			never = append(never, i)
		case c > 1:
			twice = append(twice, i)
		}
	}
	maxSent := 0
	for _, x := range s.nodes {
		h, seen := x.preheatCounts()
		if h != 1 || seen != 0 {
			t.Errorf("node %s accepted the ask %d times and dropped %d repeats, want 1 and 0", x.ID(), h, seen)
		}
		maxSent = max(maxSent, int(x.preheat.sent.Load()))
	}
	t.Logf("N=%d: final %+v in %v, %d reports at the initiator, at most %d asks sent by one node", n, final, took.Round(time.Millisecond), len(reports), maxSent)
	if len(never) > 0 || len(twice) > 0 {
		t.Fatalf("nodes never asked: %v; asked more than once: %v", never, twice)
	}
	if final.Reached != n || final.Selected != n || final.Done != n || final.Failed != 0 || final.Unreached != 0 || final.Bytes != 1000*n || !final.Final {
		t.Fatalf("final report %+v, want %d nodes reached, selected and done, %d bytes", final, n, 1000*n)
	}
	// The tree's fan-out is one ask per non-empty sibling subtree: about log2(N) + a few.
	if limit := bits.Len(uint(n)) + 6; maxSent > limit {
		t.Fatalf("a node sent %d asks, want at most %d (log2 N + 6)", maxSent, limit)
	}
	for i := 1; i < len(reports); i++ {
		if reports[i].Done < reports[i-1].Done {
			t.Fatalf("progress went backwards: %+v then %+v", reports[i-1], reports[i])
		}
	}
}

// --nodes N selects exactly N nodes (after a census); --fraction about that share.
func TestPreheatNodesAndFraction(t *testing.T) {
	s := newSimSwarm(t, simMock, 23)
	s.grow(30)
	s.settle(time.Second, 20*time.Second)
	ws := warmSwarm(s.nodes, false)
	calls := func() (total int64) {
		for _, w := range ws {
			total += w.calls.Load()
		}
		return total
	}
	p, err := s.nodes[3].Preheat(t.Context(), PreheatRequest{Images: []string{"a/b:c"}, Nodes: 7}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Total != 30 || p.Reached != 30 || p.Selected != 7 || p.Done != 7 || calls() != 7 {
		t.Fatalf("--nodes 7 of 30: %+v and %d warm calls, want total 30, reached 30, 7 selected, done and called", p, calls())
	}
	before := calls()
	p, err = s.nodes[5].Preheat(t.Context(), PreheatRequest{Images: []string{"a/b:c"}, Fraction: 0.5}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := calls() - before
	if p.Reached != 30 || int64(p.Selected) != got || p.Done != p.Selected || got < 5 || got > 25 {
		t.Fatalf("--fraction 0.5 of 30: %+v, %d warm calls", p, got)
	}
	// More nodes asked for than there are: all of them.
	before = calls()
	if p, err = s.nodes[0].Preheat(t.Context(), PreheatRequest{Images: []string{"a/b:c"}, Nodes: 500}, nil); err != nil || p.Done != 30 || calls()-before != 30 {
		t.Fatalf("--nodes 500 of 30: %+v, %d calls, %v", p, calls()-before, err)
	}
}

// An ask that comes back (the same ID), one with no hops left and one whose depth does not
// fit the asker's key are all dropped without warming anything.
func TestPreheatLoopDropped(t *testing.T) {
	ips := loopbackIPs(4)
	first := startNode(t, testConfig(ips[0]), nil)
	nodes := []*testNode{first}
	for _, ip := range ips[1:] {
		nodes = append(nodes, startNode(t, bootstrapTo(testConfig(ip), first), nil))
	}
	for _, x := range nodes {
		waitRT(t, x, len(nodes)-1)
	}
	ws := warmSwarm(nodes, false)
	p, err := nodes[0].Preheat(t.Context(), PreheatRequest{Images: []string{"a/b:c"}}, nil)
	if err != nil || p.Done != 4 {
		t.Fatalf("preheat: %+v, %v", p, err)
	}
	// Replay an ask with a seen ID: every node, initiator included, drops it.
	a, b := nodes[1], nodes[2]
	id := a.preheatLastID()
	if id == "" {
		t.Fatal("node remembers no ask")
	}
	replay := preheatAsk{ID: id, Images: []string{"a/b:c"}, Depth: kb.CommonPrefixLen(kb.ConvertPeerID(a.host.ID()), kb.ConvertPeerID(b.host.ID())) + 1,
		Hops: 5, TimeoutMS: 5000, Select: ^uint64(0)}
	for _, x := range nodes[:3] {
		if x == a {
			continue
		}
		r := replay
		r.Depth = kb.CommonPrefixLen(kb.ConvertPeerID(a.host.ID()), kb.ConvertPeerID(x.host.ID())) + 1
		accepted, err := a.askPeer(t.Context(), x.host.ID(), r, func(PreheatProgress) {})
		if accepted || !errors.Is(err, errPreheatSeen) {
			t.Fatalf("replayed ask to %s: accepted=%v err=%v, want dropped as seen", x.ID(), accepted, err)
		}
	}
	fresh := replay
	fresh.ID = newPreheatID()
	for _, tc := range []struct {
		name string
		mod  func(*preheatAsk)
		want string
	}{
		{"no hops left", func(a *preheatAsk) { a.Hops = 0 }, "hops 0"},
		{"too many hops", func(a *preheatAsk) { a.Hops = preheatMaxHops + 1 }, "hops"},
		{"depth not the asker's sibling", func(a *preheatAsk) { a.Depth += 3 }, "depth does not match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := fresh
			tc.mod(&r)
			accepted, err := a.askPeer(t.Context(), b.host.ID(), r, func(PreheatProgress) {})
			if accepted || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("accepted=%v err=%v, want refused with %q", accepted, err, tc.want)
			}
		})
	}
	for i, w := range ws {
		if c := w.calls.Load(); c != 1 {
			t.Fatalf("node %d warmed %d times, want once (replays and bad asks warm nothing)", i, c)
		}
	}
}

func (n *Node) preheatLastID() string {
	n.preheat.mu.Lock()
	defer n.preheat.mu.Unlock()
	for id := range n.preheat.seen {
		return id
	}
	return ""
}

// With a swarm key, only members can ask: an outsider (no key, or another key) cannot even
// open a stream, and its own preheat reaches nobody but itself.
func TestPreheatNonMemberRefused(t *testing.T) {
	ips := loopbackIPs(5)
	key, otherKey := writeSwarmKey(t), writeSwarmKey(t)
	private := func(ip, key string) Config {
		c := testConfig(ip)
		c.SwarmKeyFile = key
		return c
	}
	a := startNode(t, private(ips[0], key), nil)
	b := startNode(t, bootstrapTo(private(ips[1], key), a), nil)
	waitRT(t, b, 1)
	ws := warmSwarm([]*testNode{a, b}, false)
	if p, err := a.Preheat(t.Context(), PreheatRequest{Images: []string{"a/b:c"}}, nil); err != nil || p.Done != 2 {
		t.Fatalf("members' preheat: %+v, %v", p, err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no key", bootstrapTo(testConfig(ips[2]), a)},
		{"other key", bootstrapTo(private(ips[3], otherKey), a)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := startNode(t, tc.cfg, nil)
			warmSwarm([]*testNode{out}, false)
			out.host.Peerstore().AddAddrs(a.host.ID(), a.host.Addrs(), time.Hour)
			ask := preheatAsk{ID: newPreheatID(), Images: []string{"a/b:c"}, Hops: 3, TimeoutMS: 5000, Select: ^uint64(0),
				Depth: kb.CommonPrefixLen(kb.ConvertPeerID(out.host.ID()), kb.ConvertPeerID(a.host.ID())) + 1}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			accepted, err := out.askPeer(ctx, a.host.ID(), ask, func(PreheatProgress) {})
			if accepted || err == nil {
				t.Fatalf("outsider's ask: accepted=%v err=%v, want no stream at all", accepted, err)
			}
			p, err := out.Preheat(t.Context(), PreheatRequest{Images: []string{"a/b:c"}}, nil)
			if err != nil || p.Reached != 1 {
				t.Fatalf("outsider's own preheat: %+v, %v; want it to reach itself only", p, err)
			}
		})
	}
	if ca, cb := ws[0].calls.Load(), ws[1].calls.Load(); ca != 1 || cb != 1 {
		t.Fatalf("members warmed %d and %d times, want once each (outsiders' asks refused)", ca, cb)
	}
}

// Cancelling the initiator's context cancels the warm-up on every node of the tree.
func TestPreheatCancel(t *testing.T) {
	const n = 12
	s := newSimSwarm(t, simTCP, 31)
	s.grow(n)
	s.settle(time.Second, 20*time.Second)
	ws := warmSwarm(s.nodes, true)
	ctx, cancel := context.WithCancel(t.Context())
	type result struct {
		p   PreheatProgress
		err error
	}
	res := make(chan result, 1)
	go func() {
		p, err := s.nodes[0].Preheat(ctx, PreheatRequest{Images: []string{"a/b:c"}}, nil)
		res <- result{p, err}
	}()
	running := func() (r int) {
		for _, w := range ws {
			r += int(w.running.Load())
		}
		return r
	}
	waitFor(t, 20*time.Second, "every node to be warming", func() bool { return running() == n })
	cancel()
	waitFor(t, 10*time.Second, "every node's warm-up to be cancelled", func() bool { return running() == 0 })
	for i, w := range ws {
		if w.ended.Load() != 1 {
			t.Errorf("node %d: %d warm-ups ended by cancellation, want 1", i, w.ended.Load())
		}
	}
	select {
	case r := <-res:
		if !errors.Is(r.err, context.Canceled) || r.p.Done != 0 {
			t.Fatalf("cancelled preheat returned %+v, %v; want context.Canceled and nothing done", r.p, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Preheat did not return after cancel")
	}
	// The slots are free again: a new preheat runs on every node.
	for _, w := range ws {
		w.block = false
	}
	waitFor(t, 10*time.Second, "every node's ask to end", func() bool {
		for _, x := range s.nodes {
			x.preheat.mu.Lock()
			r := x.preheat.running
			x.preheat.mu.Unlock()
			if r != 0 {
				return false
			}
		}
		return true
	})
	if p, err := s.nodes[5].Preheat(t.Context(), PreheatRequest{Images: []string{"a/b:c"}}, nil); err != nil || p.Done != n {
		t.Fatalf("preheat after a cancelled one: %+v, %v", p, err)
	}
}

// A node accepts preheatBurst asks at once, then preheatPerMinute a minute, and runs at most
// preheatRunning at a time.
func TestPreheatRateLimit(t *testing.T) {
	var s preheatState
	s.warm = &testWarmer{}
	now := time.Unix(1e9, 0)
	var releases []func()
	refused := 0
	for i := range preheatBurst + 5 {
		rel, status, reason := s.admit(fmt.Sprint("id", i), now)
		if status == "accepted" {
			releases = append(releases, rel)
			if len(releases) == preheatRunning {
				for _, r := range releases {
					r()
				}
				releases = nil
			}
			continue
		}
		if status != "refused" || !strings.Contains(reason, "per minute") {
			t.Fatalf("ask %d: %s %q", i, status, reason)
		}
		refused++
	}
	if refused != 5 {
		t.Fatalf("%d of %d asks refused at once, want 5 (burst %d)", refused, preheatBurst+5, preheatBurst)
	}
	now = now.Add(time.Minute / preheatPerMinute)
	rel, status, _ := s.admit("later", now)
	if status != "accepted" {
		t.Fatalf("an ask a token later: %s", status)
	}
	for _, r := range append(releases, rel) {
		r()
	}
	now = now.Add(time.Hour)
	var held []func()
	for i := range preheatRunning + 1 {
		rel, status, reason := s.admit(fmt.Sprint("run", i), now)
		if i < preheatRunning && status != "accepted" || i == preheatRunning && (status != "refused" || !strings.Contains(reason, "running")) {
			t.Fatalf("ask %d with %d running: %s %q", i, len(held), status, reason)
		}
		if rel != nil {
			held = append(held, rel)
		}
	}
	if _, status, _ := s.admit("run0", now); status != "seen" {
		t.Fatalf("an ask seen before: %s, want seen", status)
	}
}

// With Lead, the initiator asks the swarm once its own downloads have all started (not
// before, not only when done): the swarm then follows downloads already running.
func TestPreheatLeadWaitsForStarted(t *testing.T) {
	ips := loopbackIPs(6)
	first := startNode(t, testConfig(ips[0]), nil)
	nodes := []*testNode{first}
	for _, ip := range ips[1:] {
		nodes = append(nodes, startNode(t, bootstrapTo(testConfig(ip), first), nil))
	}
	for _, x := range nodes {
		waitRT(t, x, len(nodes)-1)
	}
	ws := warmSwarm(nodes, false)
	lead := ws[0]
	lead.gate, lead.entered, lead.said, lead.finish = make(chan struct{}), make(chan struct{}), make(chan struct{}), make(chan struct{})
	res := make(chan error, 1)
	var final PreheatProgress
	go func() {
		var err error
		final, err = nodes[0].Preheat(t.Context(), PreheatRequest{Images: []string{"a/b:c"}, Lead: true}, nil)
		res <- err
	}()
	<-lead.entered
	for i, w := range ws[1:] {
		if c := w.calls.Load(); c != 0 {
			t.Fatalf("node %d was asked before the leader's blobs flowed (%d calls)", i+1, c)
		}
	}
	if sent := nodes[0].preheat.sent.Load(); sent != 0 {
		t.Fatalf("the leader sent %d asks before its blobs flowed", sent)
	}
	close(lead.gate)
	<-lead.said
	// Cut-through from the root: once its downloads run (not finished), the whole swarm is
	// asked and follows them.
	waitFor(t, 10*time.Second, "every node asked while the initiator's downloads still run", func() bool {
		for _, w := range ws[1:] {
			if w.calls.Load() == 0 {
				return false
			}
		}
		return true
	})
	close(lead.finish)
	if err := <-res; err != nil || final.Done != len(nodes) {
		t.Fatalf("led preheat: %+v, %v", final, err)
	}
}

// TestPreheatSim measures the tree at sizes too big for the suite, on the mocknet:
//
//	flock /tmp/shoal-heavy.lock env SHOAL_PREHEAT_SIM_N=300,1000 go test -vet=off -count=1 -run TestPreheatSim -timeout 60m -v ./p2p/
//
// For each size: nodes reached (want all, each once), repeats dropped, the most asks one node
// sent, the tree's depth (hops), and the time until the initiator's final report (warm-ups are
// instant here: this is the protocol's own cost).
func TestPreheatSim(t *testing.T) {
	sizes := os.Getenv("SHOAL_PREHEAT_SIM_N")
	if sizes == "" {
		t.Skip("set SHOAL_PREHEAT_SIM_N=300,1000 to run the preheat tree at scale (TestPreheatReachesEveryNodeOnce runs 100 nodes in the suite)")
	}
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			s := newSimSwarm(t, simMock, uint64(n))
			t0 := time.Now()
			s.grow(n)
			grown := time.Since(t0)
			settled := s.settle(3*time.Second, 120*time.Second)
			ws := warmSwarm(s.nodes, false)
			for i := range 3 {
				before := make([]int64, n)
				sentBefore := make([]int64, n)
				for j, w := range ws {
					before[j] = w.calls.Load()
					sentBefore[j] = s.nodes[j].preheat.sent.Load()
				}
				start := time.Now()
				p, err := s.nodes[i*n/3].Preheat(t.Context(), PreheatRequest{Images: []string{"a/b:c"}}, nil)
				took := time.Since(start)
				if err != nil {
					t.Fatal(err)
				}
				once, never, more := 0, 0, 0
				for j, w := range ws {
					switch w.calls.Load() - before[j] {
					case 0:
						never++
					case 1:
						once++
					default:
						more++
					}
				}
				maxSent, dropped := 0, 0
				for j, x := range s.nodes {
					maxSent = max(maxSent, int(x.preheat.sent.Load()-sentBefore[j]))
					_, d := x.preheatCounts()
					dropped += d
				}
				t.Logf("N=%d (grown %v, settled %v) run %d: reached %d, warmed once %d, never %d, more than once %d, unreached subtrees %d, repeats dropped %d, max asks sent by a node %d, final report after %v",
					n, grown.Round(time.Second), settled.Round(time.Second), i+1, p.Reached, once, never, more, p.Unreached, dropped, maxSent, took.Round(time.Millisecond))
				if once != n {
					t.Errorf("%d of %d nodes warmed exactly once", once, n)
				}
			}
		})
	}
}
