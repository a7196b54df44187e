package p2p

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/namespace"
	dssync "github.com/ipfs/go-datastore/sync"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p-kad-dht/provider"
	"github.com/libp2p/go-libp2p-kad-dht/provider/keystore"
	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multihash"
	"github.com/opencontainers/go-digest"
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
	// The sweeper re-announces it on its region's schedule; this walk announces it now.
	if _, err := n.sweepKeys.Put(ctx, key.Hash()); err != nil {
		n.log.Warn("provide: could not schedule reproviding", "digest", d, "err", err)
	} else if err := n.sweeper.AddToSchedule(key.Hash()); err != nil && !errors.Is(err, provider.ErrClosed) {
		n.log.Warn("provide: could not schedule reproviding", "digest", d, "err", err)
	}
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
	if k, err := digestKey(d); err == nil {
		if err := n.sweeper.StopProviding(k.Hash()); err != nil && !errors.Is(err, provider.ErrClosed) {
			n.log.Warn("withdraw: could not stop reproviding", "digest", d, "err", err)
		}
	}
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

// The periodic side of advertising is kad-dht's SweepingProvider: instead of one DHT walk
// per digest (what dht.Provide does, and what this loop did every RecordTTL/2 for every
// digest), it cuts the key space into regions holding about ReplicationFactor peers, walks
// each region once, and sends every digest of the region to its closest peers in the same
// pass, spreading the regions over the reprovide interval. Measured on 100 in-process nodes
// with 10,000 digests (TestScaleProvideCost): see the README's Scale section.
//
// Who decides what: this node keeps the list (ShareList, Provide, Withdraw) and tells the
// sweeper with keys.Put/AddToSchedule (Provide: it announced already), StartProviding (new
// digests found in ShareList: announced in batches) and StopProviding (Withdraw, evicted
// digests). A digest committed here is still announced at once by Provide's own walk, so
// it is findable within milliseconds, not at its region's turn.

// newSweeper starts the sweeping provider on the node's DHT: same protocol prefix and
// message sender (so /shoal peers only), reprovides every RecordTTL/2, never later than
// 3/4 of RecordTTL (the validity peers give the records).
func newSweeper(h host.Host, d *dht.IpfsDHT, cfg Config) (*provider.SweepingProvider, keystore.Keystore, error) {
	// In memory: the store's ShareList is the lasting list, handed over at every start.
	mem := dssync.MutexWrap(datastore.NewMapDatastore())
	ks, err := keystore.NewKeystore(namespace.Wrap(mem, datastore.NewKey("keystore")))
	if err != nil {
		return nil, nil, err
	}
	self := h.ID()
	prov, err := provider.New(
		provider.WithHost(h),
		provider.WithRouter(d),
		provider.WithMessageSender(d.MessageSender()),
		provider.WithSelfAddrs(h.Addrs),
		provider.WithAddLocalRecord(func(ctx context.Context, k multihash.Multihash) error {
			return d.ProviderStore().AddProvider(ctx, k, peer.AddrInfo{ID: self})
		}),
		provider.WithKeystore(ks),
		provider.WithDatastore(namespace.Wrap(mem, datastore.NewKey("provider"))),
		provider.WithResumeCycle(false),
		provider.WithReplicationFactor(dhtBucketSize),
		provider.WithReprovideInterval(cfg.RecordTTL/2),
		provider.WithMaxReprovideDelay(cfg.RecordTTL/4),
		// A LAN peer answers in milliseconds; a hung one must not hold a worker for 10 s.
		provider.WithSendProviderRecordTimeout(max(cfg.ProvideTimeout, time.Second)),
	)
	if err != nil {
		ks.Close()
		return nil, nil, err
	}
	return prov, ks, nil
}

// dhtBucketSize is kad-dht's k: records go to the k closest peers.
const dhtBucketSize = 20

// reprovideLoop keeps the sweeper's list in step with ShareList: at start (the sweeper
// announces the lot once it is online), every RecordTTL/2, and whenever the routing table
// goes from empty to non-empty.
func (n *Node) reprovideLoop(ctx context.Context) {
	n.reprovideAll(ctx)
	t := time.NewTicker(n.cfg.RecordTTL / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.reprovideNow:
		case <-t.C:
		}
		n.reprovideAll(ctx)
	}
}

// triggerReprovide asks the reprovide loop to run now (coalescing requests).
func (n *Node) triggerReprovide() {
	select {
	case n.reprovideNow <- struct{}{}:
	default:
	}
}

// reprovideAll hands the sweeper what is shared now: digests it did not know are announced
// in batches by key region, digests that left the list are no longer announced. Announcing
// the rest is the sweeper's schedule.
func (n *Node) reprovideAll(ctx context.Context) {
	list, err := n.content.ShareList(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		n.log.Warn("reprovide: listing shared content failed; keeping the previous list", "err", err)
	}
	var gone []digest.Digest
	n.mu.Lock()
	if err == nil {
		listed := make(map[digest.Digest]struct{}, len(list))
		for _, d := range list {
			if _, w := n.withdrawn[d]; w {
				continue
			}
			listed[d] = struct{}{}
			delete(n.provided, d) // covered by the list from now on
		}
		for d := range n.listed {
			if _, ok := listed[d]; !ok {
				gone = append(gone, d)
			}
		}
		n.listed = listed
	}
	all := make([]digest.Digest, 0, len(n.listed)+len(n.provided))
	for d := range n.listed {
		all = append(all, d)
	}
	for d := range n.provided {
		all = append(all, d)
	}
	n.mu.Unlock()
	keys := make([]multihash.Multihash, 0, len(all))
	for _, d := range all {
		k, err := digestKey(d)
		if err != nil {
			n.log.Warn("reprovide: skipping invalid digest from share list", "digest", d, "err", err)
			continue
		}
		keys = append(keys, k.Hash())
	}
	var stop []multihash.Multihash
	for _, d := range gone {
		if n.isProvided(d) {
			continue
		}
		if k, err := digestKey(d); err == nil {
			stop = append(stop, k.Hash())
		}
	}
	if len(stop) > 0 {
		if err := n.sweeper.StopProviding(stop...); err != nil && ctx.Err() == nil {
			n.log.Warn("reprovide: could not stop announcing evicted content", "digests", len(stop), "err", err)
		}
	}
	if err := n.sweeper.StartProviding(false, keys...); err != nil && ctx.Err() == nil {
		n.log.Warn("reprovide: could not hand the share list to the provider", "digests", len(keys), "err", err)
		return
	}
	n.log.Debug("reprovide list updated", "digests", len(keys), "stopped", len(stop))
}

// isProvided reports whether d was provided since the last share list.
func (n *Node) isProvided(d digest.Digest) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ok := n.provided[d]
	return ok
}
