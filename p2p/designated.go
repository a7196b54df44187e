package p2p

import (
	"slices"

	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"
)

// Designated returns the peer that should fetch d from the upstream for the whole swarm when
// nobody has it yet: the node closest to d's DHT key in XOR space among this node and the
// peers of its routing table (banned peers excluded). On a LAN every node's table holds the
// same live peers, so all of them agree without talking; it is also the node that stores d's
// provider records. self is true when this node is the designated one.
func (n *Node) Designated(d digest.Digest) (p Peer, self bool, err error) {
	return n.designated(d, false)
}

// DesignatedAmongConnected is Designated among the peers this node is connected to now, except
// the given peer IDs. After the designated fetcher died, every node that followed it sees its
// connections close and agrees on the next one (the routing table may keep a dead peer for a
// while, and a node may notice the closed connection a moment late: the caller excepts the
// peer whose stream broke).
func (n *Node) DesignatedAmongConnected(d digest.Digest, except ...string) (p Peer, self bool, err error) {
	return n.designated(d, true, except...)
}

func (n *Node) designated(d digest.Digest, connectedOnly bool, except ...string) (p Peer, self bool, err error) {
	key, err := digestKey(d)
	if err != nil {
		return Peer{}, false, err
	}
	k := string(key.Hash())
	best := n.host.ID()
	for _, id := range n.dht.RoutingTable().NearestPeers(kb.ConvertKey(k), 8+len(except)) {
		if n.peers.isBanned(id) || slices.Contains(except, id.String()) ||
			connectedOnly && n.host.Network().Connectedness(id) != network.Connected {
			continue
		}
		if kb.Closer(id, best, k) {
			best = id
		}
		break // NearestPeers is sorted: the first one left is the table's closest
	}
	if best == n.host.ID() {
		return Peer{ID: best.String()}, true, nil
	}
	return Peer{ID: best.String(), Addrs: n.addrsOf(best)}, false, nil
}

func (n *Node) addrsOf(id peer.ID) []string {
	var out []string
	for _, a := range n.host.Peerstore().Addrs(id) {
		out = append(out, a.String())
	}
	return out
}
