package p2p

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Cluster preheat: one node asks the whole swarm (or a part of it) to warm images, without
// dialling every node. The ask travels down a tree over the DHT's key space (the broadcast of
// El-Ansary et al., "Efficient Broadcast in Structured P2P Networks", 2003, on Kademlia's
// buckets): a node that receives an ask at depth d is responsible for every node whose DHT key
// shares its first d bits. For each deeper bit position i ≥ d it hands the sibling subtree
// (keys sharing its first i bits and differing at bit i) to one peer it knows there, at depth
// i+1, and warms the images itself. A Kademlia routing table holds up to 20 peers of every such
// subtree that is not empty, so every node is asked exactly once and no node sends more than
// about log2(N) asks. Reports (nodes reached, done, failed, bytes) flow back up the same
// streams, summed at each level. See docs/preheat.md.
const (
	preheatProtocol = protocol.ID("/shoal/preheat/1.0.0")

	// preheatMaxLine bounds one line of the protocol (asks; reports carry up to
	// PreheatMaxNodes hashes of a census).
	preheatMaxLine = 1 << 20
	// preheatMaxHops bounds the tree's depth: the depth of an ask grows by at least one bit per
	// hop, and a swarm of a million nodes is about 20 bits deep.
	preheatMaxHops = 48
	// preheatMaxImages bounds the images of one ask.
	preheatMaxImages = 32
	// preheatPerMinute and preheatBurst: the asks a node accepts (token bucket); more are
	// refused "busy" and the asker tries another peer of the subtree.
	preheatPerMinute = 30
	preheatBurst     = 10
	// preheatRunning bounds the asks a node runs at once (each warms and forwards).
	preheatRunning = 4
	// preheatTries is how many peers of one subtree are asked before it counts as unreached.
	preheatTries = 3
	// preheatSeenTTL is how long a node remembers an ask's ID to drop it when it comes again.
	preheatSeenTTL = 30 * time.Minute
	preheatSeenMax = 4096
	// preheatReportEvery spaces out progress reports up the tree; preheatKeepalive is the
	// longest a node stays silent (it repeats its last report), and an asker that hears
	// nothing from a child for preheatSilence gives up on it (a frozen or cut-off node).
	preheatReportEvery = 250 * time.Millisecond
	preheatKeepalive   = 5 * time.Second
	preheatSilence     = 30 * time.Second
	// preheatLeadMax bounds how long a node that leads its subtree (Lead) waits for its own
	// warm-up to have every blob flowing before it asks the next nodes anyway.
	preheatLeadMax = 10 * time.Second
	// preheatAnswer bounds the wait for a child's first answer (accepted/refused).
	preheatAnswer = 5 * time.Second
	// PreheatMaxTimeout bounds the time an ask may run on any node.
	PreheatMaxTimeout = 6 * time.Hour
	// PreheatMaxNodes bounds --nodes (a census carries that many hashes).
	PreheatMaxNodes = 20000
)

// ErrPreheatOff means this node cannot warm images (no Preheater set).
var ErrPreheatOff = errors.New("p2p: preheat is not available on this node")

// Preheater warms this node's cache with images; progress reports bytes newly fetched, and
// started (called at most once, from any goroutine) says every blob is in flight here or done,
// so that peers asking for them find this node a provider.
type Preheater interface {
	Preheat(ctx context.Context, images []string, platform string, progress func(bytes int64), started func()) error
}

// SetPreheater sets what runs the asks this node accepts. Without one it refuses them.
func (n *Node) SetPreheater(p Preheater) {
	n.preheat.mu.Lock()
	n.preheat.warm = p
	n.preheat.mu.Unlock()
}

// PreheatRequest is a cluster preheat as the initiator asks it.
type PreheatRequest struct {
	Images   []string
	Platform string
	// Nodes > 0 warms only that many nodes (chosen by a hash of the ask and the peer ID, after
	// a census of the swarm); Fraction in (0, 1) warms about that share. Both 0: every node.
	Nodes    int
	Fraction float64
	// Timeout bounds the whole preheat on every node (0: PreheatMaxTimeout).
	Timeout time.Duration
	// Lead: a node that warms (the initiator included) asks its subtree once its own downloads
	// have all started (Preheater's started), or after preheatLeadMax. The swarm then follows
	// content already there or downloads already running, level by level, instead of all nodes
	// missing at the same instant.
	Lead bool
}

// PreheatProgress is the state of a preheat, summed over a subtree (the whole swarm at the
// initiator).
type PreheatProgress struct {
	// Reached is the nodes that accepted the ask; Selected those of them asked to warm.
	Reached  int `json:"reached"`
	Selected int `json:"selected"`
	// Done and Failed count selected nodes that finished warming, or failed to.
	Done   int `json:"done"`
	Failed int `json:"failed"`
	// Unreached counts subtrees whose peers all refused the ask or could not be reached (the
	// nodes in them are unknown, so this counts subtrees, not nodes).
	Unreached int `json:"unreached"`
	// Bytes is what the nodes fetched into their stores so far.
	Bytes int64 `json:"bytes"`
	// Total is the census' count of nodes (0 without a census).
	Total int `json:"total,omitempty"`
	// Errors holds a few failures, "peer ID: message".
	Errors []string `json:"errors,omitempty"`
	Final  bool     `json:"final,omitempty"`
	// Hashes are, in a census, the smallest selection hashes of the subtree.
	Hashes []uint64 `json:"hashes,omitempty"`
}

// preheatMaxErrors bounds the errors a report carries.
const preheatMaxErrors = 8

func (p *PreheatProgress) add(c PreheatProgress) {
	p.Reached += c.Reached
	p.Selected += c.Selected
	p.Done += c.Done
	p.Failed += c.Failed
	p.Unreached += c.Unreached
	p.Bytes += c.Bytes
	for _, e := range c.Errors {
		if len(p.Errors) < preheatMaxErrors {
			p.Errors = append(p.Errors, e)
		}
	}
}

// preheatAsk is what travels down the tree, one JSON line.
type preheatAsk struct {
	ID       string   `json:"id"` // 32 hex digits, random per preheat
	Images   []string `json:"images"`
	Platform string   `json:"platform,omitempty"`
	// Depth: the receiver is responsible for the nodes whose key shares its first Depth bits.
	Depth int `json:"depth"`
	// Hops left; an ask with none is refused.
	Hops      int   `json:"hops"`
	TimeoutMS int64 `json:"timeout_ms"`
	// Select: a node warms when selectHash(ID, its peer ID) ≤ Select.
	Select uint64 `json:"select"`
	// Census > 0: nobody warms; each subtree reports the Census smallest selection hashes
	// under WarmID, the ID of the warm ask that will follow.
	Census int    `json:"census,omitempty"`
	WarmID string `json:"warm_id,omitempty"`
	// Lead: see PreheatRequest.Lead.
	Lead bool `json:"lead,omitempty"`
}

func (a preheatAsk) validate() error {
	switch {
	case len(a.ID) != 32 || !isHex(a.ID):
		return errors.New("bad id")
	case len(a.Images) == 0 && a.Census == 0, len(a.Images) > preheatMaxImages:
		return fmt.Errorf("%d images", len(a.Images))
	case a.Depth < 0 || a.Depth > 256:
		return fmt.Errorf("depth %d", a.Depth)
	case a.Hops <= 0 || a.Hops > preheatMaxHops:
		return fmt.Errorf("hops %d", a.Hops)
	case a.TimeoutMS <= 0 || a.TimeoutMS > PreheatMaxTimeout.Milliseconds():
		return fmt.Errorf("timeout %d ms", a.TimeoutMS)
	case a.Census < 0 || a.Census > PreheatMaxNodes:
		return fmt.Errorf("census %d", a.Census)
	case a.Census > 0 && (len(a.WarmID) != 32 || !isHex(a.WarmID)):
		return errors.New("bad warm id")
	}
	for _, im := range a.Images {
		if len(im) == 0 || len(im) > 512 {
			return errors.New("bad image name")
		}
	}
	return nil
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// preheatAnswerLine is a child's first line.
type preheatAnswerLine struct {
	Status string `json:"status"` // accepted, seen, refused
	Reason string `json:"reason,omitempty"`
}

// preheatState is a node's side of the protocol: asks seen, the rate limit, the warmer.
type preheatState struct {
	mu      sync.Mutex
	warm    Preheater
	seen    map[string]time.Time // ask ID → when it expires
	tokens  float64
	last    time.Time
	running int
	// handled and dropped count asks accepted and asks dropped as seen before; sent the asks
	// this node sent (tests, diagnostics).
	handled, dropped int
	sent             atomic.Int64
}

// admit records id and takes a token and a slot; it says why not when it cannot.
func (s *preheatState) admit(id string, now time.Time) (release func(), status, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]time.Time{}
		s.tokens, s.last = preheatBurst, now
	}
	if exp, ok := s.seen[id]; ok && now.Before(exp) {
		s.dropped++
		return nil, "seen", "this node already has this preheat"
	}
	if s.warm == nil {
		return nil, "refused", ErrPreheatOff.Error()
	}
	s.tokens = min(preheatBurst, s.tokens+now.Sub(s.last).Minutes()*preheatPerMinute)
	s.last = now
	if s.tokens < 1 {
		return nil, "refused", fmt.Sprintf("busy: more than %d preheat asks per minute", preheatPerMinute)
	}
	if s.running >= preheatRunning {
		return nil, "refused", fmt.Sprintf("busy: %d preheats running", s.running)
	}
	if len(s.seen) >= preheatSeenMax {
		for k, exp := range s.seen {
			if !now.Before(exp) {
				delete(s.seen, k)
			}
		}
		if len(s.seen) >= preheatSeenMax {
			return nil, "refused", "busy: too many preheats remembered"
		}
	}
	s.tokens--
	s.running++
	s.handled++
	s.seen[id] = now.Add(preheatSeenTTL)
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.running--
			s.mu.Unlock()
		})
	}, "accepted", ""
}

// selectHash places a node in a preheat's selection: the first 8 bytes of
// sha256(ask ID | peer ID), uniform over the swarm and independent of the DHT key.
func selectHash(id string, p peer.ID) uint64 {
	h := sha256.Sum256([]byte(id + "|" + string(p)))
	return binary.BigEndian.Uint64(h[:8])
}

// Preheat asks the swarm to warm req.Images, this node included, and reports the summed
// progress to fn (from one goroutine at a time) until every node reached has finished. It
// returns the final progress; cancelling ctx cancels the preheat on every node.
func (n *Node) Preheat(ctx context.Context, req PreheatRequest, fn func(PreheatProgress)) (PreheatProgress, error) {
	if len(req.Images) == 0 || len(req.Images) > preheatMaxImages {
		return PreheatProgress{}, fmt.Errorf("p2p: preheat: name 1 to %d images", preheatMaxImages)
	}
	if req.Nodes < 0 || req.Nodes > PreheatMaxNodes {
		return PreheatProgress{}, fmt.Errorf("p2p: preheat: nodes must be 0 to %d", PreheatMaxNodes)
	}
	if req.Fraction < 0 || req.Fraction > 1 || math.IsNaN(req.Fraction) {
		return PreheatProgress{}, errors.New("p2p: preheat: fraction must be in (0, 1]")
	}
	timeout := req.Timeout
	if timeout <= 0 || timeout > PreheatMaxTimeout {
		timeout = PreheatMaxTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if fn == nil {
		fn = func(PreheatProgress) {}
	}
	ask := preheatAsk{ID: newPreheatID(), Images: req.Images, Platform: req.Platform, Hops: preheatMaxHops,
		TimeoutMS: timeout.Milliseconds(), Select: math.MaxUint64, Lead: req.Lead}
	total := 0
	switch {
	case req.Nodes > 0:
		// A census first: how many nodes there are, and the req.Nodes smallest selection
		// hashes under the warm ask's ID; the largest of those selects exactly req.Nodes.
		census := preheatAsk{ID: newPreheatID(), Hops: preheatMaxHops, TimeoutMS: ask.TimeoutMS,
			Census: req.Nodes, WarmID: ask.ID}
		c, err := n.runOwn(ctx, census, func(PreheatProgress) {})
		if err != nil {
			return c, err
		}
		total = c.Reached
		if c.Reached > req.Nodes && len(c.Hashes) >= req.Nodes {
			ask.Select = c.Hashes[req.Nodes-1]
		}
	case req.Fraction > 0 && req.Fraction < 1:
		ask.Select = uint64(req.Fraction * math.MaxUint64)
	}
	withTotal := func(p PreheatProgress) PreheatProgress {
		p.Total = total
		return p
	}
	p, err := n.runOwn(ctx, ask, func(p PreheatProgress) { fn(withTotal(p)) })
	return withTotal(p), err
}

// runOwn runs an ask this node starts: admitted like a peer's (so that it comes back as
// "seen", and counts against the same limits), at depth 0.
func (n *Node) runOwn(ctx context.Context, ask preheatAsk, report func(PreheatProgress)) (PreheatProgress, error) {
	release, status, reason := n.preheat.admit(ask.ID, time.Now())
	if status != "accepted" {
		return PreheatProgress{}, fmt.Errorf("p2p: preheat refused on this node: %s", reason)
	}
	defer release()
	return n.runAsk(ctx, ask, report)
}

func newPreheatID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// runAsk handles an ask on this node (the root of its subtree, or of the whole tree at the
// initiator): it forwards to one peer per sibling subtree, warms when selected, and reports
// the summed progress to report until all is done.
func (n *Node) runAsk(ctx context.Context, ask preheatAsk, report func(PreheatProgress)) (PreheatProgress, error) {
	if err := ask.validate(); err != nil {
		return PreheatProgress{}, fmt.Errorf("p2p: preheat: %w", err)
	}
	self := n.host.ID()
	var (
		mu      sync.Mutex
		own     PreheatProgress
		kids    = map[int]PreheatProgress{}
		changed = make(chan struct{}, 1)
	)
	touch := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	sum := func() PreheatProgress {
		mu.Lock()
		defer mu.Unlock()
		s := own
		s.Errors = slices.Clone(own.Errors)
		var hashes []uint64
		hashes = append(hashes, own.Hashes...)
		for _, k := range slices.Sorted(mapsKeys(kids)) {
			s.add(kids[k])
			hashes = append(hashes, kids[k].Hashes...)
		}
		if ask.Census > 0 {
			slices.Sort(hashes)
			s.Hashes = hashes[:min(len(hashes), ask.Census)]
		}
		return s
	}
	own.Reached = 1

	selected := ask.Census == 0 && selectHash(ask.ID, self) <= ask.Select
	// forward opens when this node may ask its subtree: at once, or (Lead) once its own
	// warm-up has every blob flowing, ended, or preheatLeadMax passed.
	forward := make(chan struct{})
	var openOnce sync.Once
	open := func() { openOnce.Do(func() { close(forward) }) }
	// Every node, the initiator included, asks on as soon as its own downloads run
	// (cut-through): a node below that misses a blob finds this one's download in flight
	// (advertised at the spool's start) and follows it instead of going upstream.
	if !ask.Lead || !selected {
		open()
	} else {
		t := time.AfterFunc(preheatLeadMax, open)
		defer t.Stop()
	}
	started := open

	var wg sync.WaitGroup
	groups := n.preheatSubtrees(self, ask.Depth)
	for i, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-forward:
			case <-ctx.Done():
			}
			child := ask
			child.Depth, child.Hops = g.depth+1, ask.Hops-1
			child.TimeoutMS = max(1, time.Until(deadlineOf(ctx)).Milliseconds())
			err := n.askSubtree(ctx, child, g.peers, func(p PreheatProgress) {
				mu.Lock()
				kids[i] = p
				mu.Unlock()
				touch()
			})
			if err != nil {
				mu.Lock()
				k := kids[i]
				k.Unreached++
				if len(k.Errors) < preheatMaxErrors {
					k.Errors = append(k.Errors, err.Error())
				}
				k.Final = true
				kids[i] = k
				mu.Unlock()
				touch()
			}
		}()
	}

	switch {
	case ask.Census > 0:
		own.Hashes = []uint64{selectHash(ask.WarmID, self)}
	case selected:
		own.Selected = 1
		n.preheat.mu.Lock()
		warm := n.preheat.warm
		n.preheat.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer open()
			var err error
			if warm == nil {
				err = ErrPreheatOff
			} else {
				err = warm.Preheat(ctx, ask.Images, ask.Platform, func(b int64) {
					mu.Lock()
					own.Bytes += b
					mu.Unlock()
					touch()
				}, started)
			}
			mu.Lock()
			if err != nil {
				own.Failed = 1
				own.Errors = append(own.Errors, fmt.Sprintf("%s: %v", self, err))
			} else {
				own.Done = 1
			}
			mu.Unlock()
			touch()
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	tick := time.NewTicker(preheatReportEvery)
	defer tick.Stop()
	report(sum())
	dirty := false
	lastReport := time.Now()
	for {
		select {
		case <-finished:
			p := sum()
			p.Final = true
			report(p)
			if ctx.Err() != nil {
				return p, fmt.Errorf("p2p: preheat: %w", context.Cause(ctx))
			}
			return p, nil
		case <-changed:
			dirty = true
		case <-tick.C:
			if dirty || time.Since(lastReport) >= preheatKeepalive {
				dirty, lastReport = false, time.Now()
				report(sum())
			}
		}
	}
}

func mapsKeys[V any](m map[int]V) func(func(int) bool) {
	return func(yield func(int) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func deadlineOf(ctx context.Context) time.Time {
	if dl, ok := ctx.Deadline(); ok {
		return dl
	}
	return time.Now().Add(PreheatMaxTimeout)
}

// subtree is a sibling subtree of this node at one bit position: the peers it knows whose key
// shares exactly depth bits with its own.
type subtree struct {
	depth int
	peers []peer.ID
}

// preheatSubtrees groups the peers this node knows (routing table and connections) by the
// length of the key prefix they share with it, from depth on: one group per sibling subtree
// this node is responsible for. Peers of a group are ordered connected first, then at random.
func (n *Node) preheatSubtrees(self peer.ID, depth int) []subtree {
	selfKey := kb.ConvertPeerID(self)
	known := map[peer.ID]bool{}
	for _, p := range n.dht.RoutingTable().ListPeers() {
		known[p] = true
	}
	for _, p := range n.host.Network().Peers() {
		known[p] = true
	}
	byDepth := map[int][]peer.ID{}
	for p := range known {
		if p == self || n.peers.isBanned(p) {
			continue
		}
		cpl := kb.CommonPrefixLen(selfKey, kb.ConvertPeerID(p))
		if cpl < depth {
			continue // outside this node's range
		}
		byDepth[cpl] = append(byDepth[cpl], p)
	}
	out := make([]subtree, 0, len(byDepth))
	for d, ps := range byDepth {
		mrand.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
		slices.SortStableFunc(ps, func(a, b peer.ID) int {
			ca := n.host.Network().Connectedness(a) == network.Connected
			cb := n.host.Network().Connectedness(b) == network.Connected
			switch {
			case ca && !cb:
				return -1
			case cb && !ca:
				return 1
			}
			return 0
		})
		out = append(out, subtree{depth: d, peers: ps})
	}
	slices.SortFunc(out, func(a, b subtree) int { return a.depth - b.depth })
	return out
}

// askSubtree hands ask to one peer of the subtree: it tries up to preheatTries of them until
// one accepts, then relays its reports to fn until its final one. An error means nobody of the
// subtree took the ask (or the accepting peer's stream broke).
func (n *Node) askSubtree(ctx context.Context, ask preheatAsk, peers []peer.ID, fn func(PreheatProgress)) error {
	var errs []error
	for i, p := range peers {
		if i == preheatTries || ctx.Err() != nil {
			break
		}
		accepted, err := n.askPeer(ctx, p, ask, fn)
		if accepted {
			return err
		}
		errs = append(errs, fmt.Errorf("%s: %w", p, err))
		if errors.Is(err, errPreheatSeen) {
			break // the subtree has the ask already: another path reached it
		}
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return fmt.Errorf("subtree at depth %d (%d peers known): %w", ask.Depth-1, len(peers), errors.Join(errs...))
}

var errPreheatSeen = errors.New("already has this preheat (loop dropped)")

// askPeer sends ask to p and relays its reports; accepted says whether p took it.
func (n *Node) askPeer(ctx context.Context, p peer.ID, ask preheatAsk, fn func(PreheatProgress)) (accepted bool, err error) {
	defer n.holdConn(p)()
	n.preheat.sent.Add(1)
	actx, cancel := context.WithTimeout(ctx, preheatAnswer)
	s, err := n.host.NewStream(actx, p, preheatProtocol)
	if err != nil {
		cancel()
		return false, err
	}
	// Cancelling the preheat resets the stream: the child sees it and cancels its subtree.
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })
	defer stop()
	line, _ := json.Marshal(ask)
	_ = s.SetDeadline(time.Now().Add(preheatAnswer))
	if _, err := s.Write(append(line, '\n')); err != nil {
		cancel()
		s.Reset()
		return false, err
	}
	br := bufio.NewReaderSize(s, 4096)
	first, err := readLine(br, preheatMaxLine)
	cancel()
	if err != nil {
		s.Reset()
		return false, fmt.Errorf("no answer: %w", err)
	}
	var a preheatAnswerLine
	if err := json.Unmarshal(first, &a); err != nil {
		s.Reset()
		return false, fmt.Errorf("bad answer: %w", err)
	}
	switch a.Status {
	case "accepted":
	case "seen":
		s.Close()
		return false, errPreheatSeen
	default:
		s.Close()
		return false, fmt.Errorf("refused: %s", a.Reason)
	}
	_ = s.SetDeadline(time.Time{})
	for {
		// A live child reports at least every preheatKeepalive, whatever its warm-up does.
		_ = s.SetReadDeadline(time.Now().Add(preheatSilence))
		line, err := readLine(br, preheatMaxLine)
		if err != nil {
			s.Reset()
			if ctx.Err() != nil {
				return true, context.Cause(ctx)
			}
			return true, fmt.Errorf("%s: report stream broke: %w", p, err)
		}
		var pr PreheatProgress
		if err := json.Unmarshal(line, &pr); err != nil {
			s.Reset()
			return true, fmt.Errorf("%s: bad report: %w", p, err)
		}
		if len(pr.Hashes) > ask.Census {
			pr.Hashes = pr.Hashes[:ask.Census]
		}
		fn(pr)
		if pr.Final {
			s.Close()
			return true, nil
		}
	}
}

// servePreheat answers one ask from a peer.
func (n *Node) servePreheat(life context.Context, s network.Stream) {
	from := s.Conn().RemotePeer()
	defer n.holdConn(from)()
	_ = s.SetDeadline(time.Now().Add(preheatAnswer))
	br := bufio.NewReaderSize(s, 4096)
	line, err := readLine(br, preheatMaxLine)
	if err != nil {
		s.Reset()
		return
	}
	var ask preheatAsk
	answer := func(a preheatAnswerLine) bool {
		b, _ := json.Marshal(a)
		_, err := s.Write(append(b, '\n'))
		return err == nil
	}
	if err := json.Unmarshal(line, &ask); err != nil {
		answer(preheatAnswerLine{Status: "refused", Reason: "bad request"})
		s.Close()
		return
	}
	if err := ask.validate(); err != nil {
		answer(preheatAnswerLine{Status: "refused", Reason: "bad request: " + err.Error()})
		s.Close()
		return
	}
	self := kb.ConvertPeerID(n.host.ID())
	if kb.CommonPrefixLen(self, kb.ConvertPeerID(from)) != ask.Depth-1 {
		// The asker hands down a sibling subtree of its own: this node's key differs from
		// the asker's exactly at bit Depth-1. Anything else is not the tree.
		answer(preheatAnswerLine{Status: "refused", Reason: "bad request: depth does not match the asker's key"})
		s.Close()
		return
	}
	release, status, reason := n.preheat.admit(ask.ID, time.Now())
	if status != "accepted" {
		if status == "seen" {
			n.log.Debug("preheat ask seen before: dropped", "id", ask.ID, "from", from.String())
		} else {
			n.log.Info("preheat ask refused", "id", ask.ID, "from", from.String(), "reason", reason)
		}
		answer(preheatAnswerLine{Status: status, Reason: reason})
		s.Close()
		return
	}
	defer release()
	if !answer(preheatAnswerLine{Status: "accepted"}) {
		s.Reset()
		return
	}
	_ = s.SetDeadline(time.Time{})
	ctx, cancel := context.WithTimeout(life, time.Duration(ask.TimeoutMS)*time.Millisecond)
	defer cancel()
	// The asker never writes again: a read that returns means it closed or reset the stream
	// (cancelled, or gone), and so is this node's part.
	go func() {
		var b [1]byte
		_, _ = s.Read(b[:])
		cancel()
	}()
	if ask.Census == 0 {
		n.log.Info("preheat ask accepted", "id", ask.ID, "from", from.String(), "images", ask.Images, "depth", ask.Depth)
	}
	var werr error
	_, err = n.runAsk(ctx, ask, func(p PreheatProgress) {
		if werr != nil {
			return
		}
		b, _ := json.Marshal(p)
		_ = s.SetWriteDeadline(time.Now().Add(preheatAnswer))
		_, werr = s.Write(append(b, '\n'))
	})
	if werr != nil || err != nil {
		s.Reset()
		return
	}
	s.Close()
}
