package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/p2p"
)

// TestStatusShowsSwarmKeyMismatch: three daemons bootstrap from the first; one of them was
// given another swarm key. `shoal status` lets an operator see why it stays alone: the members
// show the same key fingerprint, the outsider another one, and its status says that its
// bootstrap peer answered but the handshake failed (or timed out), pointing at the swarm key;
// the member it dials counts the connections that never completed the handshake.
func TestStatusShowsSwarmKeyMismatch(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	dir := t.TempDir()
	key := func(name string) string {
		p := filepath.Join(dir, name)
		k, err := p2p.GenerateSwarmKey()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, k, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	k1, k2 := key("swarm.key"), key("other.key")
	start := func(name, key string, boot []string) *swarmNode {
		n := launchSwarmNode(t, name, swarmIP(), up.Open.URL, boot, []string{"--swarm-key", key})
		n.awaitUp(t)
		return n
	}
	a := start("member-a", k1, nil)
	boot := []string{a.bootstrapAddr(t)}
	b := start("member-b", k1, boot)
	x := start("outsider", k2, boot)

	status := func(n *swarmNode) (adminapi.Status, string) {
		admin := "unix:" + filepath.Join(n.DataDir, "admin.sock")
		r := shoalCLI(t, nil, "--admin", admin, "status", "--json")
		var s adminapi.Status
		if err := json.Unmarshal([]byte(r.Stdout), &s); err != nil || s.P2P == nil {
			t.Fatalf("%s: status --json: %v (exit %d)\n%s%s", n.Name, err, r.Code, r.Stdout, r.Stderr)
		}
		return s, shoalCLI(t, nil, "--admin", admin, "status").Stdout
	}
	eventually(t, 30*time.Second, b.proc, "member-b joins", func() error {
		if s, _ := status(b); s.P2P.RoutingTableSize < 1 {
			return fmt.Errorf("routing table %d", s.P2P.RoutingTableSize)
		}
		return nil
	})
	eventually(t, 30*time.Second, x.proc, "the outsider's status explains", func() error {
		if s, _ := status(x); s.P2P.BootstrapError == "" {
			return fmt.Errorf("no bootstrap error yet")
		}
		return nil
	})

	sa, _ := status(a)
	sb, humanB := status(b)
	sx, humanX := status(x)
	fp := regexp.MustCompile(`^[0-9a-f]{12}$`)
	if !fp.MatchString(sa.P2P.SwarmKey) || sa.P2P.SwarmKey != sb.P2P.SwarmKey {
		t.Errorf("members' swarm key fingerprints %q and %q: want the same 12 hex digits", sa.P2P.SwarmKey, sb.P2P.SwarmKey)
	}
	if !fp.MatchString(sx.P2P.SwarmKey) || sx.P2P.SwarmKey == sa.P2P.SwarmKey {
		t.Errorf("outsider's fingerprint %q: want another one than the members' %q", sx.P2P.SwarmKey, sa.P2P.SwarmKey)
	}
	if secret, err := os.ReadFile(k1); err != nil || strings.Contains(string(secret), sa.P2P.SwarmKey) {
		t.Errorf("the fingerprint %q is part of the key file (err %v)", sa.P2P.SwarmKey, err)
	}
	// The member the outsider dials sees it knock.
	eventually(t, 30*time.Second, a.proc, "member-a counts the outsider's failed handshakes", func() error {
		if s, _ := status(a); s.P2P.InboundHandshakeFailures == 0 || s.P2P.LastInboundFailureAt == nil {
			return fmt.Errorf("no failed inbound handshake counted yet: %+v", s.P2P)
		}
		return nil
	})
	if _, humanA := status(a); !strings.Contains(humanA, "closed before the secure handshake completed") {
		t.Errorf("member-a's status does not show the failed inbound handshakes:\n%s", humanA)
	}
	if sb.P2P.InboundHandshakeFailures != 0 {
		t.Errorf("member-b counts %d failed inbound handshakes, want 0 (nobody but members dialled it)", sb.P2P.InboundHandshakeFailures)
	}
	if sx.P2P.RoutingTableSize != 0 || sb.P2P.BootstrapError != "" {
		t.Errorf("outsider routing table %d (want 0); member's bootstrap error %q (want none)", sx.P2P.RoutingTableSize, sb.P2P.BootstrapError)
	}
	if !strings.Contains(humanB, "swarm key "+sb.P2P.SwarmKey) || strings.Contains(humanB, "bootstrap failing") {
		t.Errorf("member's status:\n%s", humanB)
	}
	// A failed handshake or a timeout, as the bytes decide; both point at the key.
	if !strings.Contains(humanX, "swarm key "+sx.P2P.SwarmKey) || !strings.Contains(humanX, "bootstrap failing") ||
		!strings.Contains(humanX, "same swarm key") || !strings.Contains(humanX, "compare the fingerprints") {
		t.Errorf("outsider's status does not say why it is alone:\n%s", humanX)
	}
	if l := x.logged("no bootstrap peer reachable yet; retrying quietly"); len(l) == 0 || !strings.Contains(l[0].str("why"), "swarm key") {
		t.Errorf("outsider's log does not say why: %v", l)
	}
}
