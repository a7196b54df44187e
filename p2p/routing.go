package p2p

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"
	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multihash"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// digestKey maps a content digest to its DHT key: CIDv1, raw codec, with the digest's own
// bytes as a sha2-256 (or sha2-512) multihash. The DHT keys records by the multihash, so every
// node derives the same key without hashing anything.
func digestKey(d digest.Digest) (cid.Cid, error) {
	if err := d.Validate(); err != nil {
		return cid.Undef, fmt.Errorf("p2p: invalid digest %q: %w", d, err)
	}
	var code uint64
	switch d.Algorithm() {
	case digest.SHA256:
		code = multihash.SHA2_256
	case digest.SHA512:
		code = multihash.SHA2_512
	default:
		return cid.Undef, fmt.Errorf("p2p: unsupported digest algorithm %q", d.Algorithm())
	}
	raw, err := hex.DecodeString(d.Encoded())
	if err != nil {
		return cid.Undef, fmt.Errorf("p2p: invalid digest %q: %w", d, err)
	}
	mh, err := multihash.Encode(raw, code)
	if err != nil {
		return cid.Undef, fmt.Errorf("p2p: digest %q: %w", d, err)
	}
	return cid.NewCidV1(cid.Raw, mh), nil
}

// Provide advertises that this node serves d, within ProvideTimeout. While peers are joining
// it first waits (within the same budget) for a non-empty routing table. A provide that ran out of time
// reached the peers it found and counts as done; with nobody to tell (single-node mode) it
// returns nil and the reprovide that follows the first peer's arrival announces it. It also
// cancels an earlier Withdraw.
func (n *Node) Provide(ctx context.Context, d digest.Digest) error {
	key, err := digestKey(d)
	if err != nil {
		return err
	}
	n.mu.Lock()
	delete(n.withdrawn, d)
	n.provided[d] = struct{}{}
	n.mu.Unlock()
	return n.provideKey(ctx, d, key)
}

func (n *Node) provideKey(ctx context.Context, d digest.Digest, key cid.Cid) error {
	pctx, cancel := context.WithTimeout(ctx, n.cfg.ProvideTimeout)
	defer cancel()
	// Wait for the routing table only while peers are on their way (connected but not yet in
	// the table, or a bootstrap round running). Alone, there is nobody to wait for: the
	// reprovide that follows the first peer's arrival announces it.
	expecting := n.joining.Load() || len(n.host.Network().Peers()) > 0
	if n.dht.RoutingTable().Size() == 0 && !expecting {
		n.log.Debug("provide deferred: no peers", "digest", d)
		return nil
	}
	if !n.waitRoutingTable(pctx) {
		if err := ctx.Err(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("p2p: provide %s: %w", d, err)
		}
		n.log.Debug("provide deferred: no peers yet", "digest", d)
		return nil
	}
	start := time.Now()
	err := n.dht.Provide(pctx, key, true)
	switch {
	case err == nil:
		n.log.Debug("provided", "digest", d, "took", time.Since(start))
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		// Records went to the closest peers found in time (a hung peer would otherwise hold
		// us ~20 s); the next reprovide catches up.
		n.log.Debug("provide partial: deadline reached", "digest", d, "took", time.Since(start))
		return nil
	case errors.Is(err, kb.ErrLookupFailure):
		// The routing table emptied meanwhile: same as single-node mode.
		n.log.Debug("provide deferred: routing table emptied", "digest", d)
		return nil
	default:
		return fmt.Errorf("p2p: provide %s: %w", d, err)
	}
}

// Withdraw stops advertising d and makes later peer requests for it answer not found
// (until Provide(d) again). Records already held by peers expire after RecordTTL; a peer
// following one meanwhile is told not found and moves on.
func (n *Node) Withdraw(d digest.Digest) {
	n.mu.Lock()
	delete(n.provided, d)
	delete(n.listed, d)
	n.withdrawn[d] = struct{}{}
	n.mu.Unlock()
}

func (n *Node) isWithdrawn(d digest.Digest) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ok := n.withdrawn[d]
	return ok
}

func (n *Node) advertisedCount() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := len(n.listed)
	for d := range n.provided {
		if _, ok := n.listed[d]; !ok {
			c++
		}
	}
	return c
}

// FindProviders looks up at most max peers that advertise d, within LookupTimeout. It leaves
// out this node and banned peers. It returns when max providers are found, when the lookup
// completes, or LookupTimeout/10 after the first provider turned up (so that one frozen peer
// does not cost every successful lookup the whole budget). Finding nobody in time is not an
// error: the caller goes to the next source. max <= 0 means 20.
func (n *Node) FindProviders(ctx context.Context, d digest.Digest, max int) ([]Peer, error) {
	key, err := digestKey(d)
	if err != nil {
		return nil, err
	}
	if max <= 0 {
		max = 20
	}
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, n.cfg.LookupTimeout)
	defer cancel()
	self := n.host.ID()
	// The DHT counts every provider against its limit, ourselves and banned peers included.
	count := max + 1 + len(n.peers.bannedPeers())
	var out []Peer
	var grace <-chan time.Time
	ch := n.dht.FindProvidersAsync(lctx, key, count)
collect:
	for {
		var ai peer.AddrInfo
		var ok bool
		select {
		case ai, ok = <-ch:
			if !ok {
				break collect
			}
		case <-grace:
			cancel() // the DHT's goroutine stops and closes ch
			for range ch {
			}
			break collect
		}
		if ai.ID == self || n.peers.isBanned(ai.ID) {
			continue
		}
		addrs := ai.Addrs
		if len(addrs) == 0 {
			addrs = n.host.Peerstore().Addrs(ai.ID)
		}
		p := Peer{ID: ai.ID.String()}
		for _, a := range addrs {
			p.Addrs = append(p.Addrs, a.String())
		}
		out = append(out, p)
		if len(out) >= max {
			cancel() // lets the DHT's goroutine stop; the channel closes promptly
		}
		if grace == nil {
			t := time.NewTimer(n.cfg.LookupTimeout / 10)
			defer t.Stop()
			grace = t.C
		}
	}
	took := time.Since(start)
	n.lookups.Add(1)
	n.lookupLat.add(took)
	if len(out) > 0 {
		n.lookupHits.Add(1)
	}
	n.log.Debug("lookup", "digest", d, "providers", len(out), "took", took)
	if len(out) == 0 {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("p2p: find providers of %s: %w", d, err)
		}
	}
	if len(out) > max {
		out = out[:max]
	}
	return out, nil
}

// waitRoutingTable waits until the routing table has a peer or ctx ends.
func (n *Node) waitRoutingTable(ctx context.Context) bool {
	if n.dht.RoutingTable().Size() > 0 {
		return true
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return n.dht.RoutingTable().Size() > 0
		case <-t.C:
			if n.dht.RoutingTable().Size() > 0 {
				return true
			}
		}
	}
}

// reprovideLoop re-announces everything shared every RecordTTL/2, and at once whenever the
// routing table goes from empty to non-empty (start-up, or after losing every peer): a plain
// DHT never reprovides by itself.
func (n *Node) reprovideLoop(ctx context.Context) {
	interval := n.cfg.RecordTTL / 2
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.reprovideNow:
		case <-t.C:
		}
		n.reprovideAll(ctx)
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(interval)
	}
}

// triggerReprovide asks the reprovide loop to run now (coalescing requests).
func (n *Node) triggerReprovide() {
	select {
	case n.reprovideNow <- struct{}{}:
	default:
	}
}

// reprovideConcurrency bounds parallel provides in one reprovide round.
const reprovideConcurrency = 8

func (n *Node) reprovideAll(ctx context.Context) {
	list, err := n.content.ShareList(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		n.log.Warn("reprovide: listing shared content failed; re-announcing what was provided", "err", err)
	}
	n.mu.Lock()
	if err == nil {
		n.listed = make(map[digest.Digest]struct{}, len(list))
		for _, d := range list {
			if _, w := n.withdrawn[d]; w {
				continue
			}
			n.listed[d] = struct{}{}
			delete(n.provided, d) // covered by the list from now on
		}
	}
	all := make([]digest.Digest, 0, len(n.listed)+len(n.provided))
	for d := range n.listed {
		all = append(all, d)
	}
	for d := range n.provided {
		all = append(all, d)
	}
	n.mu.Unlock()
	if len(all) == 0 || n.dht.RoutingTable().Size() == 0 {
		return // nothing to say or nobody to tell; the first peer's arrival triggers a round
	}
	start := time.Now()
	var failed int
	var g errgroup.Group
	g.SetLimit(reprovideConcurrency)
	errs := make(chan error, len(all))
	for _, d := range all {
		key, err := digestKey(d)
		if err != nil {
			n.log.Warn("reprovide: skipping invalid digest from share list", "digest", d, "err", err)
			continue
		}
		g.Go(func() error {
			if n.isWithdrawn(d) {
				return nil
			}
			if err := n.provideKey(ctx, d, key); err != nil {
				errs <- err
			}
			return nil
		})
	}
	g.Wait()
	close(errs)
	var first error
	for err := range errs {
		failed++
		if first == nil {
			first = err
		}
	}
	if ctx.Err() != nil {
		return
	}
	if failed > 0 {
		n.log.Warn("reprovide finished with errors", "digests", len(all), "failed", failed, "first_err", first, "took", time.Since(start))
		return
	}
	n.log.Debug("reprovide finished", "digests", len(all), "took", time.Since(start))
}
