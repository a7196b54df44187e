package p2p

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"
)

func writeSwarmKey(t testing.TB) string {
	t.Helper()
	k, err := GenerateSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "swarm.key")
	if err := os.WriteFile(p, k, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Nodes sharing a swarm key form a cluster; a node with another key, or with none, can
// neither join it nor fetch from it.
func TestSwarmKey(t *testing.T) {
	ips := loopbackIPs(4)
	key, otherKey := writeSwarmKey(t), writeSwarmKey(t)
	blob := randomBlob(21, 100<<10)
	x := digest.FromBytes(blob)
	private := func(ip, key string) Config {
		c := testConfig(ip)
		c.SwarmKeyFile = key
		return c
	}
	a := startNode(t, private(ips[0], key), newMemContent(blob))
	b := startNode(t, bootstrapTo(private(ips[1], key), a), nil)
	waitRT(t, b, 1)
	if err := a.Provide(t.Context(), x); err != nil {
		t.Fatal(err)
	}
	got, _, err := fetchAll(t, b, peerOf(a), x, 0)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("member fetch: %d bytes, %v", len(got), err)
	}
	// An operator compares nodes by the key's fingerprint.
	if fa, fb := a.Status().SwarmKey, b.Status().SwarmKey; fa == "" || fa != fb || strings.Contains(string(mustRead(t, key)), fa) {
		t.Fatalf("members' swarm key fingerprints %q and %q: want equal, set, and not part of the key", fa, fb)
	}
	if e := b.Status().BootstrapError; e != "" {
		t.Fatalf("a member that joined reports a bootstrap error: %s", e)
	}
	if n := a.Status().InboundHandshakeFailures; n != 0 {
		t.Fatalf("a member's connection counted as %d failed inbound handshakes", n)
	}

	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"other key", bootstrapTo(private(ips[2], otherKey), a)},
		{"no key", bootstrapTo(testConfig(ips[3]), a)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startNode(t, tc.cfg, nil)
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			if err := e.host.Connect(ctx, peer.AddrInfo{ID: a.host.ID(), Addrs: a.host.Addrs()}); err == nil {
				t.Fatalf("outsider connected to the swarm")
			}
			if _, _, err := e.Fetch(t.Context(), peerOf(a), x, 0); err == nil {
				t.Fatalf("outsider fetched from the swarm")
			} else if errors.Is(err, ErrNotFound) {
				t.Fatalf("outsider got an answer from the swarm: %v", err)
			}
			if provs, _ := e.FindProviders(t.Context(), x, 3); len(provs) != 0 {
				t.Fatalf("outsider found providers: %v", provs)
			}
			if e.dht.RoutingTable().Size() != 0 || len(e.host.Network().Peers()) != 0 {
				t.Fatalf("outsider has peers: rt %d, connected %d", e.dht.RoutingTable().Size(), len(e.host.Network().Peers()))
			}
			// The outsider's operator sees why: its status points at the swarm key (a failed
			// handshake, or a timeout when each side waits for an answer that makes sense to
			// it: which one depends on the bytes), and the fingerprints differ.
			waitFor(t, 10*time.Second, "the outsider's bootstrap error", func() bool {
				return e.Status().BootstrapError != ""
			})
			if why := e.Status().BootstrapError; !strings.Contains(why, "swarm key") {
				t.Fatalf("outsider's bootstrap error does not point at the swarm key: %s", why)
			}
			if fe := e.Status().SwarmKey; fe == a.Status().SwarmKey {
				t.Fatalf("outsider shows the swarm's fingerprint %q", fe)
			}
			// The dialled member sees it too: connections that never completed the handshake
			// (from 127.0.0.1 here: outgoing connections do not bind the node's own address).
			before := a.Status().InboundHandshakeFailures
			dctx, dcancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer dcancel()
			if err := e.host.Connect(network.WithForceDirectDial(dctx, "test"), peer.AddrInfo{ID: a.host.ID(), Addrs: a.host.Addrs()}); err == nil {
				t.Fatalf("outsider connected to the swarm")
			}
			waitFor(t, 10*time.Second, "the member to count the outsider's failed handshake", func() bool {
				st := a.Status()
				return st.InboundHandshakeFailures > before && strings.HasPrefix(st.LastInboundFailure, "/ip4/127.")
			})
			for _, p := range a.host.Network().Peers() {
				if p == e.host.ID() {
					t.Fatalf("the swarm holds a connection to the outsider")
				}
			}
		})
	}

	t.Run("bad key file", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "bad.key")
		os.WriteFile(p, []byte("/key/swarm/psk/1.0.0/\n/base16/\nnothex\n"), 0o600)
		cfg := private(ips[2], p)
		if _, err := New(t.Context(), cfg, t.TempDir(), newMemContent(), nil); err == nil {
			t.Fatalf("a malformed swarm key was accepted")
		}
	})
}

// A banned peer is left out of lookups, refused by Fetch, disconnected and cannot
// reconnect; Status shows the ban.
func TestBan(t *testing.T) {
	ips := loopbackIPs(3)
	blob := randomBlob(22, 10<<10)
	x := digest.FromBytes(blob)
	a := startNode(t, testConfig(ips[0]), newMemContent(blob))
	b := startNode(t, bootstrapTo(testConfig(ips[1]), a), newMemContent(blob))
	c := startNode(t, bootstrapTo(testConfig(ips[2]), a), nil)
	waitRT(t, b, 2)
	waitRT(t, c, 2)
	for _, n := range []*testNode{a, b} {
		if err := n.Provide(t.Context(), x); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "C to find A and B", func() bool {
		provs, _ := c.FindProviders(t.Context(), x, 5)
		return len(provs) == 2
	})

	c.Ban(a.ID(), "sent bytes that failed verification")

	provs, err := c.FindProviders(t.Context(), x, 5)
	if err != nil || !slices.Equal(providerIDs(provs), []string{b.ID()}) {
		t.Fatalf("providers after banning A: %v %v, want only B", providerIDs(provs), err)
	}
	if _, _, err := c.Fetch(t.Context(), peerOf(a), x, 0); !errors.Is(err, ErrBanned) {
		t.Fatalf("fetch from a banned peer: %v, want ErrBanned", err)
	}
	waitFor(t, 2*time.Second, "C to drop its connection to A", func() bool {
		return c.host.Network().Connectedness(a.host.ID()) != network.Connected
	})
	if err := a.host.Connect(t.Context(), peer.AddrInfo{ID: c.host.ID(), Addrs: c.host.Addrs()}); err == nil {
		waitFor(t, 2*time.Second, "C to refuse the banned peer's connection", func() bool {
			return c.host.Network().Connectedness(a.host.ID()) != network.Connected
		})
	}
	if got, _, err := fetchAll(t, c, peerOf(b), x, 0); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("fetch from B: %v", err)
	}
	st := c.Status()
	if st.Bans != 1 {
		t.Fatalf("Bans = %d, want 1", st.Bans)
	}
	var found bool
	for _, p := range st.Peers {
		if p.ID == a.ID() {
			found = true
			if !p.Banned || time.Until(p.BannedUntil) < 9*time.Minute {
				t.Fatalf("A's status: banned %v until %v", p.Banned, p.BannedUntil)
			}
		}
	}
	if !found {
		t.Fatalf("banned peer missing from Status")
	}
}

// Bans end after BanDuration and are counted each time.
func TestBanExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tab := newPeerTable(10*time.Minute, time.Now)
		p := peer.ID("peer-under-test")
		tab.ban(p)
		if !tab.isBanned(p) {
			t.Fatal("not banned right after ban")
		}
		time.Sleep(10*time.Minute - time.Second)
		if !tab.isBanned(p) {
			t.Fatal("ban ended early")
		}
		time.Sleep(time.Second)
		if tab.isBanned(p) || len(tab.bannedPeers()) != 0 {
			t.Fatal("ban did not end after BanDuration")
		}
		tab.ban(p)
		if !tab.isBanned(p) || tab.bans.Load() != 2 {
			t.Fatalf("second ban: banned %v, count %d", tab.isBanned(p), tab.bans.Load())
		}
	})
}

// The shell recipe in the package documentation makes a key that loads.
func TestSwarmKeyShellRecipe(t *testing.T) {
	p := filepath.Join(t.TempDir(), "swarm.key")
	cmd := exec.Command("sh", "-c", `umask 077; printf '/key/swarm/psk/1.0.0/\n/base16/\n%s\n' "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" > "$1"`, "sh", p)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if _, err := loadSwarmKey(p); err != nil {
		t.Fatalf("the documented recipe makes a key that does not load: %v", err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("recipe key mode %v", fi.Mode().Perm())
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Nodes prefer TLS 1.3 (AES-GCM: less CPU per byte than Noise's ChaCha20-Poly1305 with
// AES-NI, see BenchmarkTransfer) and still accept Noise: a node that offers only Noise (an
// older or another build) fetches from a shoal node and serves it, and two shoal nodes
// settle on TLS. A blob of several frames and an odd size crosses each connection intact.
func TestSecurityTLSFirstNoiseAccepted(t *testing.T) {
	ips := loopbackIPs(3)
	blob := randomBlob(31, 3*copyChunk+12345)
	x := digest.FromBytes(blob)
	noiseOnly := nodeOpt{opts: []option{func(o *options) { o.security = securityNoise }}}
	a := startNode(t, testConfig(ips[0]), newMemContent(blob))
	b := startNode(t, testConfig(ips[1]), newMemContent(blob))
	n := startNode(t, testConfig(ips[2]), newMemContent(blob), noiseOnly)
	security := func(from, to *testNode) string {
		t.Helper()
		conns := from.host.Network().ConnsToPeer(to.host.ID())
		if len(conns) == 0 {
			t.Fatalf("%s has no connection to %s", from.ID(), to.ID())
		}
		return string(conns[0].ConnState().Security)
	}
	for _, c := range []struct {
		name     string
		from, to *testNode
		want     string
	}{
		{"shoal from shoal", b, a, "/tls/1.0.0"},
		{"noise-only from shoal", n, a, "/noise"},
		{"shoal from noise-only", b, n, "/noise"},
	} {
		got, size, err := fetchAll(t, c.from, peerOf(c.to), x, 0)
		if err != nil || size != int64(len(blob)) || !bytes.Equal(got, blob) {
			t.Fatalf("%s: %d of %d bytes (size %d), equal %v: %v", c.name, len(got), len(blob), size, bytes.Equal(got, blob), err)
		}
		if s := security(c.from, c.to); s != c.want {
			t.Errorf("%s: security transport %q, want %q", c.name, s, c.want)
		}
	}
	// From an offset inside a frame, as a resume asks.
	got, _, err := fetchAll(t, b, peerOf(a), x, copyChunk+7)
	if err != nil || !bytes.Equal(got, blob[copyChunk+7:]) {
		t.Fatalf("resume: %d bytes, %v", len(got), err)
	}
}
