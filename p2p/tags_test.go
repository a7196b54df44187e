package p2p

import (
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

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
