package p2p

import (
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// peerTable holds what shoal remembers per peer: transfer counters, failures and bans.
// Entries are made only for peers that transferred, failed or were banned.
type peerTable struct {
	banFor time.Duration
	now    func() time.Time
	bans   atomic.Int64

	mu sync.Mutex
	m  map[peer.ID]*peerStats
}

type peerStats struct {
	bytesIn, bytesOut, failures atomic.Int64
	bannedUntil                 time.Time // guarded by peerTable.mu
}

func newPeerTable(banFor time.Duration, now func() time.Time) *peerTable {
	return &peerTable{banFor: banFor, now: now, m: map[peer.ID]*peerStats{}}
}

// get returns p's entry, creating it.
func (t *peerTable) get(p peer.ID) *peerStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[p]
	if s == nil {
		s = &peerStats{}
		t.m[p] = s
	}
	return s
}

func (t *peerTable) isBanned(p peer.ID) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[p]
	return s != nil && t.now().Before(s.bannedUntil)
}

// ban bans p for banFor from now (extending a running ban) and returns the end.
func (t *peerTable) ban(p peer.ID) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[p]
	if s == nil {
		s = &peerStats{}
		t.m[p] = s
	}
	s.bannedUntil = t.now().Add(t.banFor)
	t.bans.Add(1)
	return s.bannedUntil
}

// bannedPeers lists peers whose ban is still running.
func (t *peerTable) bannedPeers() []peer.ID {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var out []peer.ID
	for p, s := range t.m {
		if now.Before(s.bannedUntil) {
			out = append(out, p)
		}
	}
	return out
}

// snapshot copies one peer's entry (zero if unknown).
func (t *peerTable) snapshot(p peer.ID) (in, out, failures int64, bannedUntil time.Time, banned bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[p]
	if s == nil {
		return 0, 0, 0, time.Time{}, false
	}
	return s.bytesIn.Load(), s.bytesOut.Load(), s.failures.Load(), s.bannedUntil, t.now().Before(s.bannedUntil)
}

// latencyRing keeps the last lookup durations for percentiles.
type latencyRing struct {
	mu   sync.Mutex
	buf  [1024]time.Duration
	next int
	full bool
}

func (r *latencyRing) add(d time.Duration) {
	r.mu.Lock()
	r.buf[r.next] = d
	r.next++
	if r.next == len(r.buf) {
		r.next, r.full = 0, true
	}
	r.mu.Unlock()
}

// percentiles returns p50 and p99 over the window (zero when empty).
func (r *latencyRing) percentiles() (p50, p99 time.Duration) {
	r.mu.Lock()
	n := r.next
	if r.full {
		n = len(r.buf)
	}
	s := slices.Clone(r.buf[:n])
	r.mu.Unlock()
	if len(s) == 0 {
		return 0, 0
	}
	slices.Sort(s)
	return s[(len(s)-1)*50/100], s[(len(s)-1)*99/100]
}

// Ban bans a peer for BanDuration (typically: it sent bytes that failed verification):
// it is disconnected, left out of FindProviders, refused by Fetch and refused on connect.
func (n *Node) Ban(peerID string, reason string) {
	p, err := peer.Decode(peerID)
	if err != nil || p == n.host.ID() {
		n.log.Warn("not banning invalid peer ID", "peer", peerID, "reason", reason)
		return
	}
	until := n.peers.ban(p)
	n.dht.RoutingTable().RemovePeer(p)
	_ = n.host.Network().ClosePeer(p)
	n.dropDirect(p)
	n.log.Warn("peer banned", "peer", p.String(), "reason", reason, "until", until.Format(time.RFC3339))
}

// Status is a snapshot of the node for the admin API.
type Status struct {
	ID               string
	Addrs            []string
	Peers            []PeerStatus
	RoutingTableSize int
	// Provided is how many digests the node currently advertises.
	Provided            int
	Lookups, LookupHits int64
	// LookupP50 and LookupP99 are over the last 1024 lookups.
	LookupP50, LookupP99 time.Duration
	Bans                 int64
	// Redirected counts peer requests sent on to other peers at the upload limit.
	Redirected int64
	// BadRequests counts blob requests (on streams or direct connections) whose line was too
	// long, malformed, cut off or slower than the stall timeout: each closed the exchange.
	BadRequests int64
	// SwarmKey is the swarm key's fingerprint ("" without a key): equal on nodes that share it.
	SwarmKey string
	// BootstrapError says why the last bootstrap round reached no peer ("" once one did).
	BootstrapError string
	// Lone is true when the node listens for no peer (Config.Lone): no listen address was
	// given and it has no way to find peers.
	Lone bool
	// InboundHandshakeFailures counts inbound connections that closed before their secure
	// handshake completed (a node with another swarm key or none; port scans count too); the
	// last one came from LastInboundFailure at LastInboundFailureAt.
	InboundHandshakeFailures int64
	LastInboundFailure       string
	LastInboundFailureAt     time.Time
	// Direct counts the direct connections that carry blob bytes (direct.go).
	Direct DirectStatus
}

// PeerStatus describes one connected or banned peer. BytesIn/BytesOut count blob bytes
// received from and served to it.
type PeerStatus struct {
	ID                string
	Addrs             []string
	Latency           time.Duration
	BytesIn, BytesOut int64
	Failures          int64
	Banned            bool
	BannedUntil       time.Time
}

// Status reports identity, connected and banned peers, the routing table and counters.
func (n *Node) Status() Status {
	st := Status{
		ID:               n.ID(),
		Addrs:            n.Addrs(),
		RoutingTableSize: n.dht.RoutingTable().Size(),
		Provided:         n.advertisedCount(),
		Lookups:          n.lookups.Load(),
		LookupHits:       n.lookupHits.Load(),
		Bans:             n.peers.bans.Load(),
		Redirected:       n.redirects.Load(),
		BadRequests:      n.badRequests.Load(),
		SwarmKey:         n.swarmKey,
		BootstrapError:   n.BootstrapError(),
		Lone:             n.cfg.Lone(),
		Direct:           n.directStatus(),
	}
	st.LookupP50, st.LookupP99 = n.lookupLat.percentiles()
	st.InboundHandshakeFailures, st.LastInboundFailure, st.LastInboundFailureAt = n.inbound.snapshot()
	seen := map[peer.ID]bool{}
	add := func(p peer.ID) {
		if seen[p] {
			return
		}
		seen[p] = true
		ps := PeerStatus{ID: p.String(), Latency: n.host.Peerstore().LatencyEWMA(p)}
		for _, c := range n.host.Network().ConnsToPeer(p) {
			ps.Addrs = append(ps.Addrs, c.RemoteMultiaddr().String())
		}
		ps.BytesIn, ps.BytesOut, ps.Failures, ps.BannedUntil, ps.Banned = n.peers.snapshot(p)
		if !ps.Banned {
			ps.BannedUntil = time.Time{}
		}
		st.Peers = append(st.Peers, ps)
	}
	for _, p := range n.host.Network().Peers() {
		add(p)
	}
	for _, p := range n.peers.bannedPeers() {
		add(p)
	}
	sort.Slice(st.Peers, func(i, j int) bool { return st.Peers[i].ID < st.Peers[j].ID })
	return st
}
