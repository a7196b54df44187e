package bench

// Cached blobs from shoal against nginx (issue 18), run by hand (a few minutes, ~2 GiB in $TMPDIR):
//
//	flock /tmp/shoal-heavy.lock go test -run '^$' -bench CachedVsNginx -benchtime 1x -timeout 30m ./bench
//
// Needs nginx (Debian nginx-light) and docker-registry: `bash .ci/install-deps`. nginx serves the
// very files shoal stored (its data directory's blobs/), with sendfile on and tcp_nopush, so both
// read the same page-cache pages. Rounds alternate between the two servers; the figures are the
// medians of the rounds and the ratio's spread (min–max over rounds).

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// nginxConf is what a user would run in front of these files: sendfile, tcp_nopush, no logs.
const nginxConf = `daemon off;
master_process on;
user root;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path %[1]s/tmp;
  proxy_temp_path %[1]s/tmp;
  fastcgi_temp_path %[1]s/tmp;
  uwsgi_temp_path %[1]s/tmp;
  scgi_temp_path %[1]s/tmp;
  server {
    listen %[2]s;
    root %[3]s;
    default_type application/octet-stream;
  }
}
`

// startNginx serves root's files on a free loopback port and returns its base URL.
func (e *env) startNginx(tb testing.TB, root string) string {
	tb.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			tb.Fatal("nginx not found: run `bash .ci/install-deps` (apt-get install nginx-light)")
		}
		bin = "/usr/sbin/nginx"
	}
	dir, err := os.MkdirTemp(e.dir, "nginx-")
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil {
		tb.Fatal(err)
	}
	addr, err := freeAddr()
	if err != nil {
		tb.Fatal(err)
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, nginxConf, dir, addr, root), 0o644); err != nil {
		tb.Fatal(err)
	}
	cmd, err := e.start(filepath.Join(dir, "out.log"), bin, "-c", conf, "-p", dir, "-e", filepath.Join(dir, "error.log"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { stopProc(cmd) })
	base := "http://" + addr
	if err := waitStatus(base+"/", 10*time.Second); err != nil {
		out, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		tb.Fatalf("nginx: %v\n%s", err, out)
	}
	return base
}

// waitStatus polls url until anything answers over HTTP.
func waitStatus(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		<-time.After(20 * time.Millisecond) // polling interval
	}
}

// storedPath is where a daemon with the given data directory keeps a committed blob.
func storedPath(data, dgst string) string {
	alg, enc, _ := strings.Cut(dgst, ":")
	return filepath.Join(data, "blobs", alg, enc[:2], enc)
}

// cachedRatio is one size's comparison: MiB/s per round for each server.
type cachedRatio struct {
	size         int64
	shoal, nginx []float64 // MiB/s, one value per round
	ratios       []float64 // shoal/nginx per round
}

func (c cachedRatio) String() string {
	lo, hi := slices.Min(c.ratios), slices.Max(c.ratios)
	return fmt.Sprintf("%s: shoal %.0f MiB/s, nginx %.0f MiB/s, ratio %.3f (rounds %.3f–%.3f)",
		sizeName(c.size), median(c.shoal), median(c.nginx), median(c.ratios), lo, hi)
}

func sizeName(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// cachedSetup puts blobs of the given sizes in the upstream, caches them in a fresh shoal and
// starts nginx over shoal's blob files. It returns shoal's and nginx's URL for each blob.
func cachedSetup(tb testing.TB, e *env, sizes []int64) (shoalURLs, nginxURLs []string, shoalPid int) {
	tb.Helper()
	shoalURL, cmd, data := e.startShoalData(tb, e.upstream)
	for i, size := range sizes {
		dg, f, repo := e.bigDgst, e.bigFile, "bench/big"
		if size != bigSize {
			repo = "bench/cached"
			f = filepath.Join(e.dir, fmt.Sprintf("cached-%d.bin", size))
			var err error
			if dg, err = writeRandom(f, uint64(100+i), size); err != nil {
				tb.Fatal(err)
			}
			if err := pushBlob(e.upstream, repo, f, dg); err != nil {
				tb.Fatal(err)
			}
			os.Remove(f)
		}
		u := shoalURL + "/v2/" + repo + "/blobs/" + dg
		if _, err := download(u, dg); err != nil { // fills the cache
			tb.Fatal(err)
		}
		shoalURLs = append(shoalURLs, u)
		p := storedPath(data, dg)
		for deadline := time.Now().Add(30 * time.Second); ; { // the commit's fsync follows the last byte
			_, err := os.Stat(p)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("shoal's stored file: %v", err)
			}
			<-time.After(20 * time.Millisecond) // polling interval
		}
		rel, _ := filepath.Rel(filepath.Join(data, "blobs"), p)
		nginxURLs = append(nginxURLs, rel)
	}
	nb := e.startNginx(tb, filepath.Join(data, "blobs"))
	for i := range nginxURLs {
		nginxURLs[i] = nb + "/" + filepath.ToSlash(nginxURLs[i])
		if _, err := download(nginxURLs[i], ""); err != nil {
			tb.Fatal(err)
		}
	}
	return shoalURLs, nginxURLs, cmd.Process.Pid
}

// timedGets GETs url sequentially until at least minBytes went by (at least once) and returns
// MiB/s.
func timedGets(url string, size, minBytes int64) (float64, error) {
	var total int64
	var took time.Duration
	for total < max(minBytes, 1) {
		d, err := download(url, "")
		if err != nil {
			return 0, err
		}
		took += d
		total += size
	}
	return mibps(total, took), nil
}

// compareCached alternates rounds of GETs of the same cached blob from shoal and nginx.
func compareCached(tb testing.TB, shoalURL, nginxURL string, size int64, rounds int) cachedRatio {
	tb.Helper()
	c := cachedRatio{size: size}
	minBytes := max(size, 256<<20) // small blobs: many GETs on a kept-alive connection per round
	for r := range rounds {
		urls := []string{shoalURL, nginxURL}
		if r%2 == 1 { // who goes first alternates too
			urls = []string{nginxURL, shoalURL}
		}
		var got [2]float64
		for i, u := range urls {
			v, err := timedGets(u, size, minBytes)
			if err != nil {
				tb.Fatal(err)
			}
			got[i] = v
		}
		if r%2 == 1 {
			got[0], got[1] = got[1], got[0]
		}
		c.shoal, c.nginx = append(c.shoal, got[0]), append(c.nginx, got[1])
		c.ratios = append(c.ratios, got[0]/got[1])
	}
	return c
}

// concurrentGets runs n concurrent GETs of url and returns the aggregate MiB/s.
func concurrentGets(url string, size int64, n int) (float64, error) {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			if _, err := download(url, ""); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return 0, err
	}
	return mibps(int64(n)*size, time.Since(start)), nil
}

// compareConcurrent alternates rounds of n concurrent GETs from shoal and nginx.
func compareConcurrent(tb testing.TB, shoalURL, nginxURL string, size int64, n, rounds int) cachedRatio {
	tb.Helper()
	c := cachedRatio{size: size}
	for range rounds {
		s, err := concurrentGets(shoalURL, size, n)
		if err != nil {
			tb.Fatal(err)
		}
		ng, err := concurrentGets(nginxURL, size, n)
		if err != nil {
			tb.Fatal(err)
		}
		c.shoal, c.nginx = append(c.shoal, s), append(c.nginx, ng)
		c.ratios = append(c.ratios, s/ng)
	}
	return c
}

var cachedSizes = []int64{1 << 20, 64 << 20, bigSize}

// BenchmarkMirrorCachedVsNginx compares cached blob GETs (1 MiB, 64 MiB, 1 GiB, and 50
// concurrent 1 GiB GETs) from shoal and from nginx over the same files.
func BenchmarkMirrorCachedVsNginx(b *testing.B) {
	e := getEnv(b)
	rounds := max(b.N, 5)
	shoalURLs, nginxURLs, pid := cachedSetup(b, e, cachedSizes)
	b.ResetTimer()
	for i, size := range cachedSizes {
		c := compareCached(b, shoalURLs[i], nginxURLs[i], size, rounds)
		b.ReportMetric(median(c.ratios), "shoal/nginx-"+strings.ReplaceAll(sizeName(size), " ", ""))
		b.Log(c)
	}
	before := vmHWM(b, pid)
	c := compareConcurrent(b, shoalURLs[2], nginxURLs[2], bigSize, 50, 3)
	after := vmHWM(b, pid)
	b.ReportMetric(median(c.ratios), "shoal/nginx-50x1GiB")
	b.ReportMetric(float64(after)/1024, "VmHWM-MiB")
	b.Logf("50 × %v; shoal peak RSS %d MiB (before: %d MiB)", c, after/1024, before/1024)
}

// BenchmarkCachedBeforeAfter: cached 1 MiB and 64 MiB blob GETs from shoal (this tree), from an
// older shoal (SHOAL_REPORT_BEFORE) and from nginx over the same files, in a rotating order,
// SHOAL_BENCH_ROUNDS rounds (default 5). It logs the medians of the per-round ratios to nginx.
// Both daemons' pids are logged, to profile them (perf record -p PID) while it runs:
//
//	SHOAL_REPORT_BEFORE=/tmp/shoal-OLD flock /tmp/shoal-heavy.lock go test -run '^$' -bench CachedBeforeAfter -benchtime 1x -timeout 30m ./bench
func BenchmarkCachedBeforeAfter(b *testing.B) {
	e := getEnv(b)
	old := beforeBinary(b)
	rounds := abRounds()
	sizes := []int64{1 << 20, 64 << 20}
	newURLs, nginxURLs, newPid := cachedSetup(b, e, sizes)
	nginxPid := e.procs[len(e.procs)-1].Process.Pid // started last by cachedSetup
	cur := e.shoal
	e.shoal = old
	oldBase, oldCmd, _ := e.startShoalData(b, e.upstream)
	e.shoal = cur
	var oldURLs []string
	for _, u := range newURLs {
		_, path, _ := strings.Cut(strings.TrimPrefix(u, "http://"), "/")
		u = oldBase + "/" + path
		if _, err := download(u, ""); err != nil { // fills the old daemon's cache
			b.Fatal(err)
		}
		oldURLs = append(oldURLs, u)
	}
	b.Logf("pids: new %d, before %d", newPid, oldCmd.Process.Pid)
	b.ResetTimer()
	for i, size := range sizes {
		minBytes := max(size, 1<<30) // rounds of ≥ 1 s: the machine is shared
		var rNew, rOld []float64
		var cpu [3]time.Duration // per server, over all rounds
		var gets int64
		pids := []int{newPid, oldCmd.Process.Pid, nginxPid}
		for r := range rounds {
			urls := []string{newURLs[i], oldURLs[i], nginxURLs[i]}
			order := [][3]int{{0, 1, 2}, {2, 0, 1}, {1, 2, 0}}[r%3]
			var got [3]float64
			for _, k := range order {
				c0 := treeCPU(pids[k])
				v, err := timedGets(urls[k], size, minBytes)
				if err != nil {
					b.Fatal(err)
				}
				cpu[k] += treeCPU(pids[k]) - c0
				got[k] = v
			}
			gets += minBytes / size
			rNew, rOld = append(rNew, got[0]/got[2]), append(rOld, got[1]/got[2])
			fmt.Fprintf(os.Stderr, "%s round %d: new %.0f MiB/s, before %.0f MiB/s, nginx %.0f MiB/s\n", sizeName(size), r, got[0], got[1], got[2])
		}
		name := strings.ReplaceAll(sizeName(size), " ", "")
		b.ReportMetric(median(rNew), "new/nginx-"+name)
		b.ReportMetric(median(rOld), "before/nginx-"+name)
		b.Logf("%s: shoal/nginx new %.3f (%s), before %.3f (%s)", sizeName(size), median(rNew), spread(rNew), median(rOld), spread(rOld))
		us := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(gets) }
		b.Logf("%s: server CPU per GET: new %.0f µs, before %.0f µs, nginx %.0f µs", sizeName(size), us(cpu[0]), us(cpu[1]), us(cpu[2]))
	}
}

// treeCPU is the CPU time of a process and its direct children (nginx's workers).
func treeCPU(pid int) time.Duration {
	t := procCPU(pid)
	kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, f := range strings.Fields(string(kids)) {
		if k, err := strconv.Atoi(f); err == nil {
			t += procCPU(k)
		}
	}
	return t
}
