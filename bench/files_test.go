package bench

// File benchmarks for issue 19 (run by hand; SHOAL_BENCH_FILE_MIB sets the file size, default 512):
//
//	go test -run '^$' -bench Files -benchtime 3x -timeout 30m ./bench
//
//   - BenchmarkFilesColdShaped: a cold Hugging Face LFS file through a fresh shoal (HEAD on the
//     Hub, 302 to the CDN followed server-side, sha256 verified, stored) vs the same file
//     straight from the CDN, both over one link paced to 100 MiB/s; reports shoal/direct
//     (goal ≤ 1.10).
//   - BenchmarkFilesCached: the same file from shoal's store vs http.FileServer over the same
//     bytes; reports shoal/fileserver (goal ≥ 0.90).

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/shoal-mirror/shoal/files/filestest"
)

func fileBenchSize() int {
	mib := 512
	if v, err := strconv.Atoi(os.Getenv("SHOAL_BENCH_FILE_MIB")); err == nil && v > 0 {
		mib = v
	}
	return mib << 20
}

// fileFixture is a Hub fixture with one LFS file, its CDN behind a 100 MiB/s link.
func fileFixture(b *testing.B) (fx *filestest.Fixture, f *filestest.File, cdnShaped string) {
	b.Helper()
	data := make([]byte, fileBenchSize())
	if _, err := rand.Read(data); err != nil {
		b.Fatal(err)
	}
	fx = filestest.New(b)
	fx.AddModel("bench/model", map[string][]byte{"model.safetensors": data}, false)
	return fx, fx.File("bench/model", "model.safetensors"), shapedProxy(b, fx.CDN.URL, shapedRate)
}

// startShoalFiles runs a fresh shoal whose Hub is hf and whose CDN is cdn.
func (e *env) startShoalFiles(b *testing.B, hf, cdn string) string {
	b.Helper()
	addr, err := freeAddr()
	if err != nil {
		b.Fatal(err)
	}
	data, err := os.MkdirTemp(e.dir, "shoal-files-")
	if err != nil {
		b.Fatal(err)
	}
	cmd, err := e.start(data+".log", e.shoal, "daemon", "--p2p=false", "--listen", addr, "--data-dir", data,
		"--file-host", "huggingface.co="+hf, "--file-host", "cdn-lfs.hf.co="+cdn, "--log-level", "warn")
	if err != nil {
		b.Fatal(err)
	}
	if err := waitOK("http://"+addr+"/v2/", 60*time.Second); err != nil {
		b.Fatalf("shoal: %v", err)
	}
	b.Cleanup(func() { stopProc(cmd); os.RemoveAll(data) })
	return "http://" + addr
}

func BenchmarkFilesColdShaped(b *testing.B) {
	e := getEnv(b)
	fx, f, cdn := fileFixture(b)
	direct := cdn + "/repos/" + f.SHA256[:2] + "/" + f.SHA256[2:4] + "/" + f.SHA256 + "?X-Amz-Signature=bench"
	want := "sha256:" + f.SHA256
	var tShoal, tDirect time.Duration
	b.SetBytes(int64(len(f.Data)))
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		base := e.startShoalFiles(b, fx.HF.URL, cdn)
		b.StartTimer()
		d, err := download(base+"/hf/bench/model/resolve/main/model.safetensors", want)
		if err != nil {
			b.Fatal(err)
		}
		tShoal += d
		if d, err = download(direct, want); err != nil {
			b.Fatal(err)
		}
		tDirect += d
	}
	b.StopTimer()
	s, d := tShoal.Seconds()/float64(b.N), tDirect.Seconds()/float64(b.N)
	b.ReportMetric(s, "shoal-s")
	b.ReportMetric(d, "direct-s")
	b.ReportMetric(s/d, "shoal/direct")
	b.Logf("cold %d MiB file over a %d MiB/s link: through shoal %.2f s, direct from the CDN %.2f s, ratio %.3f",
		len(f.Data)>>20, shapedRate>>20, s, d, s/d)
}

func BenchmarkFilesCached(b *testing.B) {
	e := getEnv(b)
	fx, f, _ := fileFixture(b)
	base := e.startShoalFiles(b, fx.HF.URL, fx.CDN.URL)
	u := base + "/hf/bench/model/resolve/main/model.safetensors"
	want := "sha256:" + f.SHA256
	if _, err := download(u, want); err != nil { // fill the cache
		b.Fatal(err)
	}
	path := filepath.Join(e.dir, "model.safetensors")
	if err := os.WriteFile(path, f.Data, 0o644); err != nil {
		b.Fatal(err)
	}
	defer os.Remove(path)
	fs := startFileServer(b, path)
	if _, err := download(fs, ""); err != nil { // warm the page cache
		b.Fatal(err)
	}
	var tShoal, tFS time.Duration
	b.SetBytes(int64(len(f.Data)))
	b.ResetTimer()
	for range b.N {
		d, err := download(u, "")
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
	n := int64(len(f.Data)) * int64(b.N)
	ms, mf := mibps(n, tShoal), mibps(n, tFS)
	b.ReportMetric(ms, "shoal-MiB/s")
	b.ReportMetric(mf, "fileserver-MiB/s")
	b.ReportMetric(ms/mf, "shoal/fileserver")
	b.Logf("cached %d MiB file: shoal %.0f MiB/s, http.FileServer %.0f MiB/s, ratio %.3f", len(f.Data)>>20, ms, mf, ms/mf)
}
