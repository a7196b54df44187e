package p2p

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p-kad-dht/records"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/opencontainers/go-digest"
)

// tagNamespace is the DHT record namespace of cluster-local tags: keys are
// "/shoaltag/<name>", name being "<namespace>/<repo>:<tag>". The DHT accepts no other records
// (no IPFS "pk" or "ipns" ones).
const tagNamespace = "shoaltag"

// tagQuorum is how many DHT answers a tag lookup waits for.
const tagQuorum = 2

// maxTagRecord bounds a tag record's encoding; a real one is a few hundred bytes.
const maxTagRecord = 4 << 10

// TagRecord is a cluster-local tag as the swarm knows it: what the tag names, who pushed it
// and when. Records are signed by the pushing node's key; of two records for one name the one
// with the higher Seq wins (ties: the higher digest, then peer), on every node alike.
type TagRecord struct {
	Name      string        `json:"name"`
	Digest    digest.Digest `json:"digest,omitempty"`
	MediaType string        `json:"mediaType,omitempty"`
	Size      int64         `json:"size,omitempty"`
	// Seq orders the pushes of a name: the pushing node's clock in nanoseconds, above any
	// record of the name it had seen.
	Seq int64 `json:"seq"`
	// Deleted marks a tag deleted cluster-wide (a tombstone that outranks older pushes).
	Deleted bool   `json:"deleted,omitempty"`
	Peer    string `json:"peer"`
	Sig     []byte `json:"sig,omitempty"`
}

func (r TagRecord) signed() []byte {
	r.Sig = nil
	b, _ := json.Marshal(r)
	return b
}

func tagKey(name string) string { return "/" + tagNamespace + "/" + name }

// tagValidator accepts a record only under its own name's key, well formed and signed by the
// peer it names (whose public key its peer ID carries). In a swarm with a key only members
// can reach the DHT at all, so only members can write.
type tagValidator struct{}

var _ record.Validator = tagValidator{}

func decodeTag(key string, value []byte) (TagRecord, error) {
	var r TagRecord
	if len(value) > maxTagRecord {
		return r, errors.New("tag record too large")
	}
	if err := json.Unmarshal(value, &r); err != nil {
		return r, fmt.Errorf("tag record: %w", err)
	}
	if tagKey(r.Name) != key || r.Name == "" {
		return r, fmt.Errorf("tag record for %q stored under %q", r.Name, key)
	}
	if !r.Deleted {
		if err := r.Digest.Validate(); err != nil {
			return r, fmt.Errorf("tag record %s: %w", r.Name, err)
		}
	}
	if r.Seq <= 0 {
		return r, fmt.Errorf("tag record %s: no sequence", r.Name)
	}
	return r, nil
}

// Validate checks the record's shape and signature.
func (tagValidator) Validate(key string, value []byte) error {
	r, err := decodeTag(key, value)
	if err != nil {
		return err
	}
	id, err := peer.Decode(r.Peer)
	if err != nil {
		return fmt.Errorf("tag record %s: peer: %w", r.Name, err)
	}
	pub, err := id.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("tag record %s: the peer ID carries no public key: %w", r.Name, err)
	}
	ok, err := pub.Verify(r.signed(), r.Sig)
	if err != nil || !ok {
		return fmt.Errorf("tag record %s: bad signature", r.Name)
	}
	return nil
}

// Select picks the newest record; equal sequences fall back to the digest, then the peer, so
// that every node picks the same one.
func (tagValidator) Select(key string, values [][]byte) (int, error) {
	best, bestI := TagRecord{}, -1
	for i, v := range values {
		r, err := decodeTag(key, v)
		if err != nil {
			continue
		}
		if bestI < 0 || compareTags(r, best) > 0 {
			best, bestI = r, i
		}
	}
	if bestI < 0 {
		return 0, errors.New("no valid tag record")
	}
	return bestI, nil
}

func compareTags(a, b TagRecord) int {
	return cmp.Or(cmp.Compare(a.Seq, b.Seq), strings.Compare(string(a.Digest), string(b.Digest)),
		strings.Compare(a.Peer, b.Peer), bytes.Compare(a.Sig, b.Sig))
}

// PublishTag signs r as this node's (Peer, Sig; Seq if zero: now) and stores it in the DHT on
// this node and the closest peers. It returns the record as published. A newer record already
// known for the name makes it fail with ErrTagOutdated.
func (n *Node) PublishTag(ctx context.Context, r TagRecord) (TagRecord, error) {
	priv := n.host.Peerstore().PrivKey(n.host.ID())
	if priv == nil {
		return r, errors.New("p2p: no private key to sign tags with")
	}
	r.Peer = n.host.ID().String()
	if r.Seq == 0 {
		r.Seq = time.Now().UnixNano()
	}
	sig, err := priv.Sign(r.signed())
	if err != nil {
		return r, fmt.Errorf("p2p: sign tag %s: %w", r.Name, err)
	}
	r.Sig = sig
	b, err := json.Marshal(r)
	if err != nil {
		return r, err
	}
	if err := n.dht.PutValue(ctx, tagKey(r.Name), b); err != nil {
		// kad-dht says so in two ways: its own check before storing ("can't replace a newer
		// value"), or the value store's when a newer record arrived in between.
		if strings.Contains(err.Error(), "newer value") || errors.Is(err, records.ErrOldRecord) {
			return r, fmt.Errorf("%w: %s", ErrTagOutdated, r.Name)
		}
		if errors.Is(err, context.DeadlineExceeded) { // stored here and on the peers that answered
			n.tags.learn(r, true)
		}
		return r, fmt.Errorf("p2p: publish tag %s: %w", r.Name, err)
	}
	n.tags.learn(r, true)
	return r, nil
}

// RepublishTag stores a record received earlier (signed by whoever pushed it) again, so that
// it outlives the DHT's record expiry while nodes still hold the tag.
func (n *Node) RepublishTag(ctx context.Context, r TagRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := n.dht.PutValue(ctx, tagKey(r.Name), b); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	n.tags.learn(r, true)
	return nil
}

// ErrTagOutdated: a newer record for the tag exists.
var ErrTagOutdated = errors.New("p2p: a newer record exists for this tag")

// LookupTag finds the newest record of a tag in the swarm, or ErrNotFound.
func (n *Node) LookupTag(ctx context.Context, name string) (TagRecord, error) {
	// Two answers (this node's own copy counts) are enough: records go to the 20 closest
	// nodes, and the newer of two wins; a full walk costs seconds in a busy 60-node swarm.
	b, err := n.dht.GetValue(ctx, tagKey(name), dht.Quorum(tagQuorum))
	if len(b) == 0 { // a deadline with a value in hand still returns the best one seen
		if err == nil || errors.Is(err, routing.ErrNotFound) {
			return TagRecord{}, fmt.Errorf("%w: tag %s", ErrNotFound, name)
		}
		return TagRecord{}, fmt.Errorf("p2p: look up tag %s: %w", name, err)
	}
	r, err := decodeTag(tagKey(name), b)
	if err == nil {
		n.tags.learn(r, false)
	}
	return r, err
}

// tagRecordAge is how long every node keeps a tag record after it received it (kad-dht's
// MaxRecordAge, its default, named here because the republish period derives from it).
const tagRecordAge = 48 * time.Hour

// maxRepublishPerTick bounds the records one republish round stores (and the lookups it makes
// for held tags whose record the node has not seen since it started); rounds come every
// age/24, so a node keeps up to ~8 × 256 = 2048 tags per period alive by itself, and holders
// share the work.
const maxRepublishPerTick = 256

// tagBook holds the newest signed record this node knows per tag name (published here or
// found in a lookup), and when it stored each in the DHT. The DHT drops a value record
// recordAge after a node received it and never republishes values itself (kad-dht has a
// reprovider only for provider records), so the republish loop stores again, every
// age/3 with jitter, the records of the tags this node holds and the tombstones it knows
// until recordAge has passed since it saw them (by then every node that held the tag has
// dropped its copy or looked the tombstone up).
type tagBook struct {
	age  time.Duration
	mu   sync.Mutex
	held func() []string // tags this node holds (SetHeldTags); nil: none
	m    map[string]*tagEntry
}

type tagEntry struct {
	rec  TagRecord
	next time.Time // when to store it again
	seen time.Time // when this node first saw it (tombstones stop at seen+age)
}

// init sets the record age (0: tagRecordAge) and returns it for the DHT's option.
func (b *tagBook) init(age time.Duration) time.Duration {
	if age <= 0 {
		age = tagRecordAge
	}
	b.age, b.m = age, map[string]*tagEntry{}
	return age
}

func (b *tagBook) every() time.Duration { return b.age / 3 }

// learn records r when it is newer than what the book holds for its name. stored says this
// node just stored it in the DHT (next due a full period later); a record found in a lookup
// was stored by someone a while ago: it is due sooner.
func (b *tagBook) learn(r TagRecord, stored bool) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.m[r.Name]
	if e != nil && compareTags(r, e.rec) < 0 {
		return
	}
	if e == nil || compareTags(r, e.rec) > 0 {
		e = &tagEntry{rec: r, seen: now}
		b.m[r.Name] = e
	}
	ev := b.every()
	if stored {
		e.next = now.Add(ev*3/4 + mrand.N(ev/4+1))
	} else if e.next.IsZero() {
		e.next = now.Add(ev/2 + mrand.N(ev/2+1))
	}
}

// SetHeldTags tells the node which tags it holds (names as published); their records, and
// the tombstones it knows, are republished before the DHT drops them, and peers asking which
// tags exist (ListTags) get them.
func (n *Node) SetHeldTags(held func() []string) {
	n.tags.mu.Lock()
	n.tags.held = held
	n.tags.mu.Unlock()
	n.host.SetStreamHandler(tagListProtocol, n.serveTagList)
}

// tagListProtocol asks a peer which tags it holds under a prefix: one request line
// "PREFIX\n"; the answer is one name per line (at most maxTagList), then the stream closes.
// The DHT cannot enumerate its keys, so listing a repository's tags asks the peers.
const tagListProtocol = protocol.ID(dhtPrefix + "/tags/1.0.0")

// maxTagList bounds one peer's answer; listTagsTimeout bounds asking all peers.
const (
	maxTagList      = 10000
	listTagsTimeout = time.Second
	listTagsPar     = 16
)

func (n *Node) serveTagList(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReaderSize(s, 1024).ReadString('\n')
	prefix := strings.TrimSuffix(line, "\n")
	if err != nil || prefix == "" || strings.ContainsAny(prefix, "\r\n") {
		s.Reset()
		return
	}
	n.tags.mu.Lock()
	held := n.tags.held
	n.tags.mu.Unlock()
	if held == nil {
		return
	}
	w := bufio.NewWriter(s)
	sent := 0
	for _, name := range held() {
		if strings.HasPrefix(name, prefix) && sent < maxTagList {
			w.WriteString(name + "\n")
			sent++
		}
	}
	_ = w.Flush()
}

// ListTags asks every connected peer which tags it holds under prefix and returns the union
// with this node's own, sorted (peers that do not answer within a second are left out).
// Names only: whether a tag was deleted since is the tag records' to say.
func (n *Node) ListTags(ctx context.Context, prefix string) []string {
	ctx, cancel := context.WithTimeout(ctx, listTagsTimeout)
	defer cancel()
	seen := map[string]bool{}
	var mu sync.Mutex
	add := func(name string) {
		if strings.HasPrefix(name, prefix) {
			mu.Lock()
			seen[name] = true
			mu.Unlock()
		}
	}
	n.tags.mu.Lock()
	held := n.tags.held
	n.tags.mu.Unlock()
	if held != nil {
		for _, name := range held() {
			add(name)
		}
	}
	n.askEachPeer(ctx, tagListProtocol, prefix, func(s network.Stream) {
		sc := bufio.NewScanner(s)
		for i := 0; i < maxTagList && sc.Scan(); i++ {
			add(sc.Text())
		}
	})
	out := make([]string, 0, len(seen))
	for name := range seen {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

func (n *Node) republishLoop(ctx context.Context) {
	tick := n.tags.age / 24
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(tick/2 + mrand.N(tick+1)):
		}
		n.republishTags(ctx, maxRepublishPerTick)
	}
}

// republishTags stores again the records that are due (at most max): those of held tags and
// unexpired tombstones; records of tags no longer held are forgotten. A held tag with no
// record in the book (after a restart) is looked up first.
func (n *Node) republishTags(ctx context.Context, max int) int {
	b := &n.tags
	b.mu.Lock()
	heldFn := b.held
	b.mu.Unlock()
	var held []string
	if heldFn != nil {
		held = heldFn()
	}
	heldSet := make(map[string]bool, len(held))
	for _, h := range held {
		heldSet[h] = true
	}
	now := time.Now()
	var due []TagRecord
	var unknown []string
	b.mu.Lock()
	for name, e := range b.m {
		switch {
		case e.rec.Deleted && now.Sub(e.seen) > b.age:
			delete(b.m, name)
		case !e.rec.Deleted && !heldSet[name]:
			delete(b.m, name)
		case !now.Before(e.next):
			due = append(due, e.rec)
		}
	}
	for _, h := range held {
		if b.m[h] == nil {
			unknown = append(unknown, h)
		}
	}
	b.mu.Unlock()
	slices.SortFunc(due, func(x, y TagRecord) int { return cmp.Compare(x.Seq, y.Seq) })
	done := 0
	for _, name := range unknown {
		if done >= max || ctx.Err() != nil {
			return done
		}
		done++
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := n.LookupTag(lctx, name)
		if err == nil {
			err = n.RepublishTag(lctx, r)
		}
		cancel()
		if err != nil && !errors.Is(err, ErrNotFound) {
			n.log.Debug("could not republish a tag record", "tag", name, "err", err)
		}
	}
	for _, r := range due {
		if done >= max || ctx.Err() != nil {
			break
		}
		done++
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := n.RepublishTag(pctx, r)
		cancel()
		if err != nil {
			// A newer record replaced it: forget this one; a held tag's newer record is
			// looked up next round.
			n.log.Debug("could not republish a tag record", "tag", r.Name, "err", err)
			b.mu.Lock()
			if e := b.m[r.Name]; e != nil && compareTags(e.rec, r) == 0 {
				delete(b.m, r.Name)
			}
			b.mu.Unlock()
		}
	}
	return done
}

// tagNudgeProtocol tells a peer that a tag record changed: one request line "NAME\n"; the
// peer looks the record up (the nudge itself carries no authority: only the signed record in
// the DHT counts), acts on it, and answers "ok\n".
const tagNudgeProtocol = protocol.ID(dhtPrefix + "/tagnudge/1.0.0")

// nudgeTimeout bounds one peer's handling of a nudge.
const nudgeTimeout = 3 * time.Second

// HandleTagNudge serves nudges with fn (name is the record's name).
func (n *Node) HandleTagNudge(fn func(ctx context.Context, name string)) {
	n.host.SetStreamHandler(tagNudgeProtocol, func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(nudgeTimeout))
		line, err := bufio.NewReaderSize(s, 2048).ReadString('\n')
		name := strings.TrimSuffix(line, "\n")
		if err != nil || name == "" || len(name) > 1024 || strings.ContainsAny(name, "\r\n") {
			s.Reset()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), nudgeTimeout)
		fn(ctx, name)
		cancel()
		_, _ = s.Write([]byte("ok\n"))
	})
}

// NudgeTag tells every connected peer that the record of name changed and waits (within a
// few seconds) until they handled it; it returns how many did.
func (n *Node) NudgeTag(ctx context.Context, name string) int {
	ctx, cancel := context.WithTimeout(ctx, nudgeTimeout+time.Second)
	defer cancel()
	var done atomic.Int64
	n.askEachPeer(ctx, tagNudgeProtocol, name, func(s network.Stream) {
		if line, err := bufio.NewReaderSize(s, 64).ReadString('\n'); err == nil && line == "ok\n" {
			done.Add(1)
		}
	})
	return int(done.Load())
}

// askEachPeer sends line on a new stream of proto to every connected peer (listTagsPar at a
// time, bounded by ctx) and hands each stream that took it to read; it returns when all are done.
func (n *Node) askEachPeer(ctx context.Context, proto protocol.ID, line string, read func(network.Stream)) {
	sem := make(chan struct{}, listTagsPar)
	var wg sync.WaitGroup
	for _, id := range n.host.Network().Peers() {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			s, err := n.host.NewStream(ctx, id, proto)
			if err != nil {
				return
			}
			defer s.Close()
			if dl, ok := ctx.Deadline(); ok {
				_ = s.SetDeadline(dl)
			}
			if _, err := fmt.Fprintf(s, "%s\n", line); err != nil {
				s.Reset()
				return
			}
			read(s)
		})
	}
	wg.Wait()
}
