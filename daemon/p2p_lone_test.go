package daemon

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/p2p"
)

// A node started with the default P2P configuration has no way to find peers (no bootstrap,
// no DNS name, no mDNS): it listens for none, says so in its log and its status, and nothing
// answers on the P2P port. The rule for the other cases is TestListenAddrs (p2p): a test may
// not listen on 0.0.0.0, which is where such a node would listen.
func TestLoneNodeDoesNotListenForPeers(t *testing.T) {
	up := newUpstream(t)
	d, logs := startDaemonLogged(t, up, func(c *Config) {
		c.P2PEnabled = true
		c.P2P = p2p.DefaultConfig()
		c.AdminListen = "" // the socket in the data dir
	})
	if d.node == nil {
		t.Fatal("P2P node not started")
	}
	if addrs := d.node.Addrs(); len(addrs) != 0 {
		t.Errorf("a lone node listens on %v, want nothing", addrs)
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p2p.DefaultPort)), 5*time.Second)
	if err == nil {
		c.Close()
		t.Errorf("something answers on 127.0.0.1:%d, the P2P port of a lone node", p2p.DefaultPort)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dialling the P2P port: %v, want connection refused", err)
	}
	if n := strings.Count(logs.String(), "not listening for peers"); n != 1 {
		t.Errorf("%d log lines say the node is not listening, want 1:\n%s", n, logs.String())
	}
	s, err := adminFor(t, d).Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if s.P2P == nil || s.P2P.NotListening != p2p.LoneNote || len(s.P2P.Addrs) != 0 {
		t.Errorf("status: %+v, want P2P with no addresses and not_listening %q", s.P2P, p2p.LoneNote)
	}
	var _ adminapi.Status = s
}
