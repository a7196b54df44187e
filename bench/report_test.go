package bench

// The benchmark page (issue 18): one command runs the comparisons a user would make and writes
// docs/benchmarks.md with its plots. About 10 minutes on 2 cores; take the heavy lock:
//
//	flock /tmp/shoal-heavy.lock go test -run '^$' -bench Report -benchtime 1x -timeout 60m ./bench
//
// Needs nginx-light, docker-registry and crane (`bash .ci/install-deps`). Knobs:
//
//	SHOAL_REPORT_OUT     directory for benchmarks.md and its SVGs (default ../docs)
//	SHOAL_REPORT_ROUNDS  interleaved rounds per comparison (default 5; 3 for the long ones)
//	SHOAL_REPORT_BEFORE  an older shoal binary: cold pulls through it too, for shoal's CPU before/after
//
// Every comparison alternates the two sides round by round in the same run, and the page gives
// medians of the rounds and the spread (min–max) of the per-round ratio: the machine is shared,
// so only ratios measured side by side mean anything.

import (
	"bytes"
	"fmt"
	"image/color"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/shoal-mirror/shoal/store"
)

// reportRow is one line of the page's table.
type reportRow struct {
	what, shoal, base, ratio, spread, goal string
}

func spread(v []float64) string {
	if len(v) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f–%.2f", slices.Min(v), slices.Max(v))
}

func reportRounds() int {
	if v, err := strconv.Atoi(os.Getenv("SHOAL_REPORT_ROUNDS")); err == nil && v > 0 {
		return v
	}
	return 5
}

// BenchmarkReport measures everything on the benchmark page and writes it.
func BenchmarkReport(b *testing.B) {
	out := os.Getenv("SHOAL_REPORT_OUT")
	if out == "" {
		out = filepath.Join("..", "docs")
	}
	rounds := reportRounds()
	long := min(rounds, max(3, rounds/2+1))
	var rows []reportRow
	started := time.Now()

	// 1. Cached blobs: shoal against nginx over the same files.
	e := getEnv(b)
	sizes := []int64{1 << 20, 16 << 20, 64 << 20, 256 << 20, bigSize}
	shoalURLs, nginxURLs, pid := cachedSetup(b, e, sizes)
	var cached []cachedRatio
	for i, size := range sizes {
		c := compareCached(b, shoalURLs[i], nginxURLs[i], size, rounds)
		b.Log(c)
		cached = append(cached, c)
		rows = append(rows, reportRow{"cached blob GET, " + sizeName(size), mibs(median(c.shoal)), mibs(median(c.nginx)) + " (nginx)",
			fmt.Sprintf("%.2f", median(c.ratios)), spread(c.ratios), "≥ 0.95"})
	}
	conc := compareConcurrent(b, shoalURLs[len(sizes)-1], nginxURLs[len(sizes)-1], bigSize, 50, long)
	rss := vmHWM(b, pid)
	b.Logf("50 × %v, shoal peak RSS %d MiB", conc, rss/1024)
	rows = append(rows, reportRow{"50 concurrent cached 1 GiB GETs (aggregate)", mibs(median(conc.shoal)), mibs(median(conc.nginx)) + " (nginx)",
		fmt.Sprintf("%.2f", median(conc.ratios)), spread(conc.ratios), "≥ 0.90"})
	rows = append(rows, reportRow{"shoal peak RSS (VmHWM) after all of the above", fmt.Sprintf("%d MiB", rss/1024), "", "", "", "< 100 MiB"})
	if err := plotThroughput(filepath.Join(out, "benchmarks-cached.svg"), cached); err != nil {
		b.Fatal(err)
	}

	// 2. Cold pulls through a fresh shoal against pulls straight from the registry.
	for _, shaped := range []bool{false, true} {
		up, label, goal, n := e.upstream, "unshaped loopback", "≤ 1.3", rounds
		if shaped {
			up, label, goal, n = shapedProxy(b, e.upstream, shapedRate), fmt.Sprintf("link shaped to %d MiB/s", shapedRate>>20), "≤ 1.1", long
		}
		c := coldRounds(b, e, up, n)
		b.Logf("cold pull, %s: %v", label, c)
		rows = append(rows, reportRow{fmt.Sprintf("cold pull of a 4 × %d MiB image, %s", layerSize>>20, label), secs(median(c.shoal)), secs(median(c.direct)) + " (direct)",
			fmt.Sprintf("%.2f", median(c.ratios)), spread(c.ratios), goal})
		cpuRow := reportRow{"shoal's own CPU on that cold pull", fmt.Sprintf("%.2f CPU-s/GiB", median(c.cpuPerGiB)), "", "", spread(c.cpuPerGiB), "≤ 1.5"}
		if len(c.before) > 0 {
			cpuRow.base = fmt.Sprintf("%.2f CPU-s/GiB (%s, before)", median(c.before), beforeName())
			cpuRow.ratio = fmt.Sprintf("%.2f", median(c.cpuPerGiB)/median(c.before))
		}
		rows = append(rows, cpuRow)
	}

	// 3. Store commit (write, hash, fsync, rename, index) against a plain write + fsync + rename.
	st := storeVsRaw(b, 256<<20, rounds)
	b.Logf("store commit: %v", st)
	rows = append(rows, reportRow{"store commit of 256 MiB (hash + write + fsync + rename + index)", mibs(median(st.shoal)), mibs(median(st.direct)) + " (write + fsync + rename)",
		fmt.Sprintf("%.2f", median(st.ratios)), spread(st.ratios), ""})

	// 4. Peer transfer (libp2p: TLS 1.3 + yamux) against the same blob over plain HTTP.
	rate, cpu := peerRates(b, 256<<20, long, false)
	peerRow := func(what, name, goal string) reportRow {
		r := reportRow{what, "-", mibs(rate["upstream"]) + " (HTTP upstream)", "-", "", goal}
		if v, ok := rate[name]; ok {
			r.shoal, r.ratio = mibs(v), fmt.Sprintf("%.2f", v/rate["upstream"])
		}
		if m := rate[name+"-missed"]; m > 0 {
			r.spread = fmt.Sprintf("%.0f of %d rounds came from the registry, left out", m, long)
		}
		return r
	}
	rows = append(rows, peerRow("256 MiB blob from a peer (verified before serving) vs from the registry through shoal", "peer", ""))
	rows = append(rows, peerRow("… the same, peer bytes streamed as they arrive", "peer-eager", ""))
	b.Logf("peer: %v cpu-s/GiB %v", rate, cpu)

	// 4b. The transport alone: p2p (TLS 1.3 + yamux) against HTTPS, one blob and 8 at once.
	rows = append(rows, transferRows(b, rounds)...)

	// 5. A herd: N nodes pull one image at once, each through its own mirror.
	sw := getSwarmEnv(b)
	_, linkBps := linkRate()
	img := sw.image(b, 16<<20)
	herd := map[string][]swarmRun{}
	ns := []int{1, 3, 5}
	herdSystems := []system{systems[0], systems[2], systems[3]} // shoal-p2p, shoal-local, registry-proxy
	for _, n := range ns {
		for _, sys := range herdSystems {
			r := sw.runSystem(b, sys, n, img, linkBps)
			herd[sys.name] = append(herd[sys.name], r)
			b.Logf("herd N=%d %s: p99 %.2fs upstream×%.2f failed %d", n, sys.name, r.p99.Seconds(), r.amp, r.failed)
		}
	}
	for i, n := range ns {
		p, l, rp := herd["shoal-p2p"][i], herd["shoal-local"][i], herd["registry-proxy"][i]
		rows = append(rows, reportRow{fmt.Sprintf("herd, N = %d nodes: slowest pull (upstream ×)", n),
			fmt.Sprintf("%.2f s (%.2f×)", p.max.Seconds(), p.amp),
			fmt.Sprintf("%.2f s (%.2f×) independent shoal caches; %.2f s (%.2f×) distribution proxy", l.max.Seconds(), l.amp, rp.max.Seconds(), rp.amp),
			fmt.Sprintf("%.2f / %.2f", p.max.Seconds()/l.max.Seconds(), p.max.Seconds()/rp.max.Seconds()), "", ""})
	}
	if err := plotHerd(filepath.Join(out, "benchmarks-herd.svg"), ns, herd); err != nil {
		b.Fatal(err)
	}

	b.StopTimer()
	page := renderReport(rows, rounds, long, time.Since(started), float64(img.blobBytes)/(1<<20))
	page = append(page, handWritten(filepath.Join(out, "benchmarks.md"))...)
	if err := os.WriteFile(filepath.Join(out, "benchmarks.md"), page, 0o644); err != nil {
		b.Fatal(err)
	}
	fmt.Printf("%s\n", page)
}

func mibs(v float64) string { return fmt.Sprintf("%.0f MiB/s", v) }
func secs(v float64) string { return fmt.Sprintf("%.2f s", v) }

// pairRounds is a comparison of shoal with a baseline, one value of each per round.
type pairRounds struct {
	shoal, direct, ratios, cpuPerGiB []float64
	before                           []float64 // CPU-s/GiB of SHOAL_REPORT_BEFORE's binary
}

// beforeName says which binary SHOAL_REPORT_BEFORE is (its file name).
func beforeName() string { return filepath.Base(os.Getenv("SHOAL_REPORT_BEFORE")) }

func (p pairRounds) String() string {
	return fmt.Sprintf("shoal %.2f, baseline %.2f, ratio %.3f (%s), shoal CPU %.2f s/GiB", median(p.shoal), median(p.direct), median(p.ratios), spread(p.ratios), median(p.cpuPerGiB))
}

// coldRounds alternates cold pulls through a fresh shoal in front of upstream with direct
// pulls from it (seconds), and measures shoal's own CPU per GiB pulled.
func coldRounds(b *testing.B, e *env, upstream string, rounds int) pairRounds {
	b.Helper()
	if _, err := pullImage(e.upstream, "bench/cold", "v1"); err != nil { // the registry's page cache
		b.Fatal(err)
	}
	var p pairRounds
	gib := float64(coldLayers*layerSize) / (1 << 30)
	for r := range rounds {
		shoalURL, cmd := e.startShoalFor(b, upstream)
		pull := func() float64 {
			c0 := procCPU(cmd.Process.Pid)
			d, err := pullImage(shoalURL, "bench/cold", "v1")
			if err != nil {
				b.Fatal(err)
			}
			p.cpuPerGiB = append(p.cpuPerGiB, (procCPU(cmd.Process.Pid)-c0).Seconds()/gib)
			return d.Seconds()
		}
		direct := func() float64 {
			d, err := pullImage(upstream, "bench/cold", "v1")
			if err != nil {
				b.Fatal(err)
			}
			return d.Seconds()
		}
		var s, d float64
		if r%2 == 0 {
			s, d = pull(), direct()
		} else {
			d, s = direct(), pull()
		}
		stopProc(cmd)
		p.shoal, p.direct, p.ratios = append(p.shoal, s), append(p.direct, d), append(p.ratios, s/d)
		if old := os.Getenv("SHOAL_REPORT_BEFORE"); old != "" {
			cur := e.shoal
			e.shoal = old
			url, oc := e.startShoalFor(b, upstream)
			e.shoal = cur
			c0 := procCPU(oc.Process.Pid)
			if _, err := pullImage(url, "bench/cold", "v1"); err != nil {
				b.Fatal(err)
			}
			p.before = append(p.before, (procCPU(oc.Process.Pid)-c0).Seconds()/gib)
			stopProc(oc)
		}
	}
	return p
}

// storeVsRaw writes size bytes through the store (Writer + Commit) and as a plain file (write,
// fsync, rename), alternating, and returns MiB/s for each.
func storeVsRaw(b *testing.B, size int64, rounds int) pairRounds {
	b.Helper()
	dir, err := os.MkdirTemp(theEnv.dir, "store-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	data := make([]byte, size)
	if _, err := io.ReadFull(rand.NewChaCha8([32]byte{9}), data); err != nil {
		b.Fatal(err)
	}
	var p pairRounds
	for r := range rounds {
		// A distinct blob per round (the store keeps one copy of each digest).
		data[0] = byte(r)
		dg := digest.Digest(digestOf(data))
		sdir := filepath.Join(dir, fmt.Sprintf("s%d", r))
		cfg := store.DefaultConfig()
		cfg.Dir = sdir
		s, err := store.Open(b.Context(), cfg, nil)
		if err != nil {
			b.Fatal(err)
		}
		viaStore := func() float64 {
			start := time.Now()
			w, err := s.Writer(b.Context(), dg, "")
			if err != nil {
				b.Fatal(err)
			}
			for off := int64(0); off < size; off += store.BufferSize {
				buf := w.Buffer()
				n := copy(buf[:store.BufferSize], data[off:min(size, off+store.BufferSize)])
				if _, err := w.WriteBuffer(buf[:n]); err != nil {
					b.Fatal(err)
				}
			}
			if err := w.Commit(b.Context(), size); err != nil {
				b.Fatal(err)
			}
			w.Close()
			return mibps(size, time.Since(start))
		}
		raw := func() float64 {
			start := time.Now()
			tmp := filepath.Join(dir, fmt.Sprintf("raw-%d.tmp", r))
			f, err := os.Create(tmp)
			if err != nil {
				b.Fatal(err)
			}
			for off := int64(0); off < size; off += store.BufferSize {
				if _, err := f.Write(data[off:min(size, off+store.BufferSize)]); err != nil {
					b.Fatal(err)
				}
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			f.Close()
			if err := os.Rename(tmp, strings.TrimSuffix(tmp, ".tmp")); err != nil {
				b.Fatal(err)
			}
			return mibps(size, time.Since(start))
		}
		var sv, rv float64
		if r%2 == 0 {
			sv, rv = viaStore(), raw()
		} else {
			rv, sv = raw(), viaStore()
		}
		s.Close()
		os.RemoveAll(sdir)
		p.shoal, p.direct, p.ratios = append(p.shoal, sv), append(p.direct, rv), append(p.ratios, sv/rv)
	}
	return p
}

func plotThroughput(path string, cached []cachedRatio) error {
	p := plot.New()
	p.Title.Text = "Cached blob GET throughput (median of interleaved rounds)"
	p.X.Label.Text = "blob size (MiB, log scale)"
	p.Y.Label.Text = "MiB/s"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	var s, n plotter.XYs
	for _, c := range cached {
		x := float64(c.size) / (1 << 20)
		s = append(s, plotter.XY{X: x, Y: median(c.shoal)})
		n = append(n, plotter.XY{X: x, Y: median(c.nginx)})
	}
	if err := addLine(p, "shoal", s, color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 255}); err != nil {
		return err
	}
	if err := addLine(p, "nginx (sendfile, tcp_nopush)", n, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 255}); err != nil {
		return err
	}
	p.Y.Min = 0
	p.Legend.Top, p.Legend.Left = false, false
	return p.Save(7*vg.Inch, 4*vg.Inch, path)
}

func plotHerd(path string, ns []int, herd map[string][]swarmRun) error {
	p := plot.New()
	p.Title.Text = "Slowest pull of a herd of N nodes pulling one image at once"
	p.X.Label.Text = "N (nodes)"
	p.Y.Label.Text = "seconds"
	colors := map[string]color.Color{
		"shoal-p2p":      color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 255},
		"shoal-local":    color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 255},
		"registry-proxy": color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 255},
	}
	labels := map[string]string{
		"shoal-p2p":      "shoal swarm (P2P)",
		"shoal-local":    "N independent shoal caches",
		"registry-proxy": "N distribution proxies",
	}
	for _, name := range []string{"shoal-p2p", "shoal-local", "registry-proxy"} {
		var xy plotter.XYs
		for i, r := range herd[name] {
			xy = append(xy, plotter.XY{X: float64(ns[i]), Y: r.max.Seconds()})
		}
		if err := addLine(p, labels[name], xy, colors[name]); err != nil {
			return err
		}
	}
	p.Y.Min = 0
	p.Legend.Top, p.Legend.Left = true, true
	return p.Save(7*vg.Inch, 4*vg.Inch, path)
}

func addLine(p *plot.Plot, name string, xy plotter.XYs, c color.Color) error {
	l, pts, err := plotter.NewLinePoints(xy)
	if err != nil {
		return err
	}
	l.Color, pts.Color = c, c
	p.Add(l, pts)
	p.Legend.Add(name, l, pts)
	return nil
}

// machine describes where the figures were measured.
func machine() string {
	var sb strings.Builder
	if bs, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(bs), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				fmt.Fprintf(&sb, "CPU %s", strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":")))
				break
			}
		}
		if strings.Contains(string(bs), " sha_ni") {
			sb.WriteString(" (SHA extensions: yes, Go's crypto/sha256 uses them)")
		}
	}
	fmt.Fprintf(&sb, ", %d cores", runtime.NumCPU())
	if bs, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.TrimPrefix(strings.SplitN(string(bs), "\n", 2)[0], "MemTotal:"), "%d", &kb)
		fmt.Fprintf(&sb, ", %.0f GiB RAM", float64(kb)/(1<<20))
	}
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		fmt.Fprintf(&sb, ", %s", strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("nginx", "-v").CombinedOutput(); err == nil {
		fmt.Fprintf(&sb, ", %s", strings.TrimSpace(strings.TrimPrefix(string(out), "nginx version: ")))
	}
	fmt.Fprintf(&sb, ", %s", runtime.Version())
	if bs, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprintf(&sb, "; load average at the end %s (the machine is shared)", strings.Join(strings.Fields(string(bs))[:3], " "))
	}
	return sb.String()
}

// knobs is the environment the page was made with, as a command prefix.
func knobs() string {
	var out string
	if v := os.Getenv("SHOAL_REPORT_BEFORE"); v != "" {
		out += "SHOAL_REPORT_BEFORE=" + filepath.Base(v) + " "
	}
	if v := os.Getenv("SHOAL_REPORT_ROUNDS"); v != "" {
		out += "SHOAL_REPORT_ROUNDS=" + v + " "
	}
	return out
}

// handMarker starts the hand-written end of benchmarks.md: sections with figures of benchmarks
// the report does not run (e.g. BenchmarkCRIHerd, which needs root and containerd 2.x).
const handMarker = "<!-- hand-written from here on: BenchmarkReport keeps it -->"

// handWritten is the part of the existing page at path from handMarker on, kept on regeneration.
func handWritten(path string) []byte {
	old, err := os.ReadFile(path)
	if i := bytes.Index(old, []byte(handMarker)); err == nil && i >= 0 {
		return append([]byte("\n"), old[i:]...)
	}
	return nil
}

func renderReport(rows []reportRow, rounds, long int, took time.Duration, herdMiB float64) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `# Benchmarks

Generated by `+"`"+`%sflock /tmp/shoal-heavy.lock go test -run '^$' -bench Report -benchtime 1x -timeout 60m ./bench`+"`"+`
(bench/report_test.go; it rewrites this page and its plots). Everything runs on loopback on one machine:
%s. The run took %s.

Each comparison alternates shoal and its baseline round by round in the same run (%d rounds; %d for the
50-client, shaped, peer and herd runs); "ratio" is the median of the per-round ratios (shoal / baseline:
above 1 is better for throughput, below 1 is better for times), "spread" their min–max. Clients are Go
HTTP clients in the benchmark process (1 MiB reads), the same for both sides.

| measurement | shoal | baseline | ratio | spread | goal (issue 18) |
|---|---|---|---|---|---|
`, knobs(), machine(), took.Round(time.Second), rounds, long)
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", r.what, r.shoal, r.base, r.ratio, r.spread, r.goal)
	}
	if name := beforeName(); name != "." && name != "" {
		fmt.Fprintf(&b, "\n\"before\" is %s, an older shoal binary given as SHOAL_REPORT_BEFORE (its name says the commit it\n"+
			"was built from: `git checkout COMMIT && go build -o shoal-COMMIT ./cmd/shoal`): every cold round also pulls\n"+
			"through a fresh one of it, and its CPU-s/GiB is the baseline of the CPU rows.\n", name)
	}
	fmt.Fprintf(&b, `
What was compared:

- **cached blob GET**: a blob shoal has stored, against nginx (Debian nginx-light, sendfile on, tcp_nopush
  on) serving the very same file from shoal's data directory; both read the same page-cache pages.
- **cold pull**: HEAD the tag, GET the manifest, then config and 4 layers of 128 MiB, 3 at a time, as
  containerd does, through a fresh shoal (empty store) against the same pull straight from the registry
  (distribution's docker-registry). "shaped": a proxy paces the registry's bodies to 100 MiB/s in total.
  shoal's CPU is its process's user + system time over the pull, per GiB of blobs.
- **store commit**: 256 MiB written through the store (SHA-256 while writing, fsync, rename, index
  record) against the same bytes written to a file with fsync and rename.
- **peer**: a fresh shoal node gets a 256 MiB blob from a neighbour that has it (a direct
  connection with libp2p's TLS 1.3 handshake, as shoal runs) against a fresh shoal node that gets it from the registry over plain HTTP.
- **peer transfer vs HTTPS**: the transport alone (p2p's BenchmarkTransfer, nothing stored or hashed):
  the bytes of one 256 MiB blob, and of 8 × 64 MiB at once, from one node to another on a direct
  connection (TCP + libp2p's TLS 1.3 handshake, no muxer, as shoal runs; with a swarm key too) against
  the same over HTTPS (Go's crypto/tls 1.3, AES-128-GCM, 8 connections for the 8 blobs); then the same
  over libp2p streams (TCP + TLS 1.3 + yamux; 8 streams on one connection), what a peer without a
  direct port gets, with a swarm key (libp2p's XSalsa20 under TLS) and with Noise (ChaCha20-Poly1305,
  shoal's fallback security transport).
- **herd**: N nodes pull one image (config + 4 × 16 MiB = %.0f MiB) at the same instant with crane, each
  through its own mirror, from one registry behind a link shaped to SHOAL_BENCH_LINK_MBIT (default 400
  Mbit/s) shared by all: a shoal swarm (P2P on), N independent shoal caches, and N of distribution's
  proxy-mode registries. "upstream ×" is the blob bytes the registry sent over the image's size. The
  ratio column gives the swarm's slowest pull over the independent caches' / the proxies'.

How shoal's data path is built (issue 18), so that these figures hold:

- A stored blob goes out with sendfile(2) in a loop that, like nginx, waits for the socket to drain
  after a short send instead of calling again at once (internal/mirror/sendfile_linux.go): one cached 1 GiB GET
  makes ~700 sendfile calls and no EAGAIN, where Go's own loop made ~1760 with ~390 EAGAIN.
- A download in flight: the bytes are read from the upstream socket into a store buffer, hashed in
  place (SHA-256 with the CPU's SHA extensions, on its own goroutine, overlapping the write), written
  once to the temporary file, and sent to every client following the download with sendfile from
  that file: no copy through the process. fsync once, at commit.

Reading the cold-pull row: on unshaped loopback the pull is CPU-bound on 2 cores shared by the registry,
shoal and the client, and the client verifies every digest on both sides. Through shoal every byte is
hashed twice (shoal, then the client) instead of once, and shoal also writes it to disk: at ~1.5 CPU-s
per GiB for shoal next to ~0.8 for the client's own hash, the pull needs about twice the CPU of a direct
one, which is what the ratio shows. Over a link slower than the CPU (the shaped row, the case a mirror is
for) the CPU is idle enough and shoal costs no time.

![cached blob throughput vs size](benchmarks-cached.svg)

![herd pull time vs N](benchmarks-herd.svg)

## The other benchmarks

Run by hand (they print ratios against a baseline measured in the same run; machines are shared and
absolute timings are not stable):

`+"```"+`sh
go test -run '^$' -bench Mirror -benchtime 3x -timeout 60m ./bench          # cached blob vs http.FileServer, RSS under 50×1 GiB, cold pull vs direct (loopback and a 100 MiB/s link)
go test -run '^$' -bench 'Swarm/N=(1|5|10|20)$' -benchtime 1x -timeout 60m ./bench   # N nodes pulling at once: upstream bytes and pull times vs N independent caches and distribution proxies
go test -run '^$' -bench Load500 -benchtime 1x ./bench                       # 500 concurrent clients against one daemon
go test -run '^$' -bench . -benchtime 2s ./store/                            # store commit/read vs raw files, stat and open with 100k blobs
go test -run '^$' -bench 'Lookup10Nodes|ProvideToFindable10Nodes' -benchtime 500x ./p2p/   # DHT lookup and provide-to-findable latency, 10 nodes
go test -run '^$' -bench Transfer -benchtime 5x ./p2p/                       # peer transfer (TLS, Noise, swarm key): one 256 MiB blob and 8 × 64 MiB vs plain HTTP and HTTPS over loopback, interleaved
go test -run '^$' -bench PeerBlob -benchtime 3x -timeout 30m ./bench          # a client's 1 GiB blob GET through a daemon that gets it from a peer vs from the registry vs direct
go test -run '^$' -bench CRIHerd -benchtime 1x -timeout 30m ./bench       # 5 containerd 2.4.2 nodes (crictl pull), each with its shoal vs no mirror: single cold pull and herd, upstream bytes (root)
go test -run '^$' -bench Soak10Nodes -benchtime 1x -timeout 60m ./bench       # 10 daemons, 30 min of steady lookups and transfers: RSS per minute (SHOAL_SOAK=10m for less)
`+"```"+`
`, herdMiB)
	return b.Bytes()
}

// transferRows runs p2p's BenchmarkTransfer (rounds interleaved rounds of each path) in its own
// process and turns its per-round ratios into the page's rows.
func transferRows(b *testing.B, rounds int) []reportRow {
	root, err := runOut("", "go", "env", "GOMOD")
	if err != nil {
		b.Fatal(err)
	}
	out, err := runOut(filepath.Dir(strings.TrimSpace(root)), "go", "test", "-vet=off", "-count=1", "-run", "^$",
		"-bench", "^BenchmarkTransfer$", "-benchtime", fmt.Sprintf("%dx", rounds), "./p2p/")
	if err != nil {
		b.Fatalf("p2p BenchmarkTransfer: %v\n%s", err, out)
	}
	m := parseBenchMetrics(out)
	b.Logf("p2p BenchmarkTransfer: %v", m)
	var rows []reportRow
	for _, c := range []struct{ sub, what string }{
		{"single", "peer transfer of one 256 MiB blob (direct TLS connection, as shoal runs) vs HTTPS"},
		{"8x64MiB", "peer transfer of 8 × 64 MiB at once (direct connections from the pool) vs HTTPS (8 connections)"},
	} {
		r := m["BenchmarkTransfer/"+c.sub]
		if r == nil {
			b.Fatalf("p2p BenchmarkTransfer printed no %s line:\n%s", c.sub, out)
		}
		mb := func(k string) string { return mibs(r[k+"-MB/s"] * 1e6 / (1 << 20)) }
		row := func(what, path, base, baseName, ratio, target string) reportRow {
			return reportRow{what, mb(path), mb(base) + " (" + baseName + ")", fmt.Sprintf("%.2f", r[ratio]),
				fmt.Sprintf("%.2f–%.2f", r[ratio+"-min"], r[ratio+"-max"]), target}
		}
		rows = append(rows,
			row(c.what, "direct", "https", "HTTPS", "direct/https", "≥ 0.9"),
			row("… the same with a swarm key (the direct connection is TLS only)", "direct-psk", "https", "HTTPS", "direct-psk/https", "≥ 0.9"),
			row("… over libp2p streams (TLS 1.3 + yamux; a peer without a direct port)", "p2p", "https", "HTTPS", "p2p/https", ""),
			row("… over libp2p streams with a swarm key (XSalsa20 under TLS)", "p2p-psk", "p2p", "streams without a key", "psk/p2p", ""),
			row("… over libp2p streams with Noise instead of TLS (shoal's fallback)", "p2p-noise", "p2p", "TLS", "noise/tls", ""))
	}
	return rows
}

// parseBenchMetrics reads `go test -bench` output: for each benchmark line (its name without
// the -GOMAXPROCS suffix), every "value unit" pair after the iteration count.
func parseBenchMetrics(out string) map[string]map[string]float64 {
	res := map[string]map[string]float64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := f[0]
		if i := strings.LastIndex(name, "-"); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		m := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				m[f[i+1]] = v
			}
		}
		res[name] = m
	}
	return res
}

func TestParseBenchMetrics(t *testing.T) {
	out := "goos: linux\nBenchmarkTransfer/single-2   \t       5\t1367536258 ns/op\t 196.29 MB/s\t      3839 http-MB/s\t         0.7140 p2p/https\n" +
		"--- BENCH: BenchmarkTransfer/single-2\nBenchmarkTransfer/8x64MiB-2 \t 5\t 3637985554 ns/op\t 0.9420 p2p/https\t 0.5680 p2p/https-min\nPASS\n"
	m := parseBenchMetrics(out)
	if got := m["BenchmarkTransfer/single"]["p2p/https"]; got != 0.714 {
		t.Errorf("single p2p/https = %v, want 0.714 (all: %v)", got, m)
	}
	if got := m["BenchmarkTransfer/single"]["http-MB/s"]; got != 3839 {
		t.Errorf("single http-MB/s = %v, want 3839", got)
	}
	if got := m["BenchmarkTransfer/8x64MiB"]["p2p/https-min"]; got != 0.568 {
		t.Errorf("8x p2p/https-min = %v, want 0.568", got)
	}
	if len(m) != 2 {
		t.Errorf("parsed %d benchmarks, want 2: %v", len(m), m)
	}
}
