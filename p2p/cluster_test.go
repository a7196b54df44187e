package p2p

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Four nodes join through one; A provides X; C finds A and fetches X, whole and by range; a
// late joiner that only knows B finds and fetches it too; counters show who served whom.
func TestClusterProvideFindFetch(t *testing.T) {
	ips := loopbackIPs(5)
	blob := randomBlob(1, 3<<20+17)
	a := startNode(t, testConfig(ips[0]), newMemContent(blob))
	b := startNode(t, bootstrapTo(testConfig(ips[1]), a), nil)
	c := startNode(t, bootstrapTo(testConfig(ips[2]), a), nil)
	d := startNode(t, bootstrapTo(testConfig(ips[3]), a), nil)
	for _, n := range []*testNode{a, b, c, d} {
		waitRT(t, n, 3)
	}
	x := digest.FromBytes(blob)

	start := time.Now()
	if err := a.Provide(t.Context(), x); err != nil {
		t.Fatalf("provide: %v", err)
	}
	t.Logf("provide took %v", time.Since(start))

	start = time.Now()
	provs, err := c.FindProviders(t.Context(), x, 5)
	if err != nil {
		t.Fatalf("find providers: %v", err)
	}
	t.Logf("lookup took %v", time.Since(start))
	if got := providerIDs(provs); !slices.Equal(got, []string{a.ID()}) {
		t.Fatalf("providers of X = %v, want only A %s", got, a.ID())
	}
	if len(provs[0].Addrs) == 0 {
		t.Fatalf("provider A came without addresses")
	}

	got, size, err := fetchAll(t, c, provs[0], x, 0)
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if size != int64(len(blob)) || !bytes.Equal(got, blob) {
		t.Fatalf("fetched %d bytes (size %d), want the %d bytes of X", len(got), size, len(blob))
	}

	t.Run("range", func(t *testing.T) {
		for _, off := range []int64{1, 1000, int64(len(blob)) - 1, int64(len(blob))} {
			got, size, err := fetchAll(t, c, provs[0], x, off)
			if err != nil {
				t.Fatalf("offset %d: %v", off, err)
			}
			if size != int64(len(blob)) || !bytes.Equal(got, blob[off:]) {
				t.Fatalf("offset %d: got %d bytes, size %d; want %d bytes, size %d", off, len(got), size, len(blob)-int(off), len(blob))
			}
		}
		if _, _, err := c.Fetch(t.Context(), provs[0], x, int64(len(blob))+1); err == nil {
			t.Fatalf("offset beyond the size: want an error")
		}
	})

	t.Run("absent digest answers not found", func(t *testing.T) {
		miss := digest.FromString("nobody has this")
		_, _, err := c.Fetch(t.Context(), peerOf(a), miss, 0)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("fetch of an absent digest: %v, want ErrNotFound", err)
		}
		provs, err := c.FindProviders(t.Context(), miss, 5)
		if err != nil || len(provs) != 0 {
			t.Fatalf("find providers of an absent digest: %v, %v; want none, no error", provs, err)
		}
	})

	t.Run("late joiner", func(t *testing.T) {
		e := startNode(t, bootstrapTo(testConfig(ips[4]), b), nil)
		waitRT(t, e, 1)
		start := time.Now()
		var provs []Peer
		// The late joiner's routing table fills while it looks: retry until A shows up.
		waitFor(t, 5*time.Second, "late joiner to find A", func() bool {
			provs, _ = e.FindProviders(t.Context(), x, 5)
			return slices.Equal(providerIDs(provs), []string{a.ID()})
		})
		t.Logf("late joiner: bootstrap+find took %v", time.Since(start))
		got, _, err := fetchAll(t, e, provs[0], x, 0)
		if err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("late joiner fetch: %d bytes, %v", len(got), err)
		}
	})

	t.Run("status counters", func(t *testing.T) {
		st := a.Status()
		if st.ID != a.ID() || st.RoutingTableSize < 3 || st.Provided != 1 {
			t.Fatalf("A status: id %s rt %d provided %d", st.ID, st.RoutingTableSize, st.Provided)
		}
		var served int64
		for _, p := range st.Peers {
			if p.ID == c.ID() {
				served = p.BytesOut
				if len(p.Addrs) == 0 {
					t.Errorf("A's status lists C without addresses")
				}
			}
		}
		// C fetched X once whole and at 4 offsets.
		want := int64(len(blob)) + int64(len(blob)-1) + int64(len(blob)-1000) + 1 + 0
		if served != want {
			t.Fatalf("A served %d bytes to C, want %d", served, want)
		}
		cs := c.Status()
		if cs.Lookups < 2 || cs.LookupHits < 1 || cs.LookupP50 <= 0 {
			t.Fatalf("C lookups %d hits %d p50 %v", cs.Lookups, cs.LookupHits, cs.LookupP50)
		}
		for _, p := range cs.Peers {
			if p.ID == a.ID() && p.BytesIn != want {
				t.Fatalf("C received %d bytes from A, want %d", p.BytesIn, want)
			}
		}
		if rtt, err := c.Ping(t.Context(), a.ID()); err != nil || rtt <= 0 {
			t.Fatalf("ping A: %v %v", rtt, err)
		}
	})

	if a.dials.count()+c.dials.count() == 0 {
		t.Fatalf("dial observer saw no dials: the non-loopback check is not wired")
	}
}

// A node shares what its store lists at start-up without any Provide call, reprovides every
// RecordTTL/2 so records never lapse, and after Withdraw answers not found and lets the
// records expire.
func TestReprovideAndWithdraw(t *testing.T) {
	ips := loopbackIPs(2)
	blob := randomBlob(2, 64<<10)
	x := digest.FromBytes(blob)
	cfgA := testConfig(ips[0])
	cfgA.RecordTTL = 1500 * time.Millisecond
	a := startNode(t, cfgA, newMemContent(blob))
	cfgB := bootstrapTo(testConfig(ips[1]), a)
	cfgB.RecordTTL = cfgA.RecordTTL
	b := startNode(t, cfgB, nil)

	waitFor(t, 5*time.Second, "B to find A's shared content without a Provide call", func() bool {
		provs, _ := b.FindProviders(t.Context(), x, 5)
		return slices.Equal(providerIDs(provs), []string{a.ID()})
	})
	if st := a.Status(); st.Provided != 1 {
		t.Fatalf("A provides %d digests, want 1", st.Provided)
	}

	// Over twice the record TTL, the record must never lapse.
	end := time.Now().Add(2*cfgA.RecordTTL + 200*time.Millisecond)
	for time.Now().Before(end) {
		provs, err := b.FindProviders(t.Context(), x, 5)
		if err != nil || len(provs) != 1 {
			t.Fatalf("record lapsed at %v: %v %v", time.Until(end), provs, err)
		}
		time.Sleep(50 * time.Millisecond) // sampling over time is the point here
	}

	a.Withdraw(x)
	if st := a.Status(); st.Provided != 0 {
		t.Fatalf("after Withdraw A provides %d digests, want 0", st.Provided)
	}
	if _, _, err := b.Fetch(t.Context(), peerOf(a), x, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fetch after Withdraw: %v, want ErrNotFound", err)
	}
	waitFor(t, 3*cfgA.RecordTTL, "A's record to expire after Withdraw", func() bool {
		provs, _ := b.FindProviders(t.Context(), x, 5)
		return len(provs) == 0
	})

	// Provide again undoes the Withdraw.
	if err := a.Provide(t.Context(), x); err != nil {
		t.Fatal(err)
	}
	got, _, err := fetchAll(t, b, peerOf(a), x, 0)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("fetch after re-Provide: %d bytes, %v", len(got), err)
	}
}

// The peer ID survives a restart with the same data dir; the key file is private.
func TestIdentityPersisted(t *testing.T) {
	ip := loopbackIPs(1)[0]
	dir := t.TempDir()
	n1 := startNode(t, testConfig(ip), nil, nodeOpt{dataDir: dir})
	id := n1.ID()
	if err := n1.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "p2p", "identity.key"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity key mode %v, want 0600", fi.Mode().Perm())
	}
	n2 := startNode(t, testConfig(ip), nil, nodeOpt{dataDir: dir})
	if n2.ID() != id {
		t.Fatalf("peer ID changed across restart: %s then %s", id, n2.ID())
	}
	n3 := startNode(t, testConfig(ip), nil)
	if n3.ID() == id {
		t.Fatalf("a fresh data dir reused the peer ID")
	}
}

// Alone, a node is quiet: Provide and FindProviders return promptly without errors and
// nothing is logged above INFO.
func TestSingleNodeQuiet(t *testing.T) {
	cfg := testConfig(loopbackIPs(1)[0])
	blob := randomBlob(3, 1000)
	n := startNode(t, cfg, newMemContent(blob))
	x := digest.FromBytes(blob)
	start := time.Now()
	if err := n.Provide(t.Context(), x); err != nil {
		t.Fatalf("provide alone: %v", err)
	}
	// Nobody is coming (no bootstrap source, no peer): nothing to wait for.
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Fatalf("provide alone took %v; it should not wait for peers that cannot come", took)
	}
	start = time.Now()
	provs, err := n.FindProviders(t.Context(), x, 3)
	if err != nil || len(provs) != 0 {
		t.Fatalf("find alone: %v %v, want nothing (self excluded), no error", provs, err)
	}
	if took := time.Since(start); took > cfg.LookupTimeout+500*time.Millisecond {
		t.Fatalf("lookup alone took %v", took)
	}
	st := n.Status()
	if st.RoutingTableSize != 0 || st.Provided != 1 || len(st.Peers) != 0 {
		t.Fatalf("status alone: %+v", st)
	}
	if w := n.log.warnings(); len(w) > 0 {
		t.Fatalf("single-node mode logged warnings: %q", w)
	}
	if _, _, err := n.Fetch(t.Context(), Peer{ID: n.ID(), Addrs: n.Addrs()}, x, 0); err == nil {
		t.Fatalf("fetch from self: want an error")
	}
}

// Content that ends before its announced size (an aborted in-progress download) must reach
// the fetcher as an error, never as a short body that looks complete.
func TestTruncatedContentIsAnError(t *testing.T) {
	ips := loopbackIPs(2)
	blob := randomBlob(4, 200<<10)
	srv := startNode(t, testConfig(ips[0]), nil, nodeOpt{content: truncating{data: blob, cut: 100 << 10}})
	cli := startNode(t, testConfig(ips[1]), nil)
	rc, size, err := cli.Fetch(t.Context(), peerOf(srv), digest.FromBytes(blob), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read %d of %d bytes, err %v; want io.ErrUnexpectedEOF", len(got), size, err)
	}
	if !bytes.Equal(got, blob[:100<<10]) {
		t.Fatalf("received %d bytes, want the %d bytes the server had, to resume from", len(got), 100<<10)
	}
}

// When every peer is gone the routing table empties; the node re-bootstraps (with back-off)
// and, once back in the swarm, re-announces its content at once.
func TestRebootstrapAfterRoutingTableEmpties(t *testing.T) {
	ips := loopbackIPs(2)
	dirA := t.TempDir()
	a1 := startNode(t, testConfig(ips[0]), nil, nodeOpt{dataDir: dirA})
	addrA := a1.host.Addrs()[0].String() // keep A's port across its restart
	blob := randomBlob(41, 10<<10)
	x := digest.FromBytes(blob)
	b := startNode(t, bootstrapTo(testConfig(ips[1]), a1), newMemContent(blob))
	waitRT(t, b, 1)

	a1.Close()
	// The next query to A fails, which drops it from B's routing table.
	waitFor(t, 10*time.Second, "B's routing table to empty", func() bool {
		b.FindProviders(t.Context(), digest.FromString("probe"), 1)
		return b.dht.RoutingTable().Size() == 0
	})

	cfg := testConfig(ips[0])
	cfg.Listen = []string{addrA}
	a2 := startNode(t, cfg, nil, nodeOpt{dataDir: dirA})
	if a2.ID() != a1.ID() {
		t.Fatal("A's identity changed")
	}
	waitFor(t, 10*time.Second, "B to re-bootstrap and A to find B's content", func() bool {
		provs, _ := a2.FindProviders(t.Context(), x, 1)
		return len(provs) == 1 && provs[0].ID == b.ID()
	})
	if w := b.log.warnings(); len(w) > 1 {
		t.Fatalf("re-bootstrapping is noisy: %q", w)
	}
}
