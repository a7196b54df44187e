package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/shoal-mirror/shoal/adminapi"
)

// TestStatusDirectLine: the direct line of `shoal status` for a node with direct connections,
// with them off (p2p.direct_port -1), and none for a node that listens for no peer. The
// figures of a running pair are asserted end to end in e2e (TestStatusShowsDirectConnections).
func TestStatusDirectLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		p2p  adminapi.P2PStatus
		want string // "" : no direct line
	}{
		{"on", adminapi.P2PStatus{BadRequests: 2, Direct: adminapi.DirectStatus{Port: 5002, Open: 3, Idle: 1, Dials: 12, DialFailures: 1, Fetched: 40, Fallbacks: 5, Accepted: 7, Refused: 4, Served: 30}},
			"direct: port 5002, 3 open (1 idle); out: 12 dials, 1 failed, 40 requests, 5 over streams instead; in: 7 accepted, 4 refused, 30 requests served; 2 bad peer requests"},
		{"off", adminapi.P2PStatus{}, "direct connections off: blob bytes over libp2p streams"},
		{"not listening", adminapi.P2PStatus{NotListening: "not listening for peers: no p2p.listen"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			printStatus(&out, adminapi.Status{P2P: &tc.p2p})
			got := strings.Contains(out.String(), "\tdirect") || strings.Contains(out.String(), " direct: ") || strings.Contains(out.String(), "direct connections")
			if tc.want == "" && got {
				t.Errorf("a direct line for a node that listens for no peer:\n%s", out.String())
			}
			if tc.want != "" && !strings.Contains(out.String(), "  "+tc.want+"\n") {
				t.Errorf("status lacks %q:\n%s", tc.want, out.String())
			}
		})
	}
}
