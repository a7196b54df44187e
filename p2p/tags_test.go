package p2p

import (
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"
)

// A tag published on one node resolves on every other; a newer push wins everywhere, a
// tombstone too; records that are unsigned, signed by another key or filed under another
// name are refused by every node.
func TestTagRecords(t *testing.T) {
	ips := loopbackIPs(5)
	a := startNode(t, testConfig(ips[0]), nil)
	nodes := []*testNode{a}
	for _, ip := range ips[1:] {
		nodes = append(nodes, startNode(t, bootstrapTo(testConfig(ip), a), nil))
	}
	for _, n := range nodes {
		waitRT(t, n, len(nodes)-1)
	}
	name := "shoal.local/team/app:v1"
	d1, d2 := digest.FromString("one"), digest.FromString("two")
	ctx := t.Context()

	start := time.Now()
	if _, err := a.PublishTag(ctx, TagRecord{Name: name, Digest: d1, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 100}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	for i, n := range nodes {
		r, err := n.LookupTag(ctx, name)
		if err != nil || r.Digest != d1 || r.Peer != a.ID() {
			t.Fatalf("node %d: %+v %v", i, r, err)
		}
	}
	t.Logf("publish + lookup on 5 nodes: %v", time.Since(start).Round(time.Millisecond))

	// Two nodes push the same tag at nearly the same time: every node settles on the newer.
	var wg sync.WaitGroup
	seqs := []int64{time.Now().UnixNano(), time.Now().UnixNano() + 1}
	for i, n := range []*testNode{nodes[1], nodes[2]} {
		wg.Go(func() {
			dg := []digest.Digest{d1, d2}[i]
			if _, err := n.PublishTag(ctx, TagRecord{Name: name, Digest: dg, Seq: seqs[i]}); err != nil && !errors.Is(err, ErrTagOutdated) {
				t.Errorf("concurrent publish %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	for i, n := range nodes {
		r, err := n.LookupTag(ctx, name)
		if err != nil || r.Digest != d2 || r.Seq != seqs[1] {
			t.Fatalf("node %d settled on %+v (%v), want the newer push %s", i, r, err, d2)
		}
	}
	// An older record cannot replace a newer one.
	if _, err := a.PublishTag(ctx, TagRecord{Name: name, Digest: d1, Seq: seqs[0] - 10}); !errors.Is(err, ErrTagOutdated) {
		t.Fatalf("older publish: %v", err)
	}
	// A tombstone deletes it cluster-wide.
	if _, err := nodes[3].PublishTag(ctx, TagRecord{Name: name, Deleted: true}); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		if r, err := n.LookupTag(ctx, name); err != nil || !r.Deleted {
			t.Fatalf("node %d after delete: %+v %v", i, r, err)
		}
	}

	// Forged records: refused by the validator on every node.
	good, err := a.PublishTag(ctx, TagRecord{Name: "shoal.local/x:y", Digest: d1})
	if err != nil {
		t.Fatal(err)
	}
	forged := []TagRecord{good, good, good, good}
	forged[0].Digest = d2              // altered after signing
	forged[1].Peer = nodes[1].ID()     // claims another node
	forged[2].Sig = nil                // unsigned
	forged[3].Name = "shoal.local/x:z" // replayed under another name
	for i, f := range forged {
		b, _ := json.Marshal(f)
		if err := (tagValidator{}).Validate(tagKey("shoal.local/x:y"), b); err == nil {
			t.Errorf("forged record %d accepted", i)
		}
		if err := a.RepublishTag(ctx, f); err == nil {
			t.Errorf("forged record %d published", i)
		}
	}
	if _, err := nodes[4].LookupTag(ctx, "shoal.local/none:v1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown tag: %v", err)
	}
}

// Tag records outlive the DHT's record age: the pushing node, and any other node that holds
// the tag, stores its record again before the DHT drops it; a record nobody holds expires; a
// tombstone is stored again until the record age has passed since it was published, then
// expires too. Presence is read from each node's own record store (one GET_VALUE per peer, no
// lookup, which would itself put the record back on peers that lack it).
func TestTagRecordsRepublished(t *testing.T) {
	const age = 2 * time.Second
	short := nodeOpt{opts: []option{func(o *options) { o.recordAge = age }}}
	ips := loopbackIPs(5)
	a := startNode(t, testConfig(ips[0]), nil, short)
	nodes := []*testNode{a}
	for _, ip := range ips[1:] {
		nodes = append(nodes, startNode(t, bootstrapTo(testConfig(ip), a), nil, short))
	}
	for _, n := range nodes {
		waitRT(t, n, len(nodes)-1)
	}
	b, obs := nodes[1], nodes[4]
	ctx := t.Context()
	const (
		live  = "shoal.local/app:held-by-pusher"
		other = "shoal.local/app:held-by-b"
		gone  = "shoal.local/app:held-by-none"
		del   = "shoal.local/app:deleted"
	)
	a.SetHeldTags(func() []string { return []string{live} })
	b.SetHeldTags(func() []string { return []string{other} })
	t0 := time.Now()
	for i, name := range []string{live, other, gone, del} {
		if _, err := a.PublishTag(ctx, TagRecord{Name: name, Digest: digest.FromString(name), Size: int64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.PublishTag(ctx, TagRecord{Name: del, Deleted: true}); err != nil {
		t.Fatal(err)
	}
	if r, err := b.LookupTag(ctx, other); err != nil || r.Digest != digest.FromString(other) {
		t.Fatalf("b looks up %s: %+v %v", other, r, err)
	}
	// stored reports what each of nodes 1–3 holds for name: "" (nothing), "live" or "deleted".
	stored := func(name string) []string {
		var out []string
		for _, n := range nodes[1:4] {
			id, _ := peer.Decode(n.ID())
			rec, _, err := obs.kadClient().GetValue(ctx, id, tagKey(name))
			switch {
			case err != nil:
				t.Fatalf("ask %s: %v", n.ID(), err)
			case rec == nil:
				out = append(out, "")
			default:
				r, err := decodeTag(tagKey(name), rec.GetValue())
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, map[bool]string{false: "live", true: "deleted"}[r.Deleted])
			}
		}
		return out
	}
	all := func(v string) []string { return []string{v, v, v} }
	check := func(name string, want []string) {
		t.Helper()
		if got := stored(name); !slices.Equal(got, want) {
			t.Fatalf("%.1f record ages after the push, %s is %q on nodes 1-3, want %q", time.Since(t0).Seconds()/age.Seconds(), name, got, want)
		}
	}
	// For 1.4 record ages (each would have expired after one): every record but the unheld
	// one is held by every node, the tombstone too.
	for time.Since(t0) < age*14/10 {
		check(live, all("live"))
		check(other, all("live"))
		check(del, all("deleted"))
		time.Sleep(100 * time.Millisecond) // polling interval, not synchronisation
	}
	check(gone, all(""))
	// Up to 5 record ages: held tags stay; the tombstone stops being stored once a record age
	// passed since it was published, then expires.
	for stored(del)[0] != "" || stored(del)[1] != "" || stored(del)[2] != "" {
		if time.Since(t0) > 5*age {
			t.Fatalf("the tombstone is still stored %v after it was published: %q", time.Since(t0), stored(del))
		}
		check(live, all("live"))
		check(other, all("live"))
		time.Sleep(100 * time.Millisecond) // polling interval, not synchronisation
	}
	t.Logf("tombstone gone after %.1f record ages", time.Since(t0).Seconds()/age.Seconds())
	for _, name := range []string{live, other} {
		if r, err := obs.LookupTag(ctx, name); err != nil || r.Digest != digest.FromString(name) {
			t.Fatalf("%s after %v: %+v %v", name, time.Since(t0), r, err)
		}
	}
}
