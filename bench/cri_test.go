package bench

// CRI herd benchmark for issue 18: the kubelet's pull path (crictl → containerd 2.4.2's CRI image
// service → hosts.toml) on 5 nodes, each containerd with its own shoal daemon (P2P on, all
// bootstrapped from the first), against the same 5 containerds with no mirror (hosts.toml's
// server is the upstream). Run by hand:
//
//	flock /tmp/shoal-heavy.lock go test -run '^$' -bench CRIHerd -benchtime 1x -timeout 30m ./bench
//
// Needs root, docker-registry and crane (`bash .ci/install-deps`, which also builds containerd
// 2.4.2 and crictl 1.37.0 under /usr/local/lib/shoal-test/). SHOAL_BENCH_ROUNDS (default 3) sets
// the number of rounds; SHOAL_BENCH_CRI_P2P=0 runs the shoal daemons with --p2p=false (5
// independent caches: what P2P costs in time); SHOAL_BENCH_SHOAL_ARGS adds daemon flags. The upstream is docker-registry on loopback behind an unshaped counting
// proxy. Each round runs both systems, in alternating order, each on fresh containerd state,
// fresh shoal stores and a fresh proxy:
//
//   - single: node 1 pulls image A (32 MiB: config + 4 × 8 MiB random layers) alone;
//   - herd: all 5 nodes pull image B (the same size, other bytes) at the same instant.
//
// It prints per round the pull times, the ratios shoal / no mirror (single, and the slowest of
// the herd), upstream blob bytes / image blob bytes, and where the time goes: the fetch span
// (first request's start to last response's end: at the registry without a mirror, in the shoal
// daemons' access logs with one; the rest of a pull is crictl, containerd's unpack and its own
// bookkeeping), the span the upstream saw, and node 1's per-request durations and sources.

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	criContainerdDir = "/usr/local/lib/shoal-test/containerd-2.4.2"
	criCrictlDir     = "/usr/local/lib/shoal-test/crictl-1.37.0"
	criNodes         = 5
)

// criImage pushes repo:v1, config + 4 layers, each an uncompressed tar of exactly 8 MiB holding
// one file of random bytes (ChaCha8, key byte seed+i): containerd unpacks them, so they must be
// real layers whose diff_ids the config lists.
func criImage(b *testing.B, e *swarmEnv, repo string, seed byte) swarmImg {
	b.Helper()
	const layerSize = 8 << 20
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	var layers []desc
	var diffIDs []string
	img := swarmImg{repo: repo, tag: "v1", layerSize: layerSize}
	f := filepath.Join(e.dir, "cri-layer.tar")
	for i := range 4 {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		body := int64(layerSize - 3*512) // header + two zero blocks at the end
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data-%d", i), Mode: 0o644, Size: body, Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			b.Fatal(err)
		}
		var key [32]byte
		key[0] = seed + byte(i)
		if _, err := io.CopyN(tw, rand.NewChaCha8(key), body); err != nil {
			b.Fatal(err)
		}
		if err := tw.Close(); err != nil {
			b.Fatal(err)
		}
		if buf.Len() != layerSize {
			b.Fatalf("layer tar is %d bytes, want %d", buf.Len(), layerSize)
		}
		d := digestOf(buf.Bytes())
		if err := os.WriteFile(f, buf.Bytes(), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := pushBlob(e.upstream, repo, f, d); err != nil {
			b.Fatal(err)
		}
		layers = append(layers, desc{"application/vnd.oci.image.layer.v1.tar", d, layerSize})
		diffIDs = append(diffIDs, d)
		img.blobBytes += layerSize
	}
	os.Remove(f)
	config, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Cmd": []string{"/data-0"}}, "rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs}})
	if err := os.WriteFile(f, config, 0o644); err != nil {
		b.Fatal(err)
	}
	cfgDgst := digestOf(config)
	if err := pushBlob(e.upstream, repo, f, cfgDgst); err != nil {
		b.Fatal(err)
	}
	os.Remove(f)
	img.blobBytes += int64(len(config))
	mb, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": desc{"application/vnd.oci.image.config.v1+json", cfgDgst, int64(len(config))}, "layers": layers})
	req, _ := http.NewRequest(http.MethodPut, e.upstream+"/v2/"+repo+"/manifests/v1", bytes.NewReader(mb))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	if err := expect(http.DefaultClient.Do(req))(http.StatusCreated); err != nil {
		b.Fatalf("push manifest: %v", err)
	}
	img.digest = digestOf(mb)
	return img
}

// criNode is one containerd 2.4.2 with its CRI socket, in a directory of its own.
type criNode struct {
	dir, sock string
	proc      *benchProc
}

// criConfig is `containerd config default` (2.4.2) with root, state, sockets and opt moved into
// dir, no imports, NRI off and the CRI registry config_path set to dir/certs.d.
func criConfig(dir string) (string, error) {
	out, err := exec.Command(filepath.Join(criContainerdDir, "containerd"), "config", "default").Output()
	if err != nil {
		return "", fmt.Errorf("containerd config default: %v (run `bash .ci/install-deps`)", err)
	}
	cfg := string(out)
	for _, r := range []struct{ old, new string }{
		{"root = '/var/lib/containerd'", fmt.Sprintf("root = '%s/root'", dir)},
		{"state = '/run/containerd'", fmt.Sprintf("state = '%s/state'", dir)},
		{"imports = ['/etc/containerd/conf.d/*.toml']", "imports = []"},
		{"address = '/run/containerd/containerd.sock'", fmt.Sprintf("address = '%s/c.sock'", dir)},
		{"address = '/run/containerd/containerd.sock.ttrpc'", fmt.Sprintf("address = '%s/c.sock.ttrpc'", dir)},
		{"path = '/opt/containerd'", fmt.Sprintf("path = '%s/opt'", dir)},
		{"[plugins.'io.containerd.nri.v1.nri']\n    disable = false", "[plugins.'io.containerd.nri.v1.nri']\n    disable = true"},
		{"[plugins.'io.containerd.cri.v1.images'.registry]\n      config_path = ''\n",
			fmt.Sprintf("[plugins.'io.containerd.cri.v1.images'.registry]\n      config_path = '%s/certs.d'\n", dir)},
	} {
		if strings.Count(cfg, r.old) != 1 {
			return "", fmt.Errorf("containerd config default: want %q once, found it %d times", r.old, strings.Count(cfg, r.old))
		}
		cfg = strings.Replace(cfg, r.old, r.new, 1)
	}
	return cfg, nil
}

// startCRINode starts a containerd 2.4.2 whose docker.io hosts.toml has server upstream and, if
// mirror != "", that mirror first; it waits until the CRI image service answers.
func startCRINode(b *testing.B, dir, upstream, mirror string) *criNode {
	b.Helper()
	cfg, err := criConfig(dir)
	if err != nil {
		b.Fatal(err)
	}
	hosts := fmt.Sprintf("server = %q\n", upstream)
	if mirror != "" {
		hosts += fmt.Sprintf("\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", mirror)
	}
	if err := os.MkdirAll(filepath.Join(dir, "certs.d", "docker.io"), 0o755); err != nil {
		b.Fatal(err)
	}
	for name, text := range map[string]string{"config.toml": cfg, "certs.d/docker.io/hosts.toml": hosts,
		"crictl.yaml": "runtime-endpoint: unix://" + dir + "/c.sock\nimage-endpoint: unix://" + dir + "/c.sock\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	n := &criNode{dir: dir, sock: filepath.Join(dir, "c.sock")}
	if n.proc, err = startLogged(filepath.Join(dir, "containerd.log"), filepath.Join(criContainerdDir, "containerd"), "--config", filepath.Join(dir, "config.toml")); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := n.crictl(10*time.Second, "images")
		if err == nil {
			break
		}
		if n.proc.exited() || time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			b.Fatalf("containerd 2.4.2 in %s does not serve CRI: %v\n%s\n%s", dir, err, out, tailLines(string(log), 30))
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
	return n
}

func (n *criNode) crictl(timeout time.Duration, args ...string) (string, error) {
	ep := "unix://" + n.sock
	argv := append([]string{"--config", filepath.Join(n.dir, "crictl.yaml"), "--runtime-endpoint", ep, "--image-endpoint", ep,
		"--timeout", timeout.String()}, args...)
	out, err := exec.Command(filepath.Join(criCrictlDir, "crictl"), argv...).CombinedOutput()
	return string(out), err
}

// stop ends containerd and detaches whatever it left mounted under its directory.
func (n *criNode) stop() {
	n.proc.stop()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], n.dir+"/") {
			mps = append(mps, f[4])
		}
	}
	slices.SortFunc(mps, func(a, b string) int { return len(b) - len(a) })
	for _, mp := range mps {
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
	}
}

// criPull runs `crictl pull ref` on each node at the same instant and returns each one's time;
// a failed pull, or one containerd records under another digest, fails the benchmark.
func criPull(b *testing.B, nodes []*criNode, img swarmImg) []time.Duration {
	b.Helper()
	ref := "docker.io/" + img.repo + ":" + img.tag
	took := make([]time.Duration, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			out, err := n.crictl(2*time.Minute, "pull", ref)
			took[i] = time.Since(t0)
			if err != nil {
				errs[i] = fmt.Errorf("crictl pull %s on %s: %v\n%s", ref, n.dir, err, out)
			}
		}()
	}
	close(start)
	wg.Wait()
	for i, n := range nodes {
		if errs[i] != nil {
			b.Fatal(errs[i])
		}
		out, err := n.crictl(10*time.Second, "inspecti", "-o", "json", ref)
		var st struct {
			Status struct {
				RepoDigests []string `json:"repoDigests"`
			} `json:"status"`
		}
		if err != nil || json.Unmarshal([]byte(out), &st) != nil || !slices.Contains(st.Status.RepoDigests, "docker.io/"+img.repo+"@"+img.digest) {
			b.Fatalf("containerd in %s recorded %v (%v), want %s@%s", n.dir, st.Status.RepoDigests, err, img.repo, img.digest)
		}
	}
	return took
}

// criRun is one system's figures in one round.
type criRun struct {
	single         time.Duration
	herd           []time.Duration
	ampSingle, amp float64 // upstream blob bytes / image blob bytes
	where          string  // shoal: the herd's first node's request durations
	whereSingle    string  // shoal: the single pull's request durations
	// fetch span: first request's start to last response's end, at the registry (direct) or in
	// the shoal daemons' access logs (all nodes); upSingle/upHerd: the same at the upstream
	fetchSingle, fetchHerd, upSingle, upHerd time.Duration
}

func (e *swarmEnv) criRound(b *testing.B, mirror bool, imgA, imgB swarmImg) criRun {
	b.Helper()
	name := "direct"
	if mirror {
		name = "shoal"
	}
	dir, err := os.MkdirTemp(keepDir(e.dir), "cri-"+name+"-")
	if err != nil {
		b.Fatal(err)
	}
	if os.Getenv("SHOAL_BENCH_KEEP") == "" {
		defer os.RemoveAll(dir)
	} else {
		b.Logf("%s: logs kept in %s", name, dir)
	}
	proxy := startLinkProxy(b, e.upstream, math.Inf(1)) // unshaped: counts blob bytes only
	defer proxy.srv.Close()
	var shoals []*benchNode
	switch {
	case mirror && os.Getenv("SHOAL_BENCH_CRI_P2P") == "0":
		for range criNodes {
			shoals = append(shoals, e.startShoalNode(b, dir, proxy.URL, "--p2p=false"))
		}
	case mirror:
		shoals = shoalSwarm(b, e, dir, criNodes, proxy.URL, nil)
	}
	nodes := make([]*criNode, criNodes)
	for i := range nodes {
		m := ""
		if mirror {
			m = "http://" + shoals[i].addr
		}
		d := filepath.Join(dir, fmt.Sprintf("containerd-%d", i+1))
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
		nodes[i] = startCRINode(b, d, proxy.URL, m)
	}
	defer func() {
		var wg sync.WaitGroup
		for _, n := range nodes {
			wg.Go(n.stop)
		}
		for _, s := range shoals {
			wg.Go(s.proc.stop)
		}
		wg.Wait()
	}()
	var r criRun
	r.single = criPull(b, nodes[:1], imgA)[0]
	if err := proxy.settled(time.Minute); err != nil {
		b.Fatal(err)
	}
	r.ampSingle = float64(proxy.blobBytes.Load()) / float64(imgA.blobBytes)
	r.upSingle = proxy.takeSpan()
	before := proxy.blobBytes.Load()
	r.herd = criPull(b, nodes, imgB)
	if err := proxy.settled(time.Minute); err != nil {
		b.Fatal(err)
	}
	r.amp = float64(proxy.blobBytes.Load()-before) / float64(imgB.blobBytes)
	r.upHerd = proxy.takeSpan()
	r.fetchSingle, r.fetchHerd = r.upSingle, r.upHerd
	if mirror {
		r.fetchSingle, r.fetchHerd = logSpan(shoals, imgA), logSpan(shoals, imgB)
		r.where = criRequests(shoals[0], imgB)
		r.whereSingle = criRequests(shoals[0], imgA)
	}
	return r
}

// logSpan is the time from the first request's start to the last response's end for img in the
// access logs of nodes.
func logSpan(nodes []*benchNode, img swarmImg) time.Duration {
	var first, last time.Time
	for _, n := range nodes {
		for _, m := range n.logEntries() {
			p, _ := m["path"].(string)
			ts, _ := m["time"].(string)
			ns, _ := m["duration"].(float64)
			end, err := time.Parse(time.RFC3339Nano, ts)
			if m["msg"] != "request" || !strings.HasPrefix(p, "/v2/"+img.repo+"/") || err != nil {
				continue
			}
			start := end.Add(-time.Duration(ns))
			if first.IsZero() || start.Before(first) {
				first = start
			}
			if end.After(last) {
				last = end
			}
		}
	}
	return last.Sub(first)
}

// criRequests lists one shoal node's access-log lines for img: path (short), source, duration.
func criRequests(n *benchNode, img swarmImg) string {
	var parts []string
	for _, m := range n.logEntries() {
		p, _ := m["path"].(string)
		if m["msg"] != "request" || !strings.HasPrefix(p, "/v2/"+img.repo+"/") {
			continue
		}
		ns, _ := m["duration"].(float64) // slog's JSON handler: nanoseconds
		kind := "manifest"
		if strings.Contains(p, "/blobs/") {
			kind = "blob"
		}
		if i := strings.LastIndex(p, ":"); i >= 0 && len(p)-i > 7 {
			kind += " " + p[i+1:i+7]
		}
		parts = append(parts, fmt.Sprintf("%s %v %s %.0fms", m["method"], kind, m["source"], ns/1e6))
	}
	return strings.Join(parts, "; ")
}

// BenchmarkCRIHerd: see the top of this file.
func BenchmarkCRIHerd(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("BenchmarkCRIHerd runs containerd: it needs root")
	}
	for _, bin := range []string{filepath.Join(criContainerdDir, "containerd"), filepath.Join(criCrictlDir, "crictl")} {
		if _, err := os.Stat(bin); err != nil {
			b.Fatalf("%v: run `bash .ci/install-deps` (it builds containerd 2.4.2 and crictl 1.37.0 there)", err)
		}
	}
	e := getSwarmEnv(b)
	b.Cleanup(func() { e.close(); swarmOnce, theSwarmEnv = sync.Once{}, nil })
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("SHOAL_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	for range b.N {
		var sb strings.Builder
		var ratios, herdRatios, amps []float64
		fmt.Fprintf(&sb, "CRI herd: %d nodes, containerd 2.4.2 + crictl 1.37.0 pull, 32 MiB image (config + 4 × 8 MiB), upstream docker-registry on loopback, unshaped\n", criNodes)
		fmt.Fprintf(&sb, "  %-5s %-6s %9s %-34s %9s %9s %-23s %s\n", "round", "system", "single s", "herd s (5 nodes)", "upstr× 1", "upstr× 5",
			"fetch s: single, herd", "upstream s: single, herd")
		for r := range rounds {
			imgA := criImage(b, e, fmt.Sprintf("bench/cri-r%d-single", r), byte(10*r))
			imgB := criImage(b, e, fmt.Sprintf("bench/cri-r%d-herd", r), byte(10*r+5))
			runs := map[bool]criRun{}
			order := []bool{true, false}
			if r%2 == 1 {
				order = []bool{false, true}
			}
			for _, m := range order {
				runs[m] = e.criRound(b, m, imgA, imgB)
			}
			for _, m := range order {
				run, name := runs[m], map[bool]string{true: "shoal", false: "direct"}[m]
				var hs []string
				for _, d := range run.herd {
					hs = append(hs, fmt.Sprintf("%.2f", d.Seconds()))
				}
				fmt.Fprintf(&sb, "  %-5d %-6s %9.3f %-34s %9.3f %9.3f %-23s %.3f, %.3f\n", r+1, name, run.single.Seconds(), strings.Join(hs, " "), run.ampSingle, run.amp,
					fmt.Sprintf("%.3f, %.3f", run.fetchSingle.Seconds(), run.fetchHerd.Seconds()), run.upSingle.Seconds(), run.upHerd.Seconds())
			}
			s, d := runs[true], runs[false]
			ratio := s.single.Seconds() / d.single.Seconds()
			herd := slices.Max(s.herd).Seconds() / slices.Max(d.herd).Seconds()
			ratios, herdRatios, amps = append(ratios, ratio), append(herdRatios, herd), append(amps, s.amp)
			fmt.Fprintf(&sb, "  round %d: single cold pull shoal/direct %.2f×, slowest herd pull %.2f×, shoal upstream %.3f× (direct %.3f×)\n",
				r+1, ratio, herd, s.amp, d.amp)
			fmt.Fprintf(&sb, "      shoal node 1, single pull requests: %s\n", s.whereSingle)
			fmt.Fprintf(&sb, "      shoal node 1, herd requests: %s\n", s.where)
		}
		slices.Sort(ratios)
		slices.Sort(herdRatios)
		fmt.Fprintf(&sb, "  median over %d rounds: single %.2f×, herd slowest %.2f× (target ≤ 1.2× both), shoal upstream max %.3f×\n",
			rounds, ratios[len(ratios)/2], herdRatios[len(herdRatios)/2], slices.Max(amps))
		b.ReportMetric(ratios[len(ratios)/2], "single-ratio")
		b.ReportMetric(herdRatios[len(herdRatios)/2], "herd-ratio")
		b.ReportMetric(slices.Max(amps), "shoal-upstream-x")
		// On stdout, whole: b.Log output of a benchmark is cut to 10 lines without -v.
		fmt.Print(sb.String())
	}
}
