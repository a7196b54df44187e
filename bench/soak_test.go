package bench

// Soak for issue 4: 10 shoal daemons in one swarm (loopback addresses, docker-registry as the
// upstream) under steady lookups for SHOAL_SOAK (default 30m), sampling every daemon's RSS once
// a minute. Run by hand:
//
//	go test -run '^$' -bench Soak10Nodes -benchtime 1x -timeout 60m ./bench
//
// The load: 10 requests per second in all, each a GET of a random digest that no node holds,
// sent to a random node. Every one is a full miss: a DHT lookup (nothing found within the
// lookup budget), then a request to the digest's designated node, which asks the upstream and
// refuses on its 404, then the node's own upstream request. Every 10 s one node also pulls a
// fresh 1 MiB blob pushed to the upstream and, a moment later, another node pulls the same blob
// (found in the DHT, sent by the first node): provide, lookup hit and peer transfer.
//
// Printed: per minute, min / avg / max RSS over the daemons, requests so far, failures. The
// metrics are the RSS growth from the 5-minute sample (after warm-up) to the last (goal: none)
// and the largest RSS seen (issue 4: < 64 MiB idle with 10 peers).

import (
	"crypto/rand"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func BenchmarkSoak10Nodes(b *testing.B) {
	e := getSwarmEnv(b)
	dur := envDuration(b, "SHOAL_SOAK", 30*time.Minute)
	dir, err := os.MkdirTemp(keepDir(e.dir), "soak-")
	if err != nil {
		b.Fatal(err)
	}
	if os.Getenv("SHOAL_BENCH_KEEP") == "" {
		defer os.RemoveAll(dir)
	} else {
		b.Logf("soak: node logs kept in %s", dir)
	}
	for range b.N {
		nodes := shoalSwarm(b, e, dir, 10, e.upstream, nil)
		var requests, failures, transfers atomic.Int64
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			soakLoad(b, e, dir, nodes, stop, &requests, &failures, &transfers)
		}()
		rss := func() (lo, avg, hi float64) {
			lo = 1e18
			for _, n := range nodes {
				v := float64(vmRSS(n.proc.cmd.Process.Pid)) / (1 << 20)
				lo, hi, avg = min(lo, v), max(hi, v), avg+v/float64(len(nodes))
			}
			return lo, avg, hi
		}
		var sb strings.Builder
		fmt.Fprintf(&sb, "soak: 10 daemons, %s, RSS in MiB over the daemons:\n  %6s %7s %7s %7s %9s %9s %9s\n",
			dur, "minute", "min", "avg", "max", "requests", "failures", "transfers")
		var warm, last, peak float64
		start := time.Now()
		tick := time.NewTicker(time.Minute)
		for m := 1; time.Since(start) < dur; m++ {
			<-tick.C
			lo, avg, hi := rss()
			peak = max(peak, hi)
			if m == 5 || (warm == 0 && time.Since(start) >= dur) {
				warm = avg
			}
			last = avg
			line := fmt.Sprintf("  %6d %7.1f %7.1f %7.1f %9d %9d %9d\n", m, lo, avg, hi, requests.Load(), failures.Load(), transfers.Load())
			sb.WriteString(line)
			fmt.Print(line)
		}
		tick.Stop()
		close(stop)
		<-done
		for _, n := range nodes {
			if n.proc.exited() {
				b.Errorf("%s exited during the soak", n.ip)
			}
		}
		fmt.Print(sb.String())
		b.ReportMetric(last/warm, "rss-growth")
		b.ReportMetric(peak, "rss-max-MiB")
		b.ReportMetric(float64(failures.Load()), "failures")
	}
}

// soakLoad sends the soak's requests until stop is closed, and waits for those in flight.
func soakLoad(b *testing.B, e *swarmEnv, dir string, nodes []*benchNode, stop chan struct{}, requests, failures, transfers *atomic.Int64) {
	var inflight sync.WaitGroup
	defer inflight.Wait()
	hc := &http.Client{Timeout: 30 * time.Second}
	get := func(url string, want int) {
		requests.Add(1)
		resp, err := hc.Get(url)
		if err != nil {
			failures.Add(1)
			b.Logf("soak: %v", err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			failures.Add(1)
			b.Logf("soak: GET %s: %s, want %d", url, resp.Status, want)
		}
	}
	miss := time.NewTicker(100 * time.Millisecond)
	defer miss.Stop()
	fresh := time.NewTicker(10 * time.Second)
	defer fresh.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-miss.C:
			var d [32]byte
			rand.Read(d[:])
			n := nodes[mrand.IntN(len(nodes))]
			inflight.Go(func() { get(fmt.Sprintf("http://%s/v2/library/soak/blobs/sha256:%x", n.addr, d), http.StatusNotFound) })
		case <-fresh.C:
			path := filepath.Join(dir, "blob")
			dgst, err := writeRandom(path, uint64(i), 1<<20)
			if err == nil {
				err = pushBlob(e.upstream, "library/soak", path, dgst)
			}
			if err != nil {
				failures.Add(1)
				b.Logf("soak: push: %v", err)
				continue
			}
			first := mrand.IntN(len(nodes))
			second := (first + 1 + mrand.IntN(len(nodes)-1)) % len(nodes)
			inflight.Go(func() {
				get("http://"+nodes[first].addr+"/v2/library/soak/blobs/"+dgst, http.StatusOK)
				get("http://"+nodes[second].addr+"/v2/library/soak/blobs/"+dgst, http.StatusOK)
				transfers.Add(1)
			})
		}
	}
}

// vmRSS is a live process's resident set in bytes (0 if it is gone).
func vmRSS(pid int) int64 {
	kb, _ := procStatusKiB(pid, "VmRSS")
	return kb << 10
}
