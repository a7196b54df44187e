package bench

// Swarm benchmark for issue 5: N nodes pull the same uncached image at the same instant, each
// through its own node-local mirror, with crane; the one upstream (distribution's docker-registry)
// sits behind a counting proxy that shapes all blob bodies to one slow link. Run by hand:
//
//	go test -run '^$' -bench 'Swarm/N=(1|5|10)$' -benchtime 1x -timeout 60m ./bench
//	go test -run '^$' -bench 'Swarm/N=20$' -benchtime 1x -timeout 60m ./bench
//
// Needs docker-registry and crane on PATH (`bash .ci/install-deps`; crane:
// `go install github.com/google/go-containerregistry/cmd/crane@v0.22.1`). Knobs (environment):
//
//	SHOAL_BENCH_LINK_MBIT   upstream link in Mbit/s shared by all blob downloads (default 400)
//	SHOAL_BENCH_SYSTEMS     comma list of systems to run (default shoal-p2p,shoal-p2p-eager,shoal-local,registry-proxy)
//	SHOAL_BENCH_SHOAL_ARGS  extra `shoal daemon` flags for both shoal systems, e.g. "--log-level debug"
//	SHOAL_BENCH_KEEP=1      keep each run's node directories and logs (path printed) instead of deleting them
//	SHOAL_BENCH_BINARY      a prebuilt shoal binary to run instead of building one (to profile it, say)
//
// For each N it runs, one after the other on fresh nodes and a fresh proxy, in the same run:
//
//   - shoal-p2p: N shoal daemons with P2P on, each on its own loopback address (127.92.x.y), all
//     bootstrapping from the first;
//   - shoal-p2p-eager: the same with --p2p-verify-before-serving=false (clients get peer bytes
//     as they arrive instead of once the whole blob verified);
//   - shoal-local: N independent shoal caches (--p2p=false), the baseline without the swarm;
//   - registry-proxy: N docker-registry instances in proxy mode (proxy: remoteurl:), one per node.
//
// and prints upstream blob bytes / image blob bytes, and p50/p99/max of the N pull times (from
// the instant all N crane processes are exec'd to each one's exit). The image is config + 4
// random layers: 4 × 52 MiB (208 MiB) for N ≤ 10, and 4 × 26 MiB (104 MiB) for N = 20 (20
// daemons and 20 clients on two cores). Rows for N > 1 also give each system's p99 over the
// single-node shoal-p2p pull time of the same image (from the N = 1 run, or a "shoal-p2p-single"
// reference run made first); issue 5 wants ≤ 1.5 for shoal-p2p at N = 20. The cpu% column is the
// share of the machine's CPU all processes used during the pulls: near 100 the figures measure
// the machine, not the link. Each run also prints upstream GETs per blob, where the nodes' blobs
// came from (X-Shoal-Source in their access logs) and their notable log lines.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-mirror/shoal/internal/testutil"
)

// swarmEnv is built once per process: the shoal binary, the upstream registry and the images.
type swarmEnv struct {
	dir      string
	shoal    string
	crane    string
	registry string // docker-registry binary
	upstream string // http://127.0.0.1:PORT
	upProc   *benchProc
	images   map[int64]swarmImg // by layer size
}

// swarmImg is a pushed image.
type swarmImg struct {
	repo, tag string
	digest    string // manifest digest
	blobBytes int64  // config + layers
	layerSize int64
}

var (
	swarmOnce   sync.Once
	theSwarmEnv *swarmEnv
	swarmEnvErr error
	// singleP2P is the N = 1 shoal-p2p pull time of each image (by layer size) in this
	// process, the reference for N > 1.
	singleP2P = map[int64]time.Duration{}
	ipSeq     atomic.Int32
)

func getSwarmEnv(b *testing.B) *swarmEnv {
	b.Helper()
	swarmOnce.Do(func() { theSwarmEnv, swarmEnvErr = setupSwarm() })
	if swarmEnvErr != nil {
		b.Fatal(swarmEnvErr)
	}
	return theSwarmEnv
}

func setupSwarm() (*swarmEnv, error) {
	dir, err := os.MkdirTemp("", "shoal-bench-swarm-")
	if err != nil {
		return nil, err
	}
	e := &swarmEnv{dir: dir, images: map[int64]swarmImg{}}
	if e.registry, err = exec.LookPath("docker-registry"); err != nil {
		return e, fmt.Errorf("docker-registry not found: run `bash .ci/install-deps` (apt-get install docker-registry)")
	}
	if e.crane, err = lookTool("crane"); err != nil {
		return e, fmt.Errorf("crane not found: go install github.com/google/go-containerregistry/cmd/crane@v0.22.1")
	}
	if e.shoal, err = buildShoal(dir); err != nil {
		return e, err
	}
	addr, err := freeAddr()
	if err != nil {
		return e, err
	}
	cfg := registryConfig(filepath.Join(dir, "upstream"), addr, "")
	cfgPath := filepath.Join(dir, "upstream.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return e, err
	}
	if e.upProc, err = startLogged(filepath.Join(dir, "upstream.log"), e.registry, "serve", cfgPath); err != nil {
		return e, err
	}
	e.upstream = "http://" + addr
	if err := waitOK(e.upstream+"/v2/", 30*time.Second); err != nil {
		return e, err
	}
	return e, nil
}

func (e *swarmEnv) close() {
	if e.upProc != nil {
		e.upProc.stop()
	}
	os.RemoveAll(e.dir)
}

// lookTool finds a program on PATH or in GOPATH/bin (where go install puts crane).
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return "", err
	}
	p := filepath.Join(strings.TrimSpace(string(out)), "bin", name)
	if _, err := os.Stat(p); err != nil {
		return "", err
	}
	return p, nil
}

// registryConfig is docker-registry's configuration; remote != "" makes it a pull-through proxy.
func registryConfig(root, addr, remote string) string {
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: %s\n  secret: bench\nhealth:\n  storagedriver:\n    enabled: false\n",
		root, addr)
	if remote != "" {
		cfg += fmt.Sprintf("proxy:\n  remoteurl: %s\n", remote)
	}
	return cfg
}

// benchProc is a child process in its own process group, with its output in a log file.
type benchProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
}

// startLogged starts argv with its output in logPath; Pdeathsig ends it with the benchmark.
func startLogged(logPath string, argv ...string) (*benchProc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer lf.Close() // the child has its own descriptor
	c := exec.Command(argv[0], argv[1:]...)
	c.Stdout, c.Stderr = lf, lf
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.Start(); err != nil {
		return nil, err
	}
	p := &benchProc{cmd: c, done: make(chan struct{})}
	go func() { c.Wait(); close(p.done) }()
	return p, nil
}

func (p *benchProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the group, SIGKILL after 15 s; safe to call more than once.
func (p *benchProc) stop() {
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// image pushes (once) config + 4 random layers of layerSize bytes.
func (e *swarmEnv) image(b *testing.B, layerSize int64) swarmImg {
	b.Helper()
	if img, ok := e.images[layerSize]; ok {
		return img
	}
	repo := fmt.Sprintf("bench/swarm-%dm", layerSize>>20)
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cfgFile := filepath.Join(e.dir, "config.json")
	if err := os.WriteFile(cfgFile, config, 0o644); err != nil {
		b.Fatal(err)
	}
	cfgDgst := digestOf(config)
	if err := pushBlob(e.upstream, repo, cfgFile, cfgDgst); err != nil {
		b.Fatal(err)
	}
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	man := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{2, "application/vnd.oci.image.manifest.v1+json",
		desc{"application/vnd.oci.image.config.v1+json", cfgDgst, int64(len(config))}, nil}
	img := swarmImg{repo: repo, tag: "v1", blobBytes: int64(len(config)), layerSize: layerSize}
	for i := range 4 {
		f := filepath.Join(e.dir, "layer.bin")
		d, err := writeRandom(f, uint64(100+layerSize>>20)*10+uint64(i), layerSize)
		if err != nil {
			b.Fatal(err)
		}
		if err := pushBlob(e.upstream, repo, f, d); err != nil {
			b.Fatal(err)
		}
		os.Remove(f)
		man.Layers = append(man.Layers, desc{"application/vnd.oci.image.layer.v1.tar", d, layerSize})
		img.blobBytes += layerSize
	}
	mb, _ := json.Marshal(man)
	req, _ := http.NewRequest(http.MethodPut, e.upstream+"/v2/"+repo+"/manifests/v1", strings.NewReader(string(mb)))
	req.Header.Set("Content-Type", man.MediaType)
	if err := expect(http.DefaultClient.Do(req))(http.StatusCreated); err != nil {
		b.Fatalf("push manifest: %v", err)
	}
	img.digest = digestOf(mb)
	e.images[layerSize] = img
	return img
}

// ---- the upstream link: a counting, shaping reverse proxy ----

// linkProxy sits between the nodes and the upstream: it counts the blob body bytes it relays
// and paces all of them together to one link rate.
type linkProxy struct {
	URL       string
	srv       *http.Server
	blobBytes atomic.Int64
	active    atomic.Int64

	getsMu sync.Mutex
	gets   map[string]int // blob GETs per digest
	// first request's start and last response's end since the last takeSpan
	first, last time.Time

	link *testutil.Link
}

// takeSpan is the time from the first request's start to the last response's end since the
// previous call (0: no request).
func (p *linkProxy) takeSpan() time.Duration {
	p.getsMu.Lock()
	defer p.getsMu.Unlock()
	d := p.last.Sub(p.first)
	p.first, p.last = time.Time{}, time.Time{}
	return max(d, 0)
}

func startLinkProxy(b *testing.B, target string, bytesPerSec float64) *linkProxy {
	b.Helper()
	tu, _ := url.Parse(target)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	p := &linkProxy{URL: "http://" + ln.Addr().String(), link: testutil.NewLink(bytesPerSec), gets: map[string]int{}}
	rp := testutil.ReverseProxy(tu, func(resp *http.Response) error {
		if resp.Request.Method == http.MethodGet && strings.Contains(resp.Request.URL.Path, "/blobs/") {
			resp.Body = p.link.Body(&countBody{r: resp.Body, p: p})
			p.getsMu.Lock()
			p.gets[resp.Request.URL.Path[strings.LastIndex(resp.Request.URL.Path, "/")+1:]]++
			p.getsMu.Unlock()
		}
		return nil
	})
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.active.Add(1)
		defer p.active.Add(-1) // also when ReverseProxy aborts with ErrAbortHandler
		t0 := time.Now()
		defer func() {
			p.getsMu.Lock()
			if p.first.IsZero() || t0.Before(p.first) {
				p.first = t0
			}
			if now := time.Now(); now.After(p.last) {
				p.last = now
			}
			p.getsMu.Unlock()
		}()
		rp.ServeHTTP(w, r)
	})}
	go p.srv.Serve(ln)
	b.Cleanup(func() { p.srv.Close() })
	return p
}

// settled waits until no request is in flight (fills that outlive the clients count too).
func (p *linkProxy) settled(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for p.active.Load() > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d upstream requests still running after %s", p.active.Load(), timeout)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	return nil
}

// countBody counts the blob body bytes the proxy relays.
type countBody struct {
	r io.ReadCloser
	p *linkProxy
}

func (cb *countBody) Read(b []byte) (int, error) {
	n, err := cb.r.Read(b)
	cb.p.blobBytes.Add(int64(n))
	return n, err
}

func (cb *countBody) Close() error { return cb.r.Close() }

// ---- nodes ----

// nodeIP returns a fresh loopback address in 127.92.0.0/16 for one node.
func nodeIP() string {
	n := int(ipSeq.Add(1))
	return fmt.Sprintf("127.92.%d.%d", (os.Getpid()+n/250)%250, n%250+2)
}

// benchNode is one mirror process of any of the systems.
type benchNode struct {
	ip, addr string // addr: the mirror's IP:PORT
	dataDir  string
	logPath  string
	proc     *benchProc
}

// logEntries parses the node's JSON log lines.
func (n *benchNode) logEntries() []map[string]any {
	f, err := os.Open(n.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func (n *benchNode) find(msg string) map[string]any {
	for _, m := range n.logEntries() {
		if m["msg"] == msg {
			return m
		}
	}
	return nil
}

// pollNode polls f until it returns nil, the node exits, or the timeout passes.
func pollNode(n *benchNode, timeout time.Duration, f func() error) error {
	return testutil.Poll(timeout, f, func(last error) error {
		if !n.proc.exited() {
			return nil
		}
		b, _ := os.ReadFile(n.logPath)
		return fmt.Errorf("%s exited: %v\n%s", n.ip, last, tailLines(string(b), 30))
	})
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// startShoalNode starts `shoal daemon` on a fresh loopback address and waits for its mirror API.
func (e *swarmEnv) startShoalNode(b *testing.B, dir, upstream string, extra ...string) *benchNode {
	b.Helper()
	n := &benchNode{ip: nodeIP()}
	var err error
	if n.dataDir, err = os.MkdirTemp(dir, "shoal-"); err != nil {
		b.Fatal(err)
	}
	n.logPath = n.dataDir + ".log"
	argv := append([]string{e.shoal, "daemon", "--listen", n.ip + ":0", "--data-dir", n.dataDir, "--log-format", "json",
		"--registry", "docker.io=" + upstream, "--metrics-listen", "off"}, extra...)
	argv = append(argv, strings.Fields(os.Getenv("SHOAL_BENCH_SHOAL_ARGS"))...)
	for i, a := range argv {
		argv[i] = strings.ReplaceAll(a, "{ip}", n.ip)
	}
	if n.proc, err = startLogged(n.logPath, argv...); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(n.proc.stop)
	if err := pollNode(n, 60*time.Second, func() error {
		m := n.find("shoal mirror listening")
		if m == nil {
			return fmt.Errorf("no \"shoal mirror listening\" line")
		}
		n.addr, _ = m["addr"].(string)
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	return n
}

// admin GETs path from a shoal node's admin API (unix socket in its data dir) into v.
func (n *benchNode) admin(path string, v any) error {
	sock := filepath.Join(n.dataDir, "admin.sock")
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := c.Get("http://admin" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// routingTable asks a shoal node's admin API for its routing-table size (ok=false: unknown).
func (n *benchNode) routingTable() (int, bool) {
	var st struct {
		P2P *struct {
			RoutingTableSize *int `json:"routing_table_size"`
		} `json:"p2p"`
	}
	if n.admin("/v1/status", &st) != nil || st.P2P == nil || st.P2P.RoutingTableSize == nil {
		return 0, false
	}
	return *st.P2P.RoutingTableSize, true
}

// peerUpload is how many bytes a shoal node has sent to its peers (admin API; -1: unknown).
func (n *benchNode) peerUpload() int64 {
	var ps struct {
		Peers []struct {
			BytesOut int64 `json:"bytes_out"`
		} `json:"peers"`
	}
	if n.admin("/v1/peers", &ps) != nil {
		return -1
	}
	var sum int64
	for _, p := range ps.Peers {
		sum += p.BytesOut
	}
	return sum
}

// system starts N mirrors in front of upstream and returns their addresses.
type system struct {
	name  string
	start func(b *testing.B, e *swarmEnv, dir string, n int, upstream string) []*benchNode
}

var systems = []system{
	{"shoal-p2p", startShoalSwarm()},
	// The same with p2p.verify_before_serving off: clients get peer bytes as they arrive.
	{"shoal-p2p-eager", startShoalSwarm("--p2p-verify-before-serving=false")},
	{"shoal-local", func(b *testing.B, e *swarmEnv, dir string, n int, upstream string) []*benchNode {
		nodes := make([]*benchNode, n)
		for i := range nodes {
			nodes[i] = e.startShoalNode(b, dir, upstream, "--p2p=false")
		}
		return nodes
	}},
	{"registry-proxy", startRegistryProxies},
}

// startShoalSwarm starts node 1, then the others bootstrapping from it, and waits until every
// node has joined and (where the admin API says) knows all the others; extra are more flags.
func startShoalSwarm(extra ...string) func(b *testing.B, e *swarmEnv, dir string, n int, upstream string) []*benchNode {
	return func(b *testing.B, e *swarmEnv, dir string, n int, upstream string) []*benchNode {
		return shoalSwarm(b, e, dir, n, upstream, extra)
	}
}

func shoalSwarm(b *testing.B, e *swarmEnv, dir string, n int, upstream string, extra []string) []*benchNode {
	b.Helper()
	p2p := append([]string{"--p2p=true", "--p2p-listen", "/ip4/{ip}/tcp/0"}, extra...)
	first := e.startShoalNode(b, dir, upstream, p2p...)
	boot := p2pAddr(b, first)
	nodes := []*benchNode{first}
	for range n - 1 {
		nodes = append(nodes, e.startShoalNode(b, dir, upstream, append(p2p, "--bootstrap", boot)...))
	}
	if n == 1 {
		return nodes
	}
	for _, nd := range nodes {
		waitJoined(b, nd, n-1)
	}
	return nodes
}

// p2pAddr is a shoal node's libp2p address on its loopback IP, for others to bootstrap from.
func p2pAddr(b *testing.B, nd *benchNode) string {
	b.Helper()
	var addr string
	if err := pollNode(nd, 30*time.Second, func() error {
		m := nd.find("p2p node up")
		if m == nil {
			return fmt.Errorf("no \"p2p node up\" line")
		}
		addrs, _ := m["addrs"].([]any)
		for _, a := range addrs {
			if s, _ := a.(string); strings.HasPrefix(s, "/ip4/"+nd.ip+"/") {
				addr = s
			}
		}
		if addr == "" {
			return fmt.Errorf("no address on %s in %v", nd.ip, addrs)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	return addr
}

// waitJoined waits until nd has joined the swarm and (where the admin API says) knows peers others.
func waitJoined(b *testing.B, nd *benchNode, peers int) {
	b.Helper()
	if err := pollNode(nd, 60*time.Second, func() error {
		if nd.find("joined the swarm") == nil {
			return fmt.Errorf("not joined")
		}
		if size, ok := nd.routingTable(); ok && size < peers {
			return fmt.Errorf("routing table %d of %d", size, peers)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
}

// startRegistryProxies starts n docker-registry instances in proxy mode, each with its storage.
func startRegistryProxies(b *testing.B, e *swarmEnv, dir string, n int, upstream string) []*benchNode {
	b.Helper()
	nodes := make([]*benchNode, n)
	for i := range nodes {
		nd := &benchNode{ip: nodeIP()}
		var err error
		if nd.dataDir, err = os.MkdirTemp(dir, "registry-"); err != nil {
			b.Fatal(err)
		}
		ln, err := net.Listen("tcp", nd.ip+":0")
		if err != nil {
			b.Fatal(err)
		}
		nd.addr = ln.Addr().String()
		ln.Close() // a fresh address of its own: nobody else binds on it
		cfg := filepath.Join(nd.dataDir, "config.yml")
		if err := os.WriteFile(cfg, []byte(registryConfig(filepath.Join(nd.dataDir, "storage"), nd.addr, upstream)), 0o644); err != nil {
			b.Fatal(err)
		}
		nd.logPath = nd.dataDir + ".log"
		if nd.proc, err = startLogged(nd.logPath, e.registry, "serve", cfg); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nd.proc.stop)
		nodes[i] = nd
	}
	for _, nd := range nodes {
		if err := pollNode(nd, 30*time.Second, func() error {
			resp, err := http.Get("http://" + nd.addr + "/v2/")
			if err != nil {
				return err
			}
			resp.Body.Close()
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	return nodes
}

// ---- the measurement ----

// swarmRun is one system's figures for one N.
type swarmRun struct {
	system        string
	n             int
	amp           float64 // upstream blob bytes / image blob bytes
	p50, p99, max time.Duration
	failed        int
	cpu           float64 // share of the machine's CPU used from the barrier to the last exit
	notes         string  // what happened: upstream GETs per blob, where nodes' blobs came from, log lines
}

// procCPU returns a live process's user+system CPU time so far (Linux /proc, 100 ticks/s).
func procCPU(pid int) time.Duration {
	bs, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which is in parentheses and may hold spaces).
	f := strings.Fields(string(bs[strings.LastIndexByte(string(bs), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// selfCPU is this process's CPU time (the link proxy runs in it).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuSplit is the CPU time the processes of one pull used, by role.
type cpuSplit struct{ mirrors, clients, harness time.Duration }

func (c cpuSplit) total() time.Duration { return c.mirrors + c.clients + c.harness }

// pullAll execs one crane pull per node at the same instant and returns each one's duration and
// the CPU time all processes involved used meanwhile (mirrors, clients, this process: the link
// proxy and, for registry-proxy, nothing else).
func (e *swarmEnv) pullAll(b *testing.B, dir string, nodes []*benchNode, img swarmImg) ([]time.Duration, []error, cpuSplit) {
	b.Helper()
	n := len(nodes)
	took := make([]time.Duration, n)
	errs := make([]error, n)
	cmds := make([]*exec.Cmd, n)
	dsts := make([]string, n)
	for i, nd := range nodes {
		dsts[i] = filepath.Join(dir, fmt.Sprintf("pull-%d", i))
		cfg := filepath.Join(dir, fmt.Sprintf("docker-%d", i))
		os.MkdirAll(cfg, 0o700)
		c := exec.Command(e.crane, "pull", "--insecure", "--format", "oci", nd.addr+"/"+img.repo+":"+img.tag, dsts[i])
		c.Env = append(os.Environ(), "DOCKER_CONFIG="+cfg)
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmds[i] = c
	}
	var ready, done sync.WaitGroup
	barrier := make(chan struct{})
	for i := range n {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-barrier
			start := time.Now()
			out, err := cmds[i].CombinedOutput()
			took[i] = time.Since(start)
			if err != nil {
				errs[i] = fmt.Errorf("crane pull via %s: %v\n%s", nodes[i].addr, err, tailLines(string(out), 5))
				return
			}
			errs[i] = checkLayout(dsts[i], img)
		}()
	}
	ready.Wait()
	var cpu cpuSplit
	self0 := selfCPU()
	for _, nd := range nodes {
		cpu.mirrors -= procCPU(nd.proc.cmd.Process.Pid)
	}
	close(barrier)
	done.Wait()
	cpu.harness = selfCPU() - self0
	for _, nd := range nodes {
		cpu.mirrors += procCPU(nd.proc.cmd.Process.Pid)
	}
	for _, c := range cmds {
		if c.ProcessState != nil {
			cpu.clients += c.ProcessState.UserTime() + c.ProcessState.SystemTime()
		}
	}
	for _, d := range dsts {
		os.RemoveAll(d)
	}
	return took, errs, cpu
}

// checkLayout checks the OCI layout names the image's manifest (crane verified every blob's
// digest while reading it).
func checkLayout(dir string, img swarmImg) error {
	bs, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return err
	}
	if !strings.Contains(string(bs), img.digest) {
		return fmt.Errorf("%s: index.json does not name %s: %s", dir, img.digest, bs)
	}
	return nil
}

// keepDir is where runs put their nodes: dir, or with SHOAL_BENCH_KEEP=1 a directory that
// outlives the benchmark (for reading the nodes' logs afterwards).
// envDuration reads a duration knob from the environment (def when unset).
func envDuration(b *testing.B, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	return d
}

func keepDir(dir string) string {
	if os.Getenv("SHOAL_BENCH_KEEP") == "" {
		return dir
	}
	d, err := os.MkdirTemp("", "shoal-bench-swarm-kept-")
	if err != nil {
		return dir
	}
	return d
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func linkRate() (float64, float64) {
	mbit := 400.0
	if v := os.Getenv("SHOAL_BENCH_LINK_MBIT"); v != "" {
		if f, err := strconv.ParseFloat(v, 64); err == nil && f > 0 {
			mbit = f
		}
	}
	return mbit, mbit * 1e6 / 8
}

func selectedSystems() []system {
	want := os.Getenv("SHOAL_BENCH_SYSTEMS")
	if want == "" {
		return systems
	}
	var out []system
	for _, s := range systems {
		if slices.Contains(strings.Split(want, ","), s.name) {
			out = append(out, s)
		}
	}
	return out
}

// describeRun summarises a run: upstream GETs per blob, and for shoal nodes the sources of the
// blobs they served (access log) and how often each other log message came up.
func describeRun(p *linkProxy, nodes []*benchNode) string {
	var parts []string
	p.getsMu.Lock()
	for d, c := range p.gets {
		parts = append(parts, fmt.Sprintf("%s×%d", strings.TrimPrefix(d, "sha256:")[:8], c))
	}
	p.getsMu.Unlock()
	slices.Sort(parts)
	out := "upstream GETs per blob: " + strings.Join(parts, " ")
	sources, msgs := map[string]int{}, map[string]int{}
	for _, nd := range nodes {
		for _, m := range nd.logEntries() {
			msg, _ := m["msg"].(string)
			if msg == "request" {
				if path, _ := m["path"].(string); m["method"] == "GET" && strings.Contains(path, "/blobs/") {
					src, _ := m["source"].(string)
					sources[src]++
				}
				continue
			}
			if lvl, _ := m["level"].(string); lvl != "INFO" || msg == "fetching for the swarm" || strings.Contains(msg, "resum") {
				msgs[msg]++
			}
		}
	}
	var ups []int64
	for _, nd := range nodes {
		if u := nd.peerUpload(); u > 0 {
			ups = append(ups, u)
		}
	}
	if len(ups) > 0 {
		slices.Sort(ups)
		var sum int64
		for _, u := range ups {
			sum += u
		}
		out += fmt.Sprintf("\n      sent to peers: %.0f MiB in all by %d nodes, max %.0f MiB by one node, median %.0f MiB",
			float64(sum)/(1<<20), len(ups), float64(ups[len(ups)-1])/(1<<20), float64(ups[len(ups)/2])/(1<<20))
	}
	if len(sources) > 0 {
		parts = parts[:0]
		for k, v := range sources {
			parts = append(parts, fmt.Sprintf("%s×%d", k, v))
		}
		slices.Sort(parts)
		out += "\n      blob GETs answered by source: " + strings.Join(parts, " ")
	}
	if len(msgs) > 0 {
		parts = parts[:0]
		for k, v := range msgs {
			parts = append(parts, fmt.Sprintf("%q×%d", k, v))
		}
		slices.Sort(parts)
		out += "\n      log lines: " + strings.Join(parts, " ")
	}
	return out
}

// BenchmarkSwarm runs, for N = 1, 5, 10, 20, the cold pull of one image on N nodes at once
// through shoal's swarm and the two baselines, over the same shaped upstream link.
func BenchmarkSwarm(b *testing.B) {
	e := getSwarmEnv(b)
	b.Cleanup(func() { e.close(); swarmOnce, theSwarmEnv = sync.Once{}, nil })
	mbit, rate := linkRate()
	for _, n := range []int{1, 5, 10, 20} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			layer := int64(52 << 20)
			if n > 10 {
				layer = 26 << 20
			}
			img := e.image(b, layer)
			var runs []swarmRun
			if _, ok := singleP2P[layer]; !ok && n > 1 {
				// No N = 1 run of this image yet: one single-node pull as the reference.
				r := e.runSystem(b, systems[0], 1, img, rate)
				r.system = "shoal-p2p-single"
				runs = append(runs, r)
			}
			for range b.N {
				for _, sys := range selectedSystems() {
					runs = append(runs, e.runSystem(b, sys, n, img, rate))
				}
			}
			b.StopTimer()
			var sb strings.Builder
			fmt.Fprintf(&sb, "N=%d, image %.0f MiB (4 layers), upstream link %.0f Mbit/s (%.1f MiB/s); one line per system and run:\n",
				n, float64(img.blobBytes)/(1<<20), mbit, rate/(1<<20))
			fmt.Fprintf(&sb, "  %-17s %10s %8s %8s %8s %7s %5s %s\n", "system", "upstream×", "p50 s", "p99 s", "max s", "failed", "cpu%", "p99/(shoal-p2p at N=1, same image)")
			for _, r := range runs {
				ref := "-"
				if single := singleP2P[layer]; single > 0 && r.n > 1 {
					ref = fmt.Sprintf("%.2f", r.p99.Seconds()/single.Seconds())
				}
				fmt.Fprintf(&sb, "  %-17s %10.3f %8.2f %8.2f %8.2f %7d %5.0f %s\n", r.system, r.amp, r.p50.Seconds(), r.p99.Seconds(), r.max.Seconds(), r.failed, 100*r.cpu, ref)
				fmt.Fprintf(&sb, "      %s\n", r.notes)
				b.ReportMetric(r.amp, r.system+"-upstream-x")
				b.ReportMetric(r.p99.Seconds(), r.system+"-p99-s")
			}
			// On stdout, whole: b.Log output of a benchmark is cut to 10 lines without -v.
			fmt.Print(sb.String())
		})
	}
}

// runSystem starts n mirrors of one system on a fresh proxy, pulls at once, stops them.
func (e *swarmEnv) runSystem(b *testing.B, sys system, n int, img swarmImg, rate float64) swarmRun {
	b.Helper()
	dir, err := os.MkdirTemp(keepDir(e.dir), fmt.Sprintf("%s-N%d-", sys.name, n))
	if err != nil {
		b.Fatal(err)
	}
	if os.Getenv("SHOAL_BENCH_KEEP") == "" {
		defer os.RemoveAll(dir)
	} else {
		b.Logf("%s N=%d: node logs kept in %s", sys.name, n, dir)
	}
	proxy := startLinkProxy(b, e.upstream, rate)
	nodes := sys.start(b, e, dir, n, proxy.URL)
	took, errs, cpu := e.pullAll(b, dir, nodes, img)
	if err := proxy.settled(2 * time.Minute); err != nil {
		b.Log(err)
	}
	run := swarmRun{system: sys.name, n: n, amp: float64(proxy.blobBytes.Load()) / float64(img.blobBytes)}
	var ok []time.Duration
	for i, err := range errs {
		if err != nil {
			run.failed++
			b.Logf("%s N=%d: %v", sys.name, n, err)
			continue
		}
		ok = append(ok, took[i])
	}
	run.p50, run.p99, run.max = percentile(ok, 0.5), percentile(ok, 0.99), percentile(ok, 1)
	if wall := percentile(took, 1); wall > 0 {
		run.cpu = cpu.total().Seconds() / (wall.Seconds() * float64(runtime.NumCPU()))
	}
	run.notes = fmt.Sprintf("cpu-s mirrors %.1f, clients %.1f, harness %.1f; %s",
		cpu.mirrors.Seconds(), cpu.clients.Seconds(), cpu.harness.Seconds(), describeRun(proxy, nodes))
	if sys.name == "shoal-p2p" && n == 1 && run.failed == 0 {
		singleP2P[img.layerSize] = run.max
	}
	// Stop this system's nodes now (not at the end of the benchmark): the next system gets the CPU.
	var wg sync.WaitGroup
	for _, nd := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); nd.proc.stop() }()
	}
	wg.Wait()
	proxy.srv.Close()
	return run
}
