package p2p

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	dhtpb "github.com/libp2p/go-libp2p-kad-dht/pb"
	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio/pbio"
	"github.com/opencontainers/go-digest"
)

// How a node finds the designated fetcher of a digest.
//
// The designated fetcher is the live node closest to the digest's DHT key in XOR space, the
// asking node included. A node whose routing table holds fewer than designateLocalMax peers
// knows the whole swarm (a Kademlia table refuses a peer only into a full bucket of 20) and
// decides locally, without a message. In a larger swarm a routing table holds ~20 peers per
// bucket, so "the closest in my table" is rarely the true closest (measured: 9 different
// answers per digest at N = 100, 0% of digests with one answer): the node then walks
// towards the key, one FIND_NODE at a time, each time asking the closest live peer it knows
// for closer ones, until the closest it knows has answered and named nobody closer. In a
// Kademlia swarm a node holds every peer of its own neighbourhood, so every walk ends on the
// same node. A peer that does not answer two requests (designateRPCTimeout, then twice that)
// is skipped as down (so
// a dead, frozen or banned designated node hands its role to the next closest, for every
// asker alike). Answers are cached per digest for designateCacheTTL.
const (
	// designateLocalMax: a routing table smaller than a k-bucket is the whole swarm.
	designateLocalMax = 20
	// designateRPCTimeout bounds one FIND_NODE of the walk; a peer that lets it and a
	// second one of twice this pass is treated as down.
	designateRPCTimeout = 250 * time.Millisecond
	// designateMaxSteps bounds the FIND_NODEs of one walk (2-4 at N = 1,000).
	designateMaxSteps = 16
	// designateCacheTTL is how long a walk's answer is reused for the same digest.
	designateCacheTTL = 30 * time.Second
	// designateCacheMax bounds the cache; it is emptied when full.
	designateCacheMax = 4096
)

// Designated returns the peer that should fetch d from the upstream for the whole swarm when
// nobody has it yet: the live node closest to d's DHT key in XOR space, this node included
// (banned peers excluded). It is also the node that stores d's provider records. self is true
// when this node is the designated one. In a swarm larger than a k-bucket it costs a short
// walk (a few FIND_NODE round trips), cached per digest for a while.
func (n *Node) Designated(ctx context.Context, d digest.Digest) (p Peer, self bool, err error) {
	des, err := n.Designate(ctx, d)
	return des.Peer, des.Self, err
}

// Designation is Designate's answer.
type Designation struct {
	Peer Peer
	Self bool // this node is the designated one
	// Passed lists the peers closer to the key than Peer that did not answer the walk in
	// time. They may be down (then every node passes them over alike) or only busy (then
	// nodes that heard them in time name them instead): the answer is less sure.
	Passed []string
}

// Designate is Designated, saying also which closer peers the walk passed over.
func (n *Node) Designate(ctx context.Context, d digest.Digest) (Designation, error) {
	key, err := digestKey(d)
	if err != nil {
		return Designation{}, err
	}
	k := string(key.Hash())
	if n.dht.RoutingTable().Size() < designateLocalMax {
		p, self, err := n.designatedLocal(k, false)
		return Designation{Peer: p, Self: self}, err
	}
	if e, ok := n.designate.get(k); ok && !n.peers.isBanned(e.id) {
		return Designation{Peer: n.peerResult(e.id), Self: e.id == n.host.ID(), Passed: e.passed}, nil
	}
	id, passed, err := n.walkToKey(ctx, k, nil)
	if err != nil {
		return Designation{}, err
	}
	var ps []string
	for _, p := range passed {
		ps = append(ps, p.String())
	}
	if len(ps) > 0 {
		n.log.Info("designated fetcher walk passed over closer peers that did not answer", "digest", d, "designated", id.String(), "passed", ps)
	}
	n.designate.put(k, designateEntry{id: id, passed: ps})
	return Designation{Peer: n.peerResult(id), Self: id == n.host.ID(), Passed: ps}, nil
}

// DesignatedAmongConnected is Designated among the peers that are up now, except the given
// peer IDs. After the designated fetcher died, every node that followed it agrees on the next
// one. In a small swarm that is the closest among the peers this node is connected to (the
// routing table may keep a dead peer for a while, and a node may notice the closed connection
// a moment late: the caller excepts the peer whose stream broke); in a large one a fresh walk
// that skips the excepted peers and those that no longer answer.
func (n *Node) DesignatedAmongConnected(ctx context.Context, d digest.Digest, except ...string) (p Peer, self bool, err error) {
	key, err := digestKey(d)
	if err != nil {
		return Peer{}, false, err
	}
	k := string(key.Hash())
	if n.dht.RoutingTable().Size() < designateLocalMax {
		return n.designatedLocal(k, true, except...)
	}
	id, _, err := n.walkToKey(ctx, k, except)
	if err != nil {
		return Peer{}, false, err
	}
	return n.peerResult(id), id == n.host.ID(), nil
}

func (n *Node) peerResult(id peer.ID) Peer {
	if id == n.host.ID() {
		return Peer{ID: id.String()}
	}
	return Peer{ID: id.String(), Addrs: n.addrsOf(id)}
}

// designatedLocal is the closest to k among this node and its routing table.
func (n *Node) designatedLocal(k string, connectedOnly bool, except ...string) (p Peer, self bool, err error) {
	best := n.host.ID()
	for _, id := range n.dht.RoutingTable().NearestPeers(kb.ConvertKey(k), designateLocalMax) {
		if n.peers.isBanned(id) || slices.Contains(except, id.String()) ||
			connectedOnly && n.host.Network().Connectedness(id) != network.Connected {
			continue
		}
		if kb.Closer(id, best, k) {
			best = id
		}
		break // NearestPeers is sorted: the first one left is the table's closest
	}
	return n.peerResult(best), best == n.host.ID(), nil
}

// walkToKey finds the live node closest to k: it asks the closest peer it knows (routing
// table, then what the answers named) for peers closer to k, until the closest one not found
// down has answered. This node is compared too (a peer never names the asker). passed lists
// the peers found down that are closer to k than the answer.
func (n *Node) walkToKey(ctx context.Context, k string, except []string) (id peer.ID, passed []peer.ID, err error) {
	id, err = n.walk(ctx, k, except, func(p peer.ID) { passed = append(passed, p) })
	var closer []peer.ID
	for _, p := range passed {
		if err == nil && kb.Closer(p, id, k) {
			closer = append(closer, p)
		}
	}
	return id, closer, err
}

func (n *Node) walk(ctx context.Context, k string, except []string, downSeen func(peer.ID)) (peer.ID, error) {
	self := n.host.ID()
	target := kb.ConvertKey(k)
	skip := func(id peer.ID) bool {
		return id == self || n.peers.isBanned(id) || slices.Contains(except, id.String())
	}
	var (
		known   []peer.ID // candidates, closest first
		seen    = map[peer.ID]bool{}
		queried = map[peer.ID]bool{}
		down    = map[peer.ID]bool{}
	)
	add := func(ids ...peer.ID) {
		for _, id := range ids {
			if !seen[id] && !skip(id) {
				seen[id] = true
				known = append(known, id)
			}
		}
		known = kb.SortClosestPeers(known, target)
	}
	add(n.dht.RoutingTable().NearestPeers(target, designateLocalMax)...)
	for step := 0; ; step++ {
		// The closest candidate not found down: the answer once it has answered.
		var next peer.ID
		for _, id := range known {
			if !down[id] {
				next = id
				break
			}
		}
		if next == "" || kb.Closer(self, next, k) {
			// Nobody closer than this node answers (or nobody at all: every peer
			// down): this node is the closest live one.
			return self, nil
		}
		if queried[next] {
			return next, nil
		}
		if step == designateMaxSteps {
			return "", fmt.Errorf("p2p: designated fetcher: walk towards %x did not settle in %d steps", []byte(k)[:4], step)
		}
		closer, err := n.findNode(ctx, next, k)
		if err != nil {
			if ctx.Err() != nil {
				return "", fmt.Errorf("p2p: designated fetcher: %w", ctx.Err())
			}
			n.log.Debug("designated fetcher walk: peer did not answer", "peer", next.String(), "err", err)
			down[next] = true
			downSeen(next)
			continue
		}
		queried[next] = true
		add(closer...)
	}
}

// findNode asks p for the peers it knows closest to k (kad-dht's FIND_NODE) and remembers
// their addresses briefly so that the walk can dial them.
// A peer that lets the first request time out gets a second, twice as long, before the walk
// counts it as down: a busy node must not lose its role to a one-off slow answer (every asker
// that skipped it would name another fetcher), while a frozen one costs 3 × designateRPCTimeout.
func (n *Node) findNode(ctx context.Context, p peer.ID, k string) ([]peer.ID, error) {
	var (
		infos []*peer.AddrInfo
		err   error
	)
	for try := 1; try <= 2; try++ {
		rctx, cancel := context.WithTimeout(ctx, time.Duration(try)*designateRPCTimeout)
		infos, err = n.kadClient().GetClosestPeers(rctx, p, peer.ID(k))
		timedOut := rctx.Err() != nil
		cancel()
		if err == nil || !timedOut || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	ids := make([]peer.ID, 0, len(infos))
	for _, ai := range infos {
		if ai.ID == p || len(ai.Addrs) == 0 && len(n.host.Peerstore().Addrs(ai.ID)) == 0 {
			continue
		}
		n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
		ids = append(ids, ai.ID)
	}
	return ids, nil
}

func (n *Node) kadClient() *dhtpb.ProtocolMessenger {
	n.kadOnce.Do(func() {
		n.kad, _ = dhtpb.NewProtocolMessenger(kadSender{h: n.host}) // no option, no error
	})
	return n.kad
}

// kadProtocol is the DHT protocol shoal's nodes speak (dht.ProtocolPrefix(dhtPrefix)).
const kadProtocol = protocol.ID(dhtPrefix + "/kad/1.0.0")

// kadSender sends one kad-dht request per stream: the walk asks each peer once.
type kadSender struct{ h host.Host }

func (s kadSender) SendRequest(ctx context.Context, p peer.ID, req *dhtpb.Message) (*dhtpb.Message, error) {
	st, err := s.h.NewStream(ctx, p, kadProtocol)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = st.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	defer stop()
	if err := pbio.NewDelimitedWriter(st).WriteMsg(req); err != nil {
		st.Reset()
		return nil, err
	}
	resp := new(dhtpb.Message)
	if err := pbio.NewDelimitedReader(st, network.MessageSizeMax).ReadMsg(resp); err != nil {
		st.Reset()
		return nil, err
	}
	return resp, nil
}

func (s kadSender) SendMessage(context.Context, peer.ID, *dhtpb.Message) error {
	return errors.New("p2p: kadSender sends requests only")
}

// designateCache remembers each digest key's designated fetcher for designateCacheTTL.
type designateCache struct {
	mu sync.Mutex
	m  map[string]designateEntry
}

type designateEntry struct {
	id     peer.ID
	passed []string
	at     time.Time
}

func (c *designateCache) get(k string) (designateEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok || time.Since(e.at) > designateCacheTTL {
		return designateEntry{}, false
	}
	return e, true
}

func (c *designateCache) put(k string, e designateEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= designateCacheMax {
		c.m = map[string]designateEntry{}
	}
	e.at = time.Now()
	c.m[k] = e
}

func (n *Node) addrsOf(id peer.ID) []string {
	var out []string
	for _, a := range n.host.Peerstore().Addrs(id) {
		out = append(out, a.String())
	}
	return out
}
