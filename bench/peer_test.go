package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkPeerBlob: what a node's client sees when a 1 GiB layer comes from a neighbour,
// next to the same layer from a plain HTTP registry on loopback, in the same run. A seed
// shoal daemon holds the blob; every iteration starts fresh daemons and GETs the blob through
// each of them, one after the other (the order rotates):
//
//   - peer:       a shoal daemon that gets it from the seed over libp2p (TLS 1.3 + yamux),
//     verifying the digest before its client sees a byte (the default);
//   - peer-eager: the same with --p2p-verify-before-serving=false (peer bytes stream to the
//     client as they arrive);
//   - upstream:   a shoal daemon with P2P off that gets it from the registry (plain HTTP);
//   - direct:     the client straight from the registry, no mirror (plain HTTP, no digest check).
//
// Every shoal path verifies the digest and writes the blob to the daemon's store, as a real
// fetch does; direct does neither, so peer/direct is the harshest ratio. CPU is the whole
// machine's share per GiB: the daemons, the registry and this process (the client).
//
//	go test -run '^$' -bench PeerBlob -benchtime 3x -timeout 30m ./bench
//
// Needs docker-registry on PATH (`bash .ci/install-deps`); SHOAL_BENCH_SIZE overrides the size.
func BenchmarkPeerBlob(b *testing.B) {
	size := int64(bigSize)
	if s := os.Getenv("SHOAL_BENCH_SIZE"); s != "" {
		if _, err := fmt.Sscan(s, &size); err != nil {
			b.Fatalf("SHOAL_BENCH_SIZE: %v", err)
		}
	}
	b.SetBytes(size)
	rate, cpu := peerRates(b, size, b.N, true)
	for _, name := range []string{"peer", "peer-eager", "upstream", "direct"} {
		b.ReportMetric(rate[name], name+"-MiB/s")
		b.ReportMetric(cpu[name], name+"-cpu-s/GiB")
	}
	b.ReportMetric(rate["peer"]/rate["upstream"], "peer/upstream")
	b.ReportMetric(rate["peer-eager"]/rate["upstream"], "eager/upstream")
	b.ReportMetric(rate["peer"]/rate["direct"], "peer/direct")
	b.ReportMetric(rate["peer-eager"]/rate["direct"], "eager/direct")
}

// peerRates runs rounds of the four paths of BenchmarkPeerBlob for a blob of size bytes and
// returns each path's MiB/s and the machine's CPU-s per GiB. A peer round whose blob did not
// come from the peer fails the benchmark when strict, else it is left out (rate["<path>-missed"]
// counts them; a path with no valid round has no rate).
func peerRates(b *testing.B, size int64, rounds int, strict bool) (rate, cpuPerGiB map[string]float64) {
	e := getSwarmEnv(b)
	repo := fmt.Sprintf("bench/peer-%d", size)
	f := filepath.Join(e.dir, "peer-blob.bin")
	dgst, err := writeRandom(f, 7, size)
	if err != nil {
		b.Fatal(err)
	}
	if err := pushBlob(e.upstream, repo, f, dgst); err != nil {
		b.Fatal(err)
	}
	os.Remove(f)
	dir, err := os.MkdirTemp(e.dir, "peer-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	blobPath := "/v2/" + repo + "/blobs/" + dgst

	p2p := []string{"--p2p=true", "--p2p-listen", "/ip4/{ip}/tcp/0"}
	seed := e.startShoalNode(b, dir, e.upstream, p2p...)
	boot := p2pAddr(b, seed)
	if _, err := download("http://"+seed.addr+blobPath, dgst); err != nil {
		b.Fatalf("seed: %v", err)
	}
	if _, err := download(e.upstream+blobPath, ""); err != nil { // the registry's page cache
		b.Fatal(err)
	}

	type path struct {
		name  string
		flags []string // nil: no daemon (direct)
		took  time.Duration
		ok    int // rounds that count
		miss  int // peer rounds whose blob came from elsewhere
		cpu   time.Duration
	}
	paths := []*path{
		{name: "peer", flags: append(p2p, "--bootstrap", boot)},
		{name: "peer-eager", flags: append(p2p, "--bootstrap", boot, "--p2p-verify-before-serving=false")},
		{name: "upstream", flags: []string{"--p2p=false"}},
		{name: "direct"},
	}
	run := func(p *path) {
		url := e.upstream + blobPath
		var nd *benchNode
		if p.flags != nil {
			nd = e.startShoalNode(b, dir, e.upstream, p.flags...)
			defer func() { nd.proc.stop(); os.RemoveAll(nd.dataDir) }()
			if p.name != "upstream" {
				waitJoined(b, nd, 1)
			}
			url = "http://" + nd.addr + blobPath
		}
		pids := []int{e.upProc.cmd.Process.Pid, seed.proc.cmd.Process.Pid}
		if nd != nil {
			pids = append(pids, nd.proc.cmd.Process.Pid)
		}
		cpu := func() time.Duration {
			t := selfCPU()
			for _, pid := range pids {
				t += procCPU(pid)
			}
			return t
		}
		up0, c0 := seed.peerUpload(), cpu()
		took, err := download(url, "")
		if err != nil {
			b.Fatalf("%s: %v", p.name, err)
		}
		if sent := seed.peerUpload() - up0; (p.name == "peer" || p.name == "peer-eager") && sent < size {
			if strict {
				b.Fatalf("%s: the seed sent %d bytes to peers, want ≥ %d: the blob did not come from the peer", p.name, sent, size)
			}
			b.Logf("%s: the seed sent %d bytes to peers, want ≥ %d: the blob did not come from the peer; round left out", p.name, sent, size)
			p.miss++
			return
		}
		p.cpu += cpu() - c0
		p.took += took
		p.ok++
	}
	b.ResetTimer()
	for i := range rounds {
		for j := range paths {
			run(paths[(i+j)%len(paths)])
		}
	}
	b.StopTimer()
	rate, cpuPerGiB = map[string]float64{}, map[string]float64{}
	for _, p := range paths {
		rate[p.name+"-missed"] = float64(p.miss)
		if p.ok == 0 {
			continue
		}
		rate[p.name] = float64(size) * float64(p.ok) / (1 << 20) / p.took.Seconds()
		cpuPerGiB[p.name] = p.cpu.Seconds() / (float64(size) * float64(p.ok) / (1 << 30))
	}
	return rate, cpuPerGiB
}
