package e2e

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// TestStatusShowsDirectConnections: two `shoal daemon` processes share an image's blobs (node 1
// pulls them, the swarm's designated fetcher may be node 2; then node 2 pulls them with the
// upstream stopped), so every blob crossed between them once. `shoal status` on each shows the
// direct line with the figures of its status JSON, and the two sides agree: every request one
// sent on a direct connection the other served, at least one per blob, none fell back to a
// libp2p stream.
func TestStatusShowsDirectConnections(t *testing.T) {
	reg, img := seedSwarmImage(t, 71, 2, 256<<10)
	p := startUpstreamProxy(t, reg.URL)
	nodes := startSwarm(t, 2, p, "--log-level", "debug") // debug: the reason of a direct fallback is logged
	get := func(n *swarmNode) {
		t.Helper()
		for _, d := range img.Blobs {
			if r := do(t, http.MethodGet, "http://"+n.Addr, "/v2/"+img.Repo+"/blobs/"+d, nil); r.Status != http.StatusOK {
				t.Fatalf("%s: GET blob %s: %d %s", n.Name, d, r.Status, r.Body)
			}
		}
	}
	get(nodes[0])
	p.stop()
	get(nodes[1])

	type direct struct {
		Port, Open, Idle, Fallbacks                           int64
		Accepted, Refused, Served, Fetched, Dials, DialFailed int64
	}
	line := regexp.MustCompile(`direct: port (\d+), (\d+) open \((\d+) idle\); out: (\d+) dials, (\d+) failed, (\d+) requests, (\d+) over streams instead; in: (\d+) accepted, (\d+) refused, (\d+) requests served`)
	var seen [2]direct
	for i, n := range nodes {
		admin := "unix:" + filepath.Join(n.DataDir, "admin.sock")
		var st struct {
			P2P struct {
				Direct struct {
					Port                                      int64
					Accepted, Refused, Served, Fetched, Dials int64
					DialFailures                              int64 `json:"dial_failures"`
					Fallbacks                                 int64
				} `json:"direct"`
			} `json:"p2p"`
		}
		r := shoalCLI(t, nil, "--admin", admin, "status", "--json")
		if r.Code != 0 || json.Unmarshal([]byte(r.Stdout), &st) != nil {
			t.Fatalf("%s: shoal status --json: exit %d\n%s%s", n.Name, r.Code, r.Stdout, r.Stderr)
		}
		js := st.P2P.Direct
		r = shoalCLI(t, nil, "--admin", admin, "status")
		m := line.FindStringSubmatch(r.Stdout)
		if r.Code != 0 || m == nil {
			t.Fatalf("%s: shoal status shows no direct line (exit %d):\n%s%s", n.Name, r.Code, r.Stdout, r.Stderr)
		}
		num := func(i int) int64 { v, _ := strconv.ParseInt(m[i], 10, 64); return v }
		got := direct{Port: num(1), Open: num(2), Idle: num(3), Dials: num(4), DialFailed: num(5), Fetched: num(6), Fallbacks: num(7), Accepted: num(8), Refused: num(9), Served: num(10)}
		t.Logf("%s: %s", n.Name, m[0])
		// Open and Idle are gauges that may move between the two calls; the counters only grow
		// and nothing moves now.
		want := direct{Port: js.Port, Open: got.Open, Idle: got.Idle, Dials: js.Dials, DialFailed: js.DialFailures, Fetched: js.Fetched,
			Fallbacks: js.Fallbacks, Accepted: js.Accepted, Refused: js.Refused, Served: js.Served}
		if got != want || got.Port == 0 {
			t.Errorf("%s: shoal status says %+v, status JSON %+v", n.Name, got, want)
		}
		seen[i] = got
	}
	// Each side's outgoing figures are the other's incoming ones.
	one, two := seen[0], seen[1]
	if one.Served != two.Fetched || two.Served != one.Fetched || one.Accepted != two.Dials || two.Accepted != one.Dials {
		t.Errorf("the two sides disagree: shoal-1 %+v, shoal-2 %+v", one, two)
	}
	if n := one.Fetched + two.Fetched; n < int64(len(img.Blobs)) {
		t.Errorf("%d requests on direct connections over both nodes, want ≥ %d (each blob crossed once)", n, len(img.Blobs))
	}
	if one.Refused+two.Refused != 0 {
		t.Errorf("%d direct connections refused, want none", one.Refused+two.Refused)
	}
	// Neither side may fall back to streams: shoal-2 dialled shoal-1 over libp2p (bootstrap)
	// from the IP it listens on (p2p.sourceDialer), so shoal-1 asking shoal-2 on that
	// connection learns shoal-2's direct port too. Before the source binding, shoal-2's end
	// was 127.0.0.1, where it has no direct listener: shoal-1's dial failed in 6 runs of 7.
	for i, st := range []direct{one, two} {
		if st.DialFailed != 0 || st.Fallbacks != 0 {
			t.Errorf("shoal-%d: %+v, want no failed dial and no request over streams", i+1, st)
		}
	}
	if two.Dials < 1 || two.Fetched < 1 {
		t.Errorf("shoal-2 (which pulled from shoal-1 with the upstream stopped): %+v, want ≥ 1 dial, ≥ 1 request", two)
	}
}
