package bench

// Before/after benchmarks for the cold path and the push path (issue 18): the shoal built from
// this tree against an older binary, in the same run, alternating round by round. Under the
// heavy-run lock:
//
//	git checkout OLD && go build -o /tmp/shoal-OLD ./cmd/shoal && git checkout -
//	SHOAL_REPORT_BEFORE=/tmp/shoal-OLD flock /tmp/shoal-heavy.lock go test -run '^$' -bench 'ColdPullBeforeAfter|PushBeforeAfter' -benchtime 1x -timeout 30m ./bench
//
// SHOAL_BENCH_ROUNDS sets the rounds (default 5).

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func abRounds() int {
	if v, err := strconv.Atoi(os.Getenv("SHOAL_BENCH_ROUNDS")); err == nil && v > 0 {
		return v
	}
	return 5
}

func beforeBinary(b *testing.B) string {
	old := os.Getenv("SHOAL_REPORT_BEFORE")
	if old == "" {
		b.Fatal("SHOAL_REPORT_BEFORE must name an older shoal binary")
	}
	return old
}

// BenchmarkColdPullBeforeAfter: cold pulls of the 4 × 128 MiB image through a fresh shoal (this
// tree), through a fresh older shoal and straight from the registry, in a rotating order, on
// unshaped loopback and over a link shaped to 100 MiB/s. It prints each round and logs, per link, the medians of
// the per-round ratios to the direct pull and of each shoal's own CPU-s per GiB, and the CPU
// of every process taking part (client, registry, shoal) per GiB through shoal and direct: on
// 2 cores that sum over 2 is a floor for the pull's wall time.
func BenchmarkColdPullBeforeAfter(b *testing.B) {
	e := getEnv(b)
	old := beforeBinary(b)
	rounds := abRounds()
	gib := float64(coldLayers*layerSize) / (1 << 30)
	if _, err := pullImage(e.upstream, "bench/cold", "v1"); err != nil { // the registry's page cache
		b.Fatal(err)
	}
	for _, shaped := range []bool{false, true} {
		up, label := e.upstream, "unshaped"
		if shaped {
			up, label = shapedProxy(b, e.upstream, shapedRate), fmt.Sprintf("%dMiB/s", shapedRate>>20)
		}
		n := rounds
		if shaped {
			n = min(rounds, max(3, rounds/2+1)) // 15 s a round
		}
		var newR, oldR, newCPU, oldCPU, newAll, directAll []float64
		reg := e.procs[0].Process.Pid // the registry, started first
		// others is the CPU of the client (this process, with the link proxy) and the registry.
		others := func() time.Duration { return selfCPU() + procCPU(reg) }
		for r := range n {
			through := func(bin string) (secs, cpuPerGiB, allPerGiB float64) {
				cur := e.shoal
				e.shoal = bin
				url, cmd := e.startShoalFor(b, up)
				e.shoal = cur
				defer stopProc(cmd)
				c0, o0 := procCPU(cmd.Process.Pid), others()
				d, err := pullImage(url, "bench/cold", "v1")
				if err != nil {
					b.Fatal(err)
				}
				c := (procCPU(cmd.Process.Pid) - c0).Seconds()
				return d.Seconds(), c / gib, (c + (others() - o0).Seconds()) / gib
			}
			var tn, to, td, cn, co, an, ad float64
			steps := []func(){
				func() { tn, cn, an = through(e.shoal) },
				func() { to, co, _ = through(old) },
				func() {
					o0 := others()
					d, err := pullImage(up, "bench/cold", "v1")
					if err != nil {
						b.Fatal(err)
					}
					td, ad = d.Seconds(), (others()-o0).Seconds()/gib
				},
			}
			for i := range steps {
				steps[(i+r)%len(steps)]()
			}
			fmt.Printf("%s round %d: new %.2f s (%.2f CPU-s/GiB; all processes %.2f), old %.2f s (%.2f CPU-s/GiB), direct %.2f s (all processes %.2f CPU-s/GiB)",
				label, r, tn, cn, an, to, co, td, ad)
			fmt.Println()
			newR, oldR = append(newR, tn/td), append(oldR, to/td)
			newCPU, oldCPU = append(newCPU, cn), append(oldCPU, co)
			newAll, directAll = append(newAll, an), append(directAll, ad)
		}
		fmt.Printf("%s, %d rounds: shoal/direct new %.2f (%s), old %.2f (%s); CPU-s/GiB new %.2f (%s), old %.2f (%s); "+
			"client+registry+shoal CPU-s/GiB through new %.2f, direct (client+registry) %.2f\n", label, n,
			median(newR), spread(newR), median(oldR), spread(oldR), median(newCPU), spread(newCPU), median(oldCPU), spread(oldCPU),
			median(newAll), median(directAll))
		b.ReportMetric(median(newR), label+"-new/direct")
		b.ReportMetric(median(oldR), label+"-old/direct")
	}
}

// BenchmarkPushBeforeAfter: a 1 GiB layer pushed (POST, one streamed PATCH, PUT ?digest=) into
// a shoal from this tree and into an older one, and the same bytes written raw to a new file
// with one fsync, in a rotating order. It logs the medians of push/raw for each, and how long
// the final PUT (verify, fsync, rename, index) took.
func BenchmarkPushBeforeAfter(b *testing.B) {
	old := beforeBinary(b)
	dir, err := os.MkdirTemp("", "shoal-bench-pushab-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin, err := buildShoal(dir)
	if err != nil {
		b.Fatal(err)
	}
	src := filepath.Join(dir, "layer.bin")
	dgst, err := writeRandom(src, 21, bigSize)
	if err != nil {
		b.Fatal(err)
	}
	e := &env{dir: dir}
	defer e.close()
	start := func(name, bin string) string {
		addr, err := freeAddr()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.start(filepath.Join(dir, name+".log"), bin, "daemon", "--p2p=false", "--listen", addr,
			"--data-dir", filepath.Join(dir, name), "--log-level", "warn", "--admin-listen", "off", "--metrics-listen", "off"); err != nil {
			b.Fatal(err)
		}
		if err := waitOK("http://"+addr+"/v2/", 60*time.Second); err != nil {
			b.Fatal(err)
		}
		return "http://" + addr
	}
	bases := []string{start("new", bin), start("old", old)}
	var ratios [2][]float64
	var raws []float64
	rounds := abRounds()
	for r := range rounds {
		var pushS [2]float64
		var rawS float64
		steps := []func(){
			func() { pushS[0] = pushOnce(b, bases[0], src, dgst) },
			func() { pushS[1] = pushOnce(b, bases[1], src, dgst) },
			func() {
				t0 := time.Now()
				if err := copySync(src, filepath.Join(dir, "raw")); err != nil {
					b.Fatal(err)
				}
				rawS = time.Since(t0).Seconds()
				os.Remove(filepath.Join(dir, "raw"))
			},
		}
		for i := range steps {
			steps[(i+r)%len(steps)]()
		}
		fmt.Printf("push round %d: new %.2f s, old %.2f s, raw %.2f s\n", r, pushS[0], pushS[1], rawS)
		raws = append(raws, rawS)
		for i := range pushS {
			ratios[i] = append(ratios[i], rawS/pushS[i])
		}
	}
	fmt.Printf("1 GiB push / raw write+fsync, %d rounds: new %.2f (%s), old %.2f (%s); raw median %.2f s\n", rounds,
		median(ratios[0]), spread(ratios[0]), median(ratios[1]), spread(ratios[1]), median(raws))
	b.ReportMetric(median(ratios[0]), "new-push/raw")
	b.ReportMetric(median(ratios[1]), "old-push/raw")
}

// pushOnce pushes the layer and deletes it again (a push of stored content is free), and returns
// the push's seconds; it logs how long the final PUT took.
func pushOnce(b *testing.B, base, src, dgst string) float64 {
	t0 := time.Now()
	put, err := pushChunkedTimed(base, "shoal.local/bench/push", src, dgst)
	if err != nil {
		b.Fatal(err)
	}
	s := time.Since(t0).Seconds()
	fmt.Printf("push into %s: %.2f s, of which the final PUT %.3f s\n", base, s, put.Seconds())
	req, _ := http.NewRequest(http.MethodDelete, base+"/v2/shoal.local/bench/push/blobs/"+dgst, nil)
	if err := expect(http.DefaultClient.Do(req))(http.StatusAccepted); err != nil {
		b.Fatal(err)
	}
	return s
}
