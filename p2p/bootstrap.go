package p2p

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
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
	// dnsRefreshEvery re-resolves BootstrapDNS to meet nodes started since (and to heal a
	// cluster that formed as two halves).
	dnsRefreshEvery = time.Minute
	// bootstrapConcurrency bounds parallel dials in one round.
	bootstrapConcurrency = 8
)

// maintain keeps the node in the swarm: it bootstraps at start-up, again (with back-off)
// whenever the routing table is empty, re-resolves BootstrapDNS periodically, and triggers a
// full reprovide when the routing table goes from empty to non-empty. With no bootstrap
// source configured (single-node mode, or mDNS only) it stays silent.
func (n *Node) maintain(ctx context.Context) {
	hasSources := len(n.static) > 0 || n.dnsName != ""
	t := time.NewTicker(maintainEvery)
	defer t.Stop()
	var (
		lastSize  int
		backoff   time.Duration
		nextRound time.Time // zero: now
		nextDNS   = time.Now().Add(dnsRefreshEvery)
		warned    bool
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
			if ok := n.bootstrap(ctx, false); !ok && ctx.Err() == nil {
				if !warned {
					n.log.Warn("no bootstrap peer reachable yet; retrying quietly",
						"bootstrap", len(n.static), "bootstrap_dns", n.dnsName, "why", n.BootstrapError())
					warned = true
				}
			}
			backoff = min(max(2*backoff, time.Second), maxBackoff)
			nextRound = time.Now().Add(backoff)
			nextDNS = time.Now().Add(dnsRefreshEvery)
		} else if size > 0 && n.dnsName != "" && !now.Before(nextDNS) {
			n.bootstrap(ctx, true)
			nextDNS = time.Now().Add(dnsRefreshEvery)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// bootstrap connects to the static bootstrap peers and to the addresses BootstrapDNS
// resolves to (only DNS ones when dnsOnly), then asks the DHT to refresh. It reports whether
// any connection succeeded.
func (n *Node) bootstrap(ctx context.Context, dnsOnly bool) bool {
	n.joining.Store(true)
	defer n.joining.Store(false)
	var (
		ok    atomic.Int32
		wg    sync.WaitGroup
		sem   = make(chan struct{}, bootstrapConcurrency)
		fails failedDials
	)
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			if err := f(); err != nil {
				n.log.Debug("bootstrap dial failed", "err", err)
				fails.add(err)
				return
			}
			ok.Add(1)
		}()
	}
	if !dnsOnly {
		for _, ai := range n.static {
			if ai.ID == n.host.ID() {
				continue
			}
			run(func() error { return n.connect(ctx, ai) })
		}
	}
	if n.dnsName != "" {
		for _, a := range n.resolveDNS(ctx) {
			run(func() error {
				p, err := n.learnPeerID(ctx, a)
				if err != nil {
					return err
				}
				if p == n.host.ID() {
					return nil
				}
				return n.connect(ctx, peer.AddrInfo{ID: p, Addrs: []ma.Multiaddr{a}})
			})
		}
	}
	wg.Wait()
	if ok.Load() == 0 {
		if !dnsOnly {
			why := fails.String()
			n.bootstrapErr.Store(&why)
		}
		return false
	}
	n.bootstrapErr.Store(nil)
	_ = n.dht.Bootstrap(ctx)
	return true
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
