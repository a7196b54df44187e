package bench

// Push benchmark for issue 21 (run by hand, under the heavy-run lock; ~2 GiB in $TMPDIR):
//
//	flock /tmp/shoal-heavy.lock go test -run '^$' -bench PushLayer -benchtime 3x -timeout 30m ./bench
//
// BenchmarkPushLayer1GiB pushes a 1 GiB layer into the local namespace of a fresh `shoal daemon`
// (POST, one streamed PATCH, PUT ?digest=, as docker and crane do; the daemon hashes, fsyncs and
// commits it) and, alternating in the same run, copies the same bytes to a new file on the same
// filesystem with one fsync (the raw write a push cannot beat). It reports push-MiB/s,
// raw-MiB/s and push/raw (goal ≥ 0.8).

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func BenchmarkPushLayer1GiB(b *testing.B) {
	dir, err := os.MkdirTemp("", "shoal-bench-push-")
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
	addr, err := freeAddr()
	if err != nil {
		b.Fatal(err)
	}
	e := &env{dir: dir}
	defer e.close()
	if _, err := e.start(filepath.Join(dir, "shoal.log"), bin, "daemon", "--p2p=false", "--listen", addr,
		"--data-dir", filepath.Join(dir, "data"), "--log-level", "warn", "--admin-listen", "off", "--metrics-listen", "off"); err != nil {
		b.Fatal(err)
	}
	base := "http://" + addr
	if err := waitOK(base+"/v2/", 60*time.Second); err != nil {
		b.Fatal(err)
	}
	var pushS, rawS float64
	b.SetBytes(bigSize)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if err := pushChunked(base, "shoal.local/bench/push", src, dgst); err != nil {
			b.Fatal(err)
		}
		pushS += time.Since(t0).Seconds()
		// Delete it so that the next round writes it again (a push of stored content is free).
		req, _ := http.NewRequest(http.MethodDelete, base+"/v2/shoal.local/bench/push/blobs/"+dgst, nil)
		if err := expect(http.DefaultClient.Do(req))(http.StatusAccepted); err != nil {
			b.Fatal(err)
		}
		t0 = time.Now()
		if err := copySync(src, filepath.Join(dir, fmt.Sprintf("raw-%d", i))); err != nil {
			b.Fatal(err)
		}
		rawS += time.Since(t0).Seconds()
		os.Remove(filepath.Join(dir, fmt.Sprintf("raw-%d", i)))
	}
	b.StopTimer()
	mib := float64(bigSize) / (1 << 20) * float64(b.N)
	b.ReportMetric(mib/pushS, "push-MiB/s")
	b.ReportMetric(mib/rawS, "raw-MiB/s")
	b.ReportMetric(rawS/pushS, "push/raw")
}

// pushChunked uploads a file as clients do: POST, one PATCH streaming the bytes, PUT ?digest=.
func pushChunked(base, repo, path, dgst string) error {
	_, err := pushChunkedTimed(base, repo, path, dgst)
	return err
}

// pushChunkedTimed is pushChunked that also says how long the final PUT (verify, fsync,
// commit) took.
func pushChunkedTimed(base, repo, path, dgst string) (time.Duration, error) {
	resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return 0, fmt.Errorf("start upload: %s", resp.Status)
	}
	loc := base + resp.Header.Get("Location")
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	req, _ := http.NewRequest(http.MethodPatch, loc, struct{ io.Reader }{f}) // no length: streamed
	req.Header.Set("Content-Type", "application/octet-stream")
	if err := expect(http.DefaultClient.Do(req))(http.StatusAccepted); err != nil {
		return 0, fmt.Errorf("PATCH: %w", err)
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	req, _ = http.NewRequest(http.MethodPut, loc+sep+"digest="+dgst, nil)
	t0 := time.Now()
	err = expect(http.DefaultClient.Do(req))(http.StatusCreated)
	return time.Since(t0), err
}

// copySync is the baseline: the same bytes into a new file, one fsync.
func copySync(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	// Plain reads and writes: copy_file_range could clone the extents and write nothing.
	if _, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, make([]byte, 1<<20)); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
