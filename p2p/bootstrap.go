package p2p

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/sec"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

const (
	// dialTimeout bounds one bootstrap connection attempt.
	dialTimeout = 3 * time.Second
	// maintainEvery is how often the routing table is checked for emptiness.
	maintainEvery = 200 * time.Millisecond
	// maxBackoff caps the wait between bootstrap rounds while alone.
	maxBackoff = 30 * time.Second
	// refreshEvery is how often a node in the swarm looks at its bootstrap sources again: it
	// fills gaps (fewer than BootstrapSample peers in the routing table or connected) and, for
	// BootstrapDNS, probes one random address it is not connected to, which heals a cluster
	// that formed as two halves (see maintain).
	refreshEvery = time.Minute
	// bootstrapConcurrency bounds parallel dials in one round.
	bootstrapConcurrency = 8
)

// maintain keeps the node in the swarm: it bootstraps at start-up, again (with back-off)
// whenever the routing table is empty, refreshes periodically, and triggers a full reprovide
// when the routing table goes from empty to non-empty. With no bootstrap source configured
// (single-node mode, or mDNS only) it stays silent.
//
// Every round dials a bounded random sample of the bootstrap sources (BootstrapSample
// successful connections at most), never all of them: the DHT's own self-walk and refresh
// fill the routing table from there. Connections per node then depend on the DHT, not on
// the size of the DNS answer (dialling every address made N² connections for a cluster).
//
// Two halves heal: each periodic refresh of BootstrapDNS dials one random address this node
// is not connected to. While the cluster is split in halves A and B, most unconnected
// addresses a node of A sees are in B (it is connected to part of A already), so each
// minute each of the N nodes bridges with probability about 1/2: the first minute bridges
// with certainty for any N worth the name, and the DHT's walks spread the news.
func (n *Node) maintain(ctx context.Context) {
	hasSources := len(n.static) > 0 || n.dnsName != ""
	t := time.NewTicker(maintainEvery)
	defer t.Stop()
	var (
		lastSize    int
		backoff     time.Duration
		nextRound   time.Time // zero: now
		nextRefresh = time.Now().Add(n.opts.refreshEvery)
		warned      bool
	)
	for {
		size := n.dht.RoutingTable().Size()
		switch {
		case lastSize == 0 && size > 0:
			n.log.Info("joined the swarm", "routing_table", size)
			n.bootstrapErr.Store(nil) // whoever connected, the node is in
			n.triggerReprovide()
			backoff, warned = 0, false
		case lastSize > 0 && size == 0:
			n.log.Info("routing table empty; re-bootstrapping")
			nextRound = time.Time{}
		}
		lastSize = size
		now := time.Now()
		if size == 0 && hasSources && !now.Before(nextRound) {
			if ok := n.bootstrap(ctx, roundJoin); !ok && ctx.Err() == nil {
				if !warned {
					n.log.Warn("no bootstrap peer reachable yet; retrying quietly",
						"bootstrap", len(n.static), "bootstrap_dns", n.dnsName, "why", n.BootstrapError())
					warned = true
				}
			}
			backoff = min(max(2*backoff, time.Second), maxBackoff)
			nextRound = time.Now().Add(backoff)
			nextRefresh = time.Now().Add(n.opts.refreshEvery)
		} else if size > 0 && hasSources && !now.Before(nextRefresh) {
			n.bootstrap(ctx, roundRefresh)
			nextRefresh = time.Now().Add(n.opts.refreshEvery)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// roundKind says why a bootstrap round runs.
type roundKind int

const (
	// roundJoin: the routing table is empty; dial up to BootstrapSample sources.
	roundJoin roundKind = iota
	// roundRefresh: the node is in the swarm; fill gaps below BootstrapSample and probe one
	// random BootstrapDNS address.
	roundRefresh
)

// bootCandidate is one bootstrap source to dial: a static peer, or an address BootstrapDNS
// resolved to (its peer ID learnt from the handshake).
type bootCandidate struct {
	static *peer.AddrInfo
	addr   ma.Multiaddr
}

// errSelf: a DNS address turned out to be this node; neither success nor failure.
var errSelf = errors.New("bootstrap address is this node")

// bootstrap dials a random sample of the bootstrap sources, then asks the DHT to refresh. A
// join round wants BootstrapSample connections; a refresh round wants the gap below
// BootstrapSample (routing table or connections, whichever is smaller) and, for BootstrapDNS,
// one more. It reports whether any connection succeeded.
func (n *Node) bootstrap(ctx context.Context, kind roundKind) bool {
	n.joining.Store(true)
	defer n.joining.Store(false)
	sample := n.cfg.BootstrapSample
	want, gap := sample, true
	if kind == roundRefresh {
		have := min(n.dht.RoutingTable().Size(), len(n.host.Network().Peers()))
		want = max(sample-have, 0)
		gap = want > 0
		if n.dnsName != "" {
			want++ // the probe that heals two halves
		}
		if want == 0 {
			return true
		}
	}
	var cands []bootCandidate
	for i := range n.static {
		ai := n.static[i]
		if ai.ID == n.host.ID() || n.host.Network().Connectedness(ai.ID) == network.Connected {
			continue
		}
		cands = append(cands, bootCandidate{static: &ai})
	}
	if n.dnsName != "" {
		for _, a := range n.resolveDNS(ctx) {
			cands = append(cands, bootCandidate{addr: a})
		}
	}
	mrand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	var fails failedDials
	ok := n.dialSample(ctx, cands, want, &fails)
	if ok == 0 {
		if kind == roundJoin {
			why := fails.String()
			n.bootstrapErr.Store(&why)
		}
		return false
	}
	n.bootstrapErr.Store(nil)
	if gap {
		// Fill the table from the new peers. A lone probe needs no walk: the DHT adds the
		// peer to its table when it connects, and its own refresh spreads the news.
		_ = n.dht.Bootstrap(ctx)
	}
	return true
}

// dialSample dials candidates in order until want of them connected, 2×want were tried or
// none is left, with at most bootstrapConcurrency dials at once and never more in flight
// than connections still wanted (so a round dials want sources unless some fail, and never
// more than 2×want: a node that starts before the others retries a fresh random sample
// after its back-off instead of dialling every address). It returns how many connected.
func (n *Node) dialSample(ctx context.Context, cands []bootCandidate, want int, fails *failedDials) int {
	if len(cands) > 2*want {
		cands = cands[:2*want]
	}
	var (
		mu       sync.Mutex
		cond     = sync.NewCond(&mu)
		ok       int
		inflight int
		wg       sync.WaitGroup
	)
	for _, c := range cands {
		mu.Lock()
		for inflight > 0 && (ok+inflight >= want || inflight >= bootstrapConcurrency) {
			cond.Wait()
		}
		if ok >= want || ctx.Err() != nil {
			mu.Unlock()
			break
		}
		inflight++
		mu.Unlock()
		n.bootstrapDials.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := n.dialCandidate(ctx, c)
			mu.Lock()
			defer mu.Unlock()
			inflight--
			switch {
			case err == nil:
				ok++
			case errors.Is(err, errSelf):
			default:
				n.log.Debug("bootstrap dial failed", "err", err)
				fails.add(err)
			}
			cond.Broadcast()
		}()
	}
	wg.Wait()
	return ok
}

func (n *Node) dialCandidate(ctx context.Context, c bootCandidate) error {
	if c.static != nil {
		return n.connect(ctx, *c.static)
	}
	p, err := n.learnPeerID(ctx, c.addr)
	if err != nil {
		return err
	}
	if p == n.host.ID() {
		return errSelf
	}
	return n.connect(ctx, peer.AddrInfo{ID: p, Addrs: []ma.Multiaddr{c.addr}})
}

// BootstrapError says why the last bootstrap round reached no peer; "" once one did.
func (n *Node) BootstrapError() string {
	if s := n.bootstrapErr.Load(); s != nil {
		return *s
	}
	return ""
}

// failedDials sums up the failed dials of one bootstrap round for an operator.
type failedDials struct {
	mu        sync.Mutex
	n         int
	handshake int // a peer answered, the secure handshake failed
	timeout   int
	last      error
}

func (f *failedDials) add(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	f.last = err
	// libp2p's upgrader wraps every failed security handshake in this text (it has no
	// typed error). With a swarm key, a peer holding another key (or none) fails here: the
	// bytes it sees are noise.
	switch {
	case strings.Contains(err.Error(), "failed to negotiate security protocol"):
		f.handshake++
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		f.timeout++
	}
}

func (f *failedDials) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		return "no bootstrap address to dial (DNS name resolved to nothing, or only this node)"
	}
	last := strings.Join(strings.Fields(f.last.Error()), " ") // libp2p lists failed dials on lines
	switch {
	case f.handshake > 0:
		return fmt.Sprintf("%d of %d bootstrap peers answered but the secure handshake failed: check that every node has the same swarm key (compare the fingerprints in shoal status) or none, and that the /p2p/ ID in each bootstrap address is right; last error: %s",
			f.handshake, f.n, last)
	case f.timeout > 0:
		// Two nodes without the same swarm key often both wait for an answer that makes
		// sense to them (the bytes decide): it then looks like a peer that is down.
		return fmt.Sprintf("%d of %d bootstrap dials timed out: the peer is down or frozen, something drops the traffic to its P2P port, or the nodes do not hold the same swarm key (compare the fingerprints in shoal status); last error: %s",
			f.timeout, f.n, last)
	default:
		return fmt.Sprintf("%d bootstrap dials failed; last error: %s", f.n, last)
	}
}

func (n *Node) connect(ctx context.Context, ai peer.AddrInfo) error {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	// Our own back-off paces bootstrap rounds; the swarm's per-peer dial back-off would
	// otherwise keep refusing a bootstrap peer that just restarted.
	ctx = network.WithForceDirectDial(ctx, "shoal bootstrap")
	if err := n.host.Connect(ctx, ai); err != nil {
		return fmt.Errorf("connect %s: %w", ai.ID, err)
	}
	n.host.ConnManager().TagPeer(ai.ID, "shoal-bootstrap", 10)
	return nil
}

// resolveDNS resolves BootstrapDNS into TCP multiaddrs, leaving out this node's own
// addresses and addresses already connected.
func (n *Node) resolveDNS(ctx context.Context) []ma.Multiaddr {
	rctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	ips, err := n.opts.resolve(rctx, n.dnsName)
	if err != nil {
		n.log.Debug("bootstrap DNS lookup failed", "name", n.dnsName, "err", err)
		return nil
	}
	skip := map[string]bool{}
	for _, a := range n.host.Addrs() {
		if ip, err := manet.ToIP(a); err == nil {
			skip[ip.String()] = true
		}
	}
	// Already connected: by the peer's own listen addresses (an inbound connection comes
	// from an ephemeral port, maybe from another source address).
	for _, p := range n.host.Network().Peers() {
		for _, a := range n.host.Peerstore().Addrs(p) {
			if ip, err := manet.ToIP(a); err == nil {
				skip[ip.String()] = true
			}
		}
	}
	var out []ma.Multiaddr
	seen := map[string]bool{}
	for _, ip := range ips {
		if ip == nil || skip[ip.String()] || seen[ip.String()] {
			continue
		}
		seen[ip.String()] = true
		a, err := manet.FromNetAddr(&net.TCPAddr{IP: ip, Port: n.dnsPort})
		if err != nil {
			continue
		}
		out = append(out, a)
	}
	return out
}

// learnPeerID finds out who listens at addr without knowing its peer ID in advance: it
// dials a throw-away placeholder ID there, and the security handshake (TLS or Noise) fails
// with the remote's real, authenticated ID. The swarm key, if any, applies as for any dial.
func (n *Node) learnPeerID(ctx context.Context, addr ma.Multiaddr) (peer.ID, error) {
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return "", err
	}
	placeholder, err := peer.IDFromPrivateKey(k)
	if err != nil {
		return "", err
	}
	ps := n.host.Peerstore()
	ps.AddAddr(placeholder, addr, time.Minute)
	defer ps.RemovePeer(placeholder)
	defer ps.ClearAddrs(placeholder)
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	c, err := n.host.Network().DialPeer(ctx, placeholder)
	if err == nil {
		c.Close() // a 256-bit ID collision: not going to happen
		return "", errors.New("placeholder peer ID answered")
	}
	var mismatch sec.ErrPeerIDMismatch
	if errors.As(err, &mismatch) && mismatch.Actual != "" {
		return mismatch.Actual, nil
	}
	return "", fmt.Errorf("learn peer ID at %s: %w", addr, err)
}

// startMDNS advertises and discovers peers on the local link.
func startMDNS(ctx context.Context, n *Node) (io.Closer, error) {
	var dialing sync.Map // peer.ID → struct{}: one connecting goroutine per peer
	found := func(ai peer.AddrInfo) {
		if ai.ID == n.host.ID() || n.host.Network().Connectedness(ai.ID) == network.Connected || n.peers.isBanned(ai.ID) {
			return
		}
		if _, busy := dialing.LoadOrStore(ai.ID, struct{}{}); busy {
			return
		}
		go func() {
			defer dialing.Delete(ai.ID)
			for attempt, wait := 0, time.Second; ; attempt, wait = attempt+1, 2*wait {
				err := n.connect(ctx, ai)
				if err == nil {
					n.log.Debug("connected to mDNS peer", "peer", ai.ID.String())
					_ = n.dht.Bootstrap(ctx)
					return
				}
				n.log.Debug("mDNS peer unreachable", "peer", ai.ID.String(), "attempt", attempt+1, "err", err)
				if attempt == 2 {
					return // its next announcement starts over
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				if n.host.Network().Connectedness(ai.ID) == network.Connected {
					return
				}
			}
		}()
	}
	svc := mdns.NewMdnsService(n.host, "_shoal._udp", mdnsNotifee(found))
	if err := svc.Start(); err != nil {
		return nil, err
	}
	return svc, nil
}

// mdnsNotifee connects to a peer announced over mDNS (the swarm key, if any, still decides
// whether the connection holds).
type mdnsNotifee func(peer.AddrInfo)

func (f mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) { f(ai) }
