package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Helpers for issue 5's swarm tests: N real shoal daemons with P2P on, each on its own loopback
// address, all in front of one upstream (through the counting proxy), pulled by real clients at
// the same instant.

var swarmSeq atomic.Int32

// swarmIP returns a fresh loopback address for a swarm node. The block 127.91.0.0/16 is this
// file's (the daemon package's P2P tests use 127.79.x.x), and the pid keeps two test binaries
// running at once apart.
func swarmIP() string {
	n := int(swarmSeq.Add(1))
	return fmt.Sprintf("127.91.%d.%d", (os.Getpid()+n/250)%250, n%250+2)
}

// swarmNode is one `shoal daemon --p2p=true` child process.
type swarmNode struct {
	Name     string
	IP       string
	Addr     string   // mirror API, IP:PORT (from the daemon's own log line)
	PeerID   string   // from "p2p node up"
	P2PAddrs []string // full multiaddrs with /p2p/ID
	DataDir  string
	Upstream string // the proxy's URL this node was given (one listener per node)
	proc     *proc
}

// logEntry is one JSON log line of a daemon.
type logEntry map[string]any

func (e logEntry) str(k string) string { s, _ := e[k].(string); return s }

// entries parses the node's JSON log (lines that are not JSON are skipped).
func (n *swarmNode) entries() []logEntry {
	f, err := os.Open(n.proc.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []logEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e logEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// logged returns the node's log entries with the given message.
func (n *swarmNode) logged(msg string) []logEntry {
	var out []logEntry
	for _, e := range n.entries() {
		if e.str("msg") == msg {
			out = append(out, e)
		}
	}
	return out
}

// swarmFetches returns the digests this node said it is fetching from the upstream on the
// swarm's behalf (the designated fetcher's log line).
func (n *swarmNode) swarmFetches() []string {
	var out []string
	for _, e := range n.logged("fetching for the swarm") {
		out = append(out, e.str("digest"))
	}
	return out
}

// blobSources counts the node's answered blob GETs by X-Shoal-Source, from its access log.
// countsList writes counts as "key×n", sorted by key.
func countsList(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	return parts
}

func (n *swarmNode) blobSources() map[string]int {
	m := map[string]int{}
	for _, e := range n.logged("request") {
		if e.str("method") == http.MethodGet && strings.Contains(e.str("path"), "/blobs/") {
			m[e.str("source")]++
		}
	}
	return m
}

// kill SIGKILLs the daemon (no shutdown, no goodbye to its peers) and waits until it is gone.
func (n *swarmNode) kill(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(-n.proc.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s: %v", n.Name, err)
	}
	<-n.proc.done
}

// launchSwarmNode starts a daemon with P2P on ip, in front of upstreamURL (as docker.io), joining
// through bootstrap; it does not wait for it.
func launchSwarmNode(t scope, name, ip, upstreamURL string, bootstrap []string, extra []string) *swarmNode {
	t.Helper()
	if shoalBuildErr != nil {
		t.Fatalf("%v", shoalBuildErr)
	}
	args := []string{"--p2p=true", "--p2p-listen", "/ip4/" + ip + "/tcp/0"}
	for _, b := range bootstrap {
		args = append(args, "--bootstrap", b)
	}
	o := shoalOpts{registries: []string{"docker.io=" + upstreamURL}, args: append(args, extra...)}
	// Port 0: the daemon picks its ports and logs them, so there is no race for a free port.
	argv := shoalArgs(t, ip+":0", &o)
	return &swarmNode{Name: name, IP: ip, DataDir: o.dataDir, Upstream: upstreamURL, proc: startProc(t, name, nil, argv...)}
}

// awaitUp waits for the daemon's start-up lines and its mirror API.
func (n *swarmNode) awaitUp(t *testing.T) {
	t.Helper()
	if err := n.waitUp(60 * time.Second); err != nil {
		t.Fatalf("%s up: %v", n.Name, err)
	}
}

// waitUp is awaitUp for goroutines other than the test's: it returns the error instead.
func (n *swarmNode) waitUp(timeout time.Duration) error {
	return poll(timeout, n.proc, func() error {
		if n.Addr == "" {
			l := n.logged("shoal mirror listening")
			if len(l) == 0 {
				return fmt.Errorf("no \"shoal mirror listening\" line yet")
			}
			n.Addr = l[0].str("addr")
		}
		if n.PeerID == "" {
			l := n.logged("p2p node up")
			if len(l) == 0 {
				return fmt.Errorf("no \"p2p node up\" line yet")
			}
			n.PeerID = l[0].str("peer_id")
			addrs, _ := l[0]["addrs"].([]any)
			for _, a := range addrs {
				if s, ok := a.(string); ok {
					n.P2PAddrs = append(n.P2PAddrs, s)
				}
			}
			if n.PeerID == "" || len(n.P2PAddrs) == 0 {
				return fmt.Errorf("\"p2p node up\" without peer_id or addrs: %v", l[0])
			}
		}
		resp, err := http.Get("http://" + n.Addr + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
}

// bootstrapAddr is the node's multiaddr on its own loopback address, for the others' --bootstrap.
func (n *swarmNode) bootstrapAddr(t *testing.T) string {
	t.Helper()
	a := n.ownAddr()
	if a == "" {
		t.Fatalf("%s advertises no address on %s: %v", n.Name, n.IP, n.P2PAddrs)
	}
	return a
}

// ownAddr is bootstrapAddr without the test: "" when the node advertises no such address.
func (n *swarmNode) ownAddr() string {
	for _, a := range n.P2PAddrs {
		if strings.HasPrefix(a, "/ip4/"+n.IP+"/") {
			return a
		}
	}
	return ""
}

// routingTableSize asks the node's admin API (unix socket in the data dir) for its routing-table
// size. ok is false when the admin API does not answer or says nothing about it.
func (n *swarmNode) routingTableSize() (size int, ok bool) {
	var st struct {
		P2P *struct {
			RoutingTableSize *int `json:"routing_table_size"`
		} `json:"p2p"`
	}
	if n.adminGet("/v1/status", &st) != nil || st.P2P == nil || st.P2P.RoutingTableSize == nil {
		return 0, false
	}
	return *st.P2P.RoutingTableSize, true
}

// adminGet GETs path from the node's admin API (unix socket in the data dir) and decodes the
// JSON answer into v.
func (n *swarmNode) adminGet(path string, v any) error {
	sock := filepath.Join(n.DataDir, "admin.sock")
	if _, err := os.Stat(sock); err != nil {
		return err
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://admin" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// startSwarm starts n daemons: node 1 first, then the others together, all bootstrapping from
// node 1. It returns once every node has joined the swarm (its "joined the swarm" line) and, where
// the admin API tells, every routing table holds all n-1 others: the designated fetcher of a
// digest is agreed on from the routing table, so a node that does not know everyone yet would
// pick differently.
func startSwarm(t *testing.T, n int, up *upstreamProxy, extra ...string) []*swarmNode {
	t.Helper()
	start := time.Now()
	launch := func(i int, boot []string) *swarmNode {
		ip := swarmIP()
		return launchSwarmNode(t, fmt.Sprintf("shoal-%d", i), ip, up.listenOn(t, ip), boot, extra)
	}
	first := launch(1, nil)
	first.awaitUp(t)
	nodes := []*swarmNode{first}
	boot := []string{first.bootstrapAddr(t)}
	for i := 2; i <= n; i++ {
		nodes = append(nodes, launch(i, boot))
	}
	for _, nd := range nodes[1:] {
		nd.awaitUp(t)
	}
	if n > 1 {
		for _, nd := range nodes {
			eventually(t, 30*time.Second, nd.proc, nd.Name+" in the swarm", func() error {
				if len(nd.logged("joined the swarm")) == 0 {
					return fmt.Errorf("no \"joined the swarm\" line yet")
				}
				if size, ok := nd.routingTableSize(); ok && size < n-1 {
					return fmt.Errorf("routing table holds %d peers, want %d", size, n-1)
				}
				return nil
			})
		}
	}
	t.Logf("%d shoal nodes up and joined in %s", n, time.Since(start).Round(time.Millisecond))
	return nodes
}

// nodeOf returns the node that made an upstream request (by the proxy listener it came in on).
func nodeOf(nodes []*swarmNode, r proxyReq) *swarmNode {
	for _, n := range nodes {
		if "http://"+r.Local == n.Upstream {
			return n
		}
	}
	return nil
}

// describeBy formats upstream requests with the node that made each.
func describeBy(nodes []*swarmNode, reqs []proxyReq) string {
	var b strings.Builder
	for _, r := range reqs {
		who := "?"
		if n := nodeOf(nodes, r); n != nil {
			who = n.Name
		}
		fmt.Fprintf(&b, "  %s: %s %s -> %d (%d bytes, done=%v)\n", who, r.Method, r.Path, r.Status, r.Bytes, r.Done)
	}
	return b.String()
}

// swarmImage is an image seeded into a test's own upstream registry.
type swarmImage struct {
	testImage
	BlobBytes int64 // config + layers
}

// seedSwarmImage starts a docker-registry of the test's own and pushes an image of layers ×
// size bytes of random data, uncompressed (nothing for anyone to compress away).
func seedSwarmImage(t *testing.T, seed uint64, layers int, size int64) (*registry, swarmImage) {
	t.Helper()
	reg := startRegistry(t, "swarm-upstream", filepath.Join(t.TempDir(), "storage"), registryAuth{})
	ti, err := seedImage(reg.Addr, imageSpec{repo: "swarm/app", tag: "v1", seed: seed, layers: layers, size: size, oci: true})
	if err != nil {
		t.Fatalf("seeding the swarm image: %v", err)
	}
	img := swarmImage{testImage: ti}
	r := do(t, http.MethodGet, reg.URL, "/v2/"+ti.Repo+"/manifests/"+ti.Digest, acceptAll)
	var m struct {
		Config struct{ Size int64 }   `json:"config"`
		Layers []struct{ Size int64 } `json:"layers"`
	}
	if r.Status != http.StatusOK || json.Unmarshal(r.Body, &m) != nil {
		t.Fatalf("reading back the swarm image's manifest: %d %s", r.Status, r.Body)
	}
	img.BlobBytes = m.Config.Size
	for _, l := range m.Layers {
		img.BlobBytes += l.Size
	}
	return reg, img
}

// pullResult is one client's pull through one node.
type pullResult struct {
	Node   *swarmNode
	Client string // crane or skopeo
	Dir    string // OCI layout written by the client
	Took   time.Duration
	Out    string
	Err    error
}

// pullAtOnce pulls ref through every node with a real client, crane on odd-numbered nodes and
// skopeo on even ones. Every client process is prepared, then all are exec'd at the same instant
// (a barrier). It returns when all have finished.
func pullAtOnce(t *testing.T, nodes []*swarmNode, ref string) []pullResult {
	t.Helper()
	crane, skopeo := tool(t, "crane"), tool(t, "skopeo")
	auth := filepath.Join(t.TempDir(), "auth.json")
	if err := os.WriteFile(auth, []byte(`{"auths":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	res := make([]pullResult, len(nodes))
	type job struct {
		argv []string
		env  []string
	}
	jobs := make([]job, len(nodes))
	for i, n := range nodes {
		res[i] = pullResult{Node: n, Dir: t.TempDir()}
		if i%2 == 0 {
			res[i].Client = "crane"
			jobs[i] = job{[]string{crane, "pull", "--insecure", "--format", "oci", n.Addr + "/" + ref, res[i].Dir},
				[]string{"DOCKER_CONFIG=" + t.TempDir()}}
		} else {
			res[i].Client = "skopeo"
			jobs[i] = job{[]string{skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", "--retry-times=0",
				"--preserve-digests", "docker://" + n.Addr + "/" + ref, "oci:" + res[i].Dir + ":v1"},
				[]string{"REGISTRY_AUTH_FILE=" + auth}}
		}
	}
	ctx := ctxTimeout(t, 4*time.Minute)
	var ready, done sync.WaitGroup
	barrier := make(chan struct{})
	for i := range nodes {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-barrier
			start := time.Now()
			res[i].Out, res[i].Err = runCmd(ctx, 3*time.Minute, jobs[i].env, jobs[i].argv...)
			res[i].Took = time.Since(start)
		}()
	}
	ready.Wait()
	close(barrier)
	done.Wait()
	return res
}

// checkPull asserts that a pull succeeded and left exactly the image in its OCI layout, every
// blob matching its digest.
func checkPull(t *testing.T, r pullResult, img swarmImage) {
	t.Helper()
	if r.Err != nil {
		t.Errorf("%s pull through %s (%s): %v\n%s", r.Client, r.Node.Name, r.Node.Addr, r.Err, r.Out)
		return
	}
	if got := ociLayoutDigest(t, r.Dir); got != img.Digest {
		t.Errorf("%s pull through %s: manifest digest %s, want %s", r.Client, r.Node.Name, got, img.Digest)
	}
	have := ociLayoutBlobs(t, r.Dir) // checks every file against its digest
	for _, b := range img.Blobs {
		if !have[b] {
			t.Errorf("%s pull through %s: blob %s missing from the layout", r.Client, r.Node.Name, b)
		}
	}
}

// pullTimes formats the pull durations with p50 and the slowest successful pull.
func pullTimes(rs []pullResult) (p50, slowest time.Duration, s string) {
	var ds []time.Duration
	var parts []string
	for _, r := range rs {
		if r.Err == nil {
			ds = append(ds, r.Took)
		}
		parts = append(parts, fmt.Sprintf("%s=%.2fs", r.Node.Name, r.Took.Seconds()))
	}
	slices.Sort(ds)
	if len(ds) > 0 {
		p50, slowest = ds[(len(ds)-1)/2], ds[len(ds)-1]
	}
	return p50, slowest, strings.Join(parts, " ")
}

// logSwarmReport logs, per node, where its blobs came from and what it fetched for the swarm, and
// per blob how often the upstream served it.
func logSwarmReport(t *testing.T, nodes []*swarmNode, tr upstreamBlobTraffic, img swarmImage) {
	t.Helper()
	var b strings.Builder
	for _, n := range nodes {
		var upBytes int64
		var upGETs int
		for _, r := range tr.Requests {
			if r.Method == http.MethodGet && strings.Contains(r.Path, "/blobs/") && nodeOf(nodes, r) == n {
				upBytes += r.Bytes
				upGETs++
			}
		}
		parts := countsList(n.blobSources())
		fmt.Fprintf(&b, "  %s (%s, %s): blob GETs by source [%s], fetched for the swarm: %d digests, upstream blob GETs: %d (%.1f MiB)\n",
			n.Name, n.Addr, short(n.PeerID), strings.Join(parts, " "), len(n.swarmFetches()), upGETs, float64(upBytes)/(1<<20))
	}
	for _, d := range img.Blobs {
		fmt.Fprintf(&b, "  upstream %s: %d GETs, %.1f MiB (blob %.1f MiB)\n", short(d), tr.GETs[d],
			float64(tr.PerBlob[d])/(1<<20), float64(blobSize(img, d))/(1<<20))
	}
	t.Logf("swarm report:\n%s", b.String())
}

func blobSize(img swarmImage, d string) int64 {
	if s, ok := img.LayerSizes[d]; ok {
		return s
	}
	return 0 // the config: small
}

// short abbreviates a digest or peer ID for logs.
func short(s string) string {
	s = strings.TrimPrefix(s, "sha256:")
	if len(s) > 12 {
		return s[:12]
	}
	return s
}
