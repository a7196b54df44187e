package bench

// Cluster preheat benchmark (issue 17): `shoal pull --cluster` of a 200 MiB image (config + 4 ×
// 50 MiB random layers) on N = 10 shoal daemons, each reaching the upstream through its own link
// shaped to 100 MiB/s (the link proxy above, one per node), against the time one client takes to
// pull the same image straight from the upstream over one such link (crane), and one shoal node
// alone (`shoal pull`, P2P off) over its link. Issue 17 wants the preheat done on every node
// within 1.5× the direct pull. Run by hand, alone on the machine:
//
//	flock /tmp/shoal-heavy.lock go test -run '^$' -bench Preheat -benchtime 1x -timeout 30m ./bench
//
// Knobs: SHOAL_BENCH_PREHEAT_N (nodes, default 10), SHOAL_BENCH_PREHEAT_MIBPS (each link,
// default 100), SHOAL_BENCH_PREHEAT_LAYER_MIB (each of the 4 layers, default 50).
// Peer-to-peer traffic runs over loopback unshaped (a LAN faster than the WAN link).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func envInt(b *testing.B, name string, def int) int {
	b.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		b.Fatalf("%s=%q: want a positive number", name, s)
	}
	return v
}

// shoalCmd runs the shoal CLI against a node's admin API and returns its output.
func (e *swarmEnv) shoalCmd(b *testing.B, nd *benchNode, args ...string) (string, error) {
	b.Helper()
	argv := append([]string{"--admin", "unix:" + filepath.Join(nd.dataDir, "admin.sock")}, args...)
	c := exec.Command(e.shoal, argv...)
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c.Stderr = c.Stdout
	pipe, err := c.StdoutPipe()
	if err != nil {
		return "", err
	}
	start := time.Now()
	if err := c.Start(); err != nil {
		return "", err
	}
	// Each line with the time it came (the preheat's timeline).
	var out strings.Builder
	sc := bufio.NewScanner(pipe)
	for sc.Scan() {
		fmt.Fprintf(&out, "%6.2fs %s\n", time.Since(start).Seconds(), sc.Text())
	}
	return out.String(), c.Wait()
}

// lacks lists the blobs of ref a node's store does not hold (`shoal explain`).
func (n *benchNode) lacks(ref string) ([]string, error) {
	var ex struct {
		Blobs []struct {
			Digest  string `json:"digest"`
			InStore bool   `json:"in_store"`
		} `json:"blobs"`
	}
	sock := filepath.Join(n.dataDir, "admin.sock")
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := c.Get("http://admin/v1/explain?target=" + url.QueryEscape(ref))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&ex); err != nil {
		return nil, err
	}
	var out []string
	for _, bl := range ex.Blobs {
		if !bl.InStore {
			out = append(out, bl.Digest)
		}
	}
	if len(ex.Blobs) == 0 {
		return nil, fmt.Errorf("explain lists no blob")
	}
	return out, nil
}

func BenchmarkPreheat(b *testing.B) {
	e := getSwarmEnv(b)
	n := envInt(b, "SHOAL_BENCH_PREHEAT_N", 10)
	rate := float64(envInt(b, "SHOAL_BENCH_PREHEAT_MIBPS", 100)) * (1 << 20)
	layer := int64(envInt(b, "SHOAL_BENCH_PREHEAT_LAYER_MIB", 50)) << 20
	img := e.image(b, layer)
	ref := "docker.io/" + img.repo + ":" + img.tag
	dir := keepDir(b.TempDir())
	b.SetBytes(img.blobBytes * int64(n))

	for range b.N {
		// Reference: one client straight from the upstream over one link.
		lp := startLinkProxy(b, e.upstream, rate)
		dst := filepath.Join(dir, "direct")
		start := time.Now()
		c := exec.Command(e.crane, "pull", "--insecure", "--format", "oci", strings.TrimPrefix(lp.URL, "http://")+"/"+img.repo+":"+img.tag, dst)
		c.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(dir, "docker-direct"))
		if out, err := c.CombinedOutput(); err != nil {
			b.Fatalf("direct crane pull: %v\n%s", err, out)
		}
		direct := time.Since(start)
		os.RemoveAll(dst)

		// One shoal node alone (P2P off) over its own link: `shoal pull`.
		lp1 := startLinkProxy(b, e.upstream, rate)
		solo := e.startShoalNode(b, dir, lp1.URL, "--p2p=false")
		start = time.Now()
		if out, err := e.shoalCmd(b, solo, "pull", ref); err != nil {
			b.Fatalf("shoal pull on one node: %v\n%s", err, out)
		}
		single := time.Since(start)
		solo.proc.stop()

		// The preheat: n nodes, each behind its own link.
		links := make([]*linkProxy, n)
		for i := range links {
			links[i] = startLinkProxy(b, e.upstream, rate)
		}
		p2p := []string{"--p2p=true", "--p2p-listen", "/ip4/{ip}/tcp/0"}
		first := e.startShoalNode(b, dir, links[0].URL, p2p...)
		boot := p2pAddr(b, first)
		nodes := []*benchNode{first}
		for i := 1; i < n; i++ {
			nodes = append(nodes, e.startShoalNode(b, dir, links[i].URL, append(p2p, "--bootstrap", boot)...))
		}
		for _, nd := range nodes {
			waitJoined(b, nd, min(n-1, 20))
		}
		cpu0 := time.Duration(0)
		for _, nd := range nodes {
			cpu0 += procCPU(nd.proc.cmd.Process.Pid)
		}
		start = time.Now()
		out, err := e.shoalCmd(b, nodes[0], "pull", "--cluster", ref)
		took := time.Since(start)
		if err != nil {
			b.Fatalf("shoal pull --cluster: %v\n%s", err, out)
		}
		cpu := -cpu0
		for _, nd := range nodes {
			cpu += procCPU(nd.proc.cmd.Process.Pid)
		}
		var up int64
		gets := 0
		for _, l := range links {
			if err := l.settled(time.Minute); err != nil {
				b.Error(err)
			}
			up += l.blobBytes.Load()
			l.getsMu.Lock()
			for _, g := range l.gets {
				gets += g
			}
			l.getsMu.Unlock()
		}
		for _, nd := range nodes {
			if lacks, err := nd.lacks(ref); err != nil || len(lacks) > 0 {
				b.Errorf("node %s lacks %v after the preheat (%v)", nd.ip, lacks, err)
			}
		}
		ratio := took.Seconds() / direct.Seconds()
		b.ReportMetric(ratio, "x-direct")
		b.ReportMetric(float64(up)/float64(img.blobBytes), "x-upstream")
		b.Logf("preheat of %.0f MiB on %d nodes, each behind its own %.0f MiB/s link:\n"+
			"  direct crane pull over one link  %6.2f s\n"+
			"  one shoal node, shoal pull       %6.2f s\n"+
			"  shoal pull --cluster, %2d nodes   %6.2f s = %.2f× the direct pull (target ≤ 1.5×), %.2f× one node\n"+
			"  upstream blob bytes %.3f× the image (%d GETs); daemons' CPU %.1f s over %.2f s on %d cores\n%s",
			float64(img.blobBytes)/(1<<20), n, rate/(1<<20), direct.Seconds(), single.Seconds(), n, took.Seconds(), ratio,
			took.Seconds()/single.Seconds(), float64(up)/float64(img.blobBytes), gets, cpu.Seconds(), took.Seconds(), runtime.NumCPU(), out)
		for _, nd := range nodes {
			nd.proc.stop()
		}
	}
}
