package bench

// Mirror benchmarks for issue 2 (run by hand; they take a few minutes and ~4 GiB in $TMPDIR):
//
//	go test -run '^$' -bench Mirror -benchtime 3x -timeout 60m ./bench
//
// Needs docker-registry on PATH (`bash .ci/install-deps`). Each benchmark reports its figures as
// custom metrics next to a baseline measured in the same run:
//
//   - BenchmarkMirrorCachedBlob: GET of a cached 1 GiB blob from shoal vs a plain
//     http.FileServer over the same bytes on the same filesystem, alternating; reports
//     shoal-MiB/s, fileserver-MiB/s and shoal/fileserver (goal ≥ 0.90).
//   - BenchmarkMirrorRSS50x1GiB: 50 concurrent GETs of the cached 1 GiB blob; reports the
//     daemon's peak RSS (VmHWM from /proc/PID/status) before and after (goal < 100 MiB) and the
//     aggregate throughput.
//   - BenchmarkMirrorColdPull: a cold pull (HEAD tag, GET manifest, config and 4 × 128 MiB layers,
//     3 in parallel, as containerd does) through a fresh shoal vs directly from the same upstream,
//     alternating; reports shoal-s, direct-s and shoal/direct (goal ≤ 1.10).
//   - BenchmarkMirrorColdPullShaped: the same over a link paced to 100 MiB/s (one token bucket
//     for all connections), the case a mirror exists for; on loopback the unshaped run is
//     CPU-bound on 2 cores (shoal hashes every byte at ~1 GB/s and writes it to disk).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-mirror/shoal/internal/testutil"
)

const (
	bigSize    = 1 << 30
	layerSize  = 128 << 20
	coldLayers = 4
	accept     = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, */*"
)

// env is built once per `go test` run and shared by the benchmarks.
type env struct {
	dir      string
	shoal    string // binary
	upstream string // http://127.0.0.1:PORT (docker-registry)
	bigFile  string // the 1 GiB blob's bytes on disk
	bigDgst  string
	procs    []*exec.Cmd
}

var (
	envOnce sync.Once
	theEnv  *env
	envErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if theEnv != nil {
		theEnv.close()
	}
	os.Exit(code)
}

func getEnv(b testing.TB) *env {
	b.Helper()
	envOnce.Do(func() { theEnv, envErr = setup() })
	if envErr != nil {
		b.Fatal(envErr)
	}
	return theEnv
}

// buildShoal builds the shoal binary into dir and returns its path.
func buildShoal(dir string) (string, error) {
	if bin := os.Getenv("SHOAL_BENCH_BINARY"); bin != "" {
		return bin, nil // a prebuilt shoal, e.g. to profile it with perf
	}
	root, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "shoal")
	build := exec.Command("go", "build", "-o", bin, "./cmd/shoal")
	build.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/shoal: %v\n%s", err, out)
	}
	return bin, nil
}

func setup() (*env, error) {
	dir, err := os.MkdirTemp("", "shoal-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir}
	if e.shoal, err = buildShoal(dir); err != nil {
		return e, err
	}
	reg, err := exec.LookPath("docker-registry")
	if err != nil {
		return e, fmt.Errorf("docker-registry not found: run `bash .ci/install-deps` (apt-get install docker-registry)")
	}
	addr, err := freeAddr()
	if err != nil {
		return e, err
	}
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: %s\n  secret: bench\nhealth:\n  storagedriver:\n    enabled: false\n",
		filepath.Join(dir, "registry"), addr)
	cfgPath := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return e, err
	}
	if _, err := e.start(filepath.Join(dir, "registry.log"), reg, "serve", cfgPath); err != nil {
		return e, err
	}
	e.upstream = "http://" + addr
	if err := waitOK(e.upstream+"/v2/", 30*time.Second); err != nil {
		return e, err
	}

	// The 1 GiB blob, also kept as a file for the baseline file server.
	e.bigFile = filepath.Join(dir, "big.bin")
	if e.bigDgst, err = writeRandom(e.bigFile, 1, bigSize); err != nil {
		return e, err
	}
	if err := pushBlob(e.upstream, "bench/big", e.bigFile, e.bigDgst); err != nil {
		return e, err
	}
	// The cold-pull image: config + 4 × 128 MiB layers.
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cfgFile := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgFile, config, 0o644); err != nil {
		return e, err
	}
	cfgDgst := digestOf(config)
	if err := pushBlob(e.upstream, "bench/cold", cfgFile, cfgDgst); err != nil {
		return e, err
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
	for i := range coldLayers {
		f := filepath.Join(dir, fmt.Sprintf("layer%d.bin", i))
		d, err := writeRandom(f, uint64(10+i), layerSize)
		if err != nil {
			return e, err
		}
		if err := pushBlob(e.upstream, "bench/cold", f, d); err != nil {
			return e, err
		}
		os.Remove(f)
		man.Layers = append(man.Layers, desc{"application/vnd.oci.image.layer.v1.tar", d, layerSize})
	}
	mb, _ := json.Marshal(man)
	req, _ := http.NewRequest(http.MethodPut, e.upstream+"/v2/bench/cold/manifests/v1", bytes.NewReader(mb))
	req.Header.Set("Content-Type", man.MediaType)
	if err := expect(http.DefaultClient.Do(req))(http.StatusCreated); err != nil {
		return e, fmt.Errorf("push manifest: %w", err)
	}
	return e, nil
}

func (e *env) close() {
	for _, c := range e.procs {
		stopProc(c)
	}
	os.RemoveAll(e.dir)
}

// start runs a child with its output in logPath; it is killed with its group at the end.
func (e *env) start(logPath string, argv ...string) (*exec.Cmd, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	c := exec.Command(argv[0], argv[1:]...)
	c.Stdout, c.Stderr = lf, lf
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.Start(); err != nil {
		return nil, err
	}
	e.procs = append(e.procs, c)
	return c, nil
}

func stopProc(c *exec.Cmd) {
	if c.ProcessState != nil {
		return
	}
	_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// startShoal runs a daemon with a fresh data dir in front of the upstream.
func (e *env) startShoal(b testing.TB) (url string, cmd *exec.Cmd) {
	b.Helper()
	return e.startShoalFor(b, e.upstream)
}

// startShoalFor runs a daemon whose docker.io upstream is the given URL.
func (e *env) startShoalFor(b testing.TB, upstreamURL string) (url string, cmd *exec.Cmd) {
	b.Helper()
	url, cmd, _ = e.startShoalData(b, upstreamURL)
	return url, cmd
}

// startShoalData is startShoalFor that also returns the daemon's data directory.
func (e *env) startShoalData(b testing.TB, upstreamURL string, extra ...string) (url string, cmd *exec.Cmd, data string) {
	b.Helper()
	addr, err := freeAddr()
	if err != nil {
		b.Fatal(err)
	}
	data, err = os.MkdirTemp(e.dir, "shoal-data-")
	if err != nil {
		b.Fatal(err)
	}
	up := strings.TrimPrefix(e.upstream, "http://")
	args := []string{e.shoal, "daemon", "--p2p=false", "--listen", addr, "--data-dir", data,
		"--registry", "docker.io=" + upstreamURL, "--registry", up + "=" + e.upstream, "--log-level", "warn"}
	cmd, err = e.start(data+".log", append(args, extra...)...)
	if err != nil {
		b.Fatal(err)
	}
	if err := waitOK("http://"+addr+"/v2/", 60*time.Second); err != nil {
		b.Fatalf("shoal: %v", err)
	}
	b.Cleanup(func() { stopProc(cmd); os.RemoveAll(data) })
	return "http://" + addr, cmd, data
}

// BenchmarkMirrorCachedBlob compares a cached 1 GiB blob GET from shoal with http.FileServer.
func BenchmarkMirrorCachedBlob(b *testing.B) {
	e := getEnv(b)
	shoalURL, _ := e.startShoal(b)
	blobURL := shoalURL + "/v2/bench/big/blobs/" + e.bigDgst
	if _, err := download(blobURL, e.bigDgst); err != nil { // fill the cache
		b.Fatal(err)
	}
	fs := startFileServer(b, e.bigFile)
	if _, err := download(fs, ""); err != nil { // warm the page cache
		b.Fatal(err)
	}
	var tShoal, tFS time.Duration
	b.SetBytes(bigSize)
	b.ResetTimer()
	for range b.N {
		d, err := download(blobURL, "")
		if err != nil {
			b.Fatal(err)
		}
		tShoal += d
		if d, err = download(fs, ""); err != nil {
			b.Fatal(err)
		}
		tFS += d
	}
	b.StopTimer()
	ms := mibps(bigSize*int64(b.N), tShoal)
	mf := mibps(bigSize*int64(b.N), tFS)
	b.ReportMetric(ms, "shoal-MiB/s")
	b.ReportMetric(mf, "fileserver-MiB/s")
	b.ReportMetric(ms/mf, "shoal/fileserver")
	b.Logf("cached 1 GiB blob: shoal %.0f MiB/s, http.FileServer %.0f MiB/s, ratio %.3f", ms, mf, ms/mf)
}

// BenchmarkMirrorRSS50x1GiB serves 50 concurrent GETs of a cached 1 GiB blob and reports the
// daemon's peak RSS.
func BenchmarkMirrorRSS50x1GiB(b *testing.B) {
	e := getEnv(b)
	shoalURL, cmd := e.startShoal(b)
	blobURL := shoalURL + "/v2/bench/big/blobs/" + e.bigDgst
	if _, err := download(blobURL, e.bigDgst); err != nil {
		b.Fatal(err)
	}
	before := vmHWM(b, cmd.Process.Pid)
	const n = 50
	b.SetBytes(n * bigSize)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := download(blobURL, ""); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	el := time.Since(start)
	b.StopTimer()
	after := vmHWM(b, cmd.Process.Pid)
	b.ReportMetric(float64(before)/1024, "VmHWM-before-MiB")
	b.ReportMetric(float64(after)/1024, "VmHWM-MiB")
	b.ReportMetric(mibps(n*bigSize*int64(b.N), el), "aggregate-MiB/s")
	b.Logf("50 × 1 GiB concurrent: peak RSS %d MiB (after the cold fill: %d MiB), aggregate %.0f MiB/s",
		after/1024, before/1024, mibps(n*bigSize*int64(b.N), el))
}

// BenchmarkMirrorColdPull compares a cold pull through a fresh shoal with a pull straight from
// the upstream.
func BenchmarkMirrorColdPull(b *testing.B) {
	e := getEnv(b)
	s, d := coldPulls(b, e, e.upstream)
	b.Logf("cold pull of %d MiB: through shoal %.2f s, direct %.2f s, ratio %.3f", coldLayers*layerSize>>20, s, d, s/d)
}

// BenchmarkMirrorColdPullShaped is BenchmarkMirrorColdPull over a link shaped like a fast WAN
// path to a registry (shapedRate, shared by all connections, as a real link is): the case a
// mirror is for, where the network, not the CPU, sets the pace.
func BenchmarkMirrorColdPullShaped(b *testing.B) {
	e := getEnv(b)
	s, d := coldPulls(b, e, shapedProxy(b, e.upstream, shapedRate))
	b.Logf("cold pull of %d MiB over a %d MiB/s link: through shoal %.2f s, direct %.2f s, ratio %.3f",
		coldLayers*layerSize>>20, shapedRate>>20, s, d, s/d)
}

// coldPulls alternates b.N cold pulls through a fresh shoal in front of upstream with direct
// pulls from it, reports the mean times and their ratio, and returns them.
func coldPulls(b *testing.B, e *env, upstream string) (shoalS, directS float64) {
	if _, err := pullImage(e.upstream, "bench/cold", "v1"); err != nil { // warm the upstream's page cache
		b.Fatal(err)
	}
	var tShoal, tDirect time.Duration
	b.SetBytes(int64(coldLayers * layerSize))
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		shoalURL, cmd := e.startShoalFor(b, upstream)
		b.StartTimer()
		d, err := pullImage(shoalURL, "bench/cold", "v1")
		if err != nil {
			b.Fatal(err)
		}
		tShoal += d
		b.StopTimer()
		stopProc(cmd)
		b.StartTimer()
		if d, err = pullImage(upstream, "bench/cold", "v1"); err != nil {
			b.Fatal(err)
		}
		tDirect += d
	}
	b.StopTimer()
	shoalS, directS = tShoal.Seconds()/float64(b.N), tDirect.Seconds()/float64(b.N)
	b.ReportMetric(shoalS, "shoal-s")
	b.ReportMetric(directS, "direct-s")
	b.ReportMetric(shoalS/directS, "shoal/direct")
	return shoalS, directS
}

// shapedRate is the shaped link's bandwidth: 100 MiB/s, about a gigabit path to a registry.
const shapedRate = 100 << 20

// shapedProxy forwards to upstream and paces response bodies to rate bytes/s in total.
func shapedProxy(b testing.TB, upstream string, bps int) string {
	b.Helper()
	target, err := url.Parse(upstream)
	if err != nil {
		b.Fatal(err)
	}
	link := testutil.NewLink(float64(bps))
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(r *http.Response) error {
		r.Body = link.Body(r.Body)
		return nil
	}
	srv := httptest.NewServer(rp)
	b.Cleanup(srv.Close)
	return srv.URL
}

// pullImage does what containerd does for a single-arch image: HEAD the tag, GET the manifest by
// digest, then config and layers (3 at a time), verifying every digest. It returns the time taken.
func pullImage(base, repo, tag string) (time.Duration, error) {
	start := time.Now()
	req, _ := http.NewRequest(http.MethodHead, base+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", accept)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	dg := resp.Header.Get("Docker-Content-Digest")
	if resp.StatusCode != http.StatusOK || dg == "" {
		return 0, fmt.Errorf("HEAD %s:%s: %s, digest %q", repo, tag, resp.Status, dg)
	}
	req, _ = http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/manifests/"+dg, nil)
	req.Header.Set("Accept", accept)
	resp, err = client.Do(req)
	if err != nil {
		return 0, err
	}
	mb, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || digestOf(mb) != dg {
		return 0, fmt.Errorf("GET manifest %s: %s %v", dg, resp.Status, err)
	}
	var man struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(mb, &man); err != nil {
		return 0, err
	}
	blobs := []string{man.Config.Digest}
	for _, l := range man.Layers {
		blobs = append(blobs, l.Digest)
	}
	sem := make(chan struct{}, 3)
	errs := make(chan error, len(blobs))
	var wg sync.WaitGroup
	for _, d := range blobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if _, err := download(base+"/v2/"+repo+"/blobs/"+d, d); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return 0, err
	}
	return time.Since(start), nil
}

var client = &http.Client{Transport: &http.Transport{
	DisableCompression:  true,
	MaxIdleConnsPerHost: 64,
	ReadBufferSize:      1 << 20,
}}

// download GETs url and discards the body (verifying it against want when set).
func download(url, want string) (time.Duration, error) {
	start := time.Now()
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	buf := make([]byte, 1<<20)
	var w io.Writer = io.Discard
	h := sha256.New()
	if want != "" {
		w = h
	}
	n, err := io.CopyBuffer(w, resp.Body, buf)
	if err != nil {
		return 0, fmt.Errorf("GET %s: after %d bytes: %w", url, n, err)
	}
	if want != "" && "sha256:"+hex.EncodeToString(h.Sum(nil)) != want {
		return 0, fmt.Errorf("GET %s: wrong digest", url)
	}
	return time.Since(start), nil
}

func startFileServer(b testing.TB, file string) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(filepath.Dir(file)))}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/" + filepath.Base(file)
}

// vmHWM returns a process's peak resident set size in KiB.
func vmHWM(b testing.TB, pid int) int64 {
	b.Helper()
	kb, err := procStatusKiB(pid, "VmHWM")
	if err != nil {
		b.Fatal(err)
	}
	return kb
}

// procStatusKiB reads one "Field:   N kB" line of a live process's /proc status.
func procStatusKiB(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// writeRandom writes size seeded random bytes to path and returns their digest.
func writeRandom(path string, seed uint64, size int64) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var key [32]byte
	key[0] = byte(seed)
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.NewChaCha8(key), size); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), f.Close()
}

// pushBlob uploads a file as one blob (monolithic POST + PUT).
func pushBlob(base, repo, path, dgst string) error {
	resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("start upload: %s", resp.Status)
	}
	loc := resp.Header.Get("Location")
	if strings.HasPrefix(loc, "/") {
		loc = base + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, _ := f.Stat()
	req, _ := http.NewRequest(http.MethodPut, loc+sep+"digest="+dgst, f)
	req.ContentLength = st.Size()
	req.Header.Set("Content-Type", "application/octet-stream")
	return expect(http.DefaultClient.Do(req))(http.StatusCreated)
}

func expect(resp *http.Response, err error) func(int) error {
	return func(code int) error {
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != code {
			b, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("%s: %s", resp.Status, b)
		}
		return nil
	}
}

func waitOK(url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s (last: %v)", url, timeout, err)
		case <-time.After(50 * time.Millisecond): // polling interval
		}
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func mibps(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }
