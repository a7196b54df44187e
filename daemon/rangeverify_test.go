package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/mirror"
)

// corruptBlobAt makes the upstream registry send the blob at path with the byte at offset
// flipped, as a registry whose storage went bad would: same length, same headers.
func corruptBlobAt(up *upstreamLog, path string, offset int) {
	inner := up.srv.Config.Handler
	up.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path || r.Method != http.MethodGet {
			inner.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if len(body) > offset {
			body[offset] ^= 0xff
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
	})
}

func layerBytes(t *testing.T, l v1.Layer) (digest.Digest, []byte) {
	t.Helper()
	h, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return digest.Digest(h.String()), b
}

// getRange asks the mirror for a range of a blob and reads the whole answer; err is the
// request's or the body's error (a cut transfer; then resp may be an empty response).
func getRange(t *testing.T, d *Daemon, repo string, dg digest.Digest, rng string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+d.Addr()+"/v2/"+repo+"/blobs/"+dg.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", rng)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return &http.Response{Header: http.Header{}}, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// TestColdRangeOfCorruptBlobIsNeverComplete: the upstream's copy of a layer is damaged (at
// offset 10, inside the range, or in the middle of the blob, outside it). A cold
// "Range: bytes=0-99" must end in an error status or a cut transfer, never in a complete 206:
// a range is a whole answer to containerd's resumes and to lazy-pull snapshotters.
func TestColdRangeOfCorruptBlobIsNeverComplete(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		offset func(size int) int
		rate   int64 // upstream bytes/s; 0 = loopback speed
	}{
		{"inside the range", func(int) int { return 10 }, 0},
		{"outside the range", func(size int) int { return size / 2 }, 0},
		// The verdict comes after the status line went out: the transfer must be cut.
		{"inside the range, slow upstream", func(int) int { return 10 }, 400 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t)
			img := pushRandom(t, up, "test/corrupt", 1<<20, 1)
			layers, _ := img.Layers()
			dg, good := layerBytes(t, layers[0])
			path := "/v2/test/corrupt/blobs/" + dg.String()
			corruptBlobAt(up, path, tc.offset(len(good)))
			target := up.host()
			if tc.rate > 0 {
				p := newFaultProxy(t, up.host())
				p.rate.Store(tc.rate)
				target = p.addr()
			}
			d, logs := startBehind(t, target)

			resp, body, err := getRange(t, d, "test/corrupt", dg, "bytes=0-99")
			if resp.StatusCode == http.StatusPartialContent && err == nil && len(body) == 100 {
				t.Fatalf("complete 206 for a blob that does not verify (bytes right: %v)\n%s", bytes.Equal(body, good[:100]), logs)
			}
			t.Logf("status %d, %d bytes, read error %v", resp.StatusCode, len(body), err)
			switch {
			case tc.rate > 0 && (resp.StatusCode != http.StatusPartialContent || err == nil):
				t.Errorf("slow upstream: status %d, read error %v; want a 206 cut before its last byte", resp.StatusCode, err)
			case tc.rate == 0 && resp.StatusCode != http.StatusBadGateway:
				t.Errorf("status %d, want 502 DIGEST_INVALID: the verdict came within the first-byte wait", resp.StatusCode)
			}
			if _, err := d.store.Stat(context.Background(), dg); err == nil {
				t.Error("the corrupt blob was stored")
			}
		})
	}
}

// TestColdRangeOfGoodBlob: with an honest upstream, cold ranges get 206 with the right bytes
// and Content-Range, once the whole blob verified: a closed range at the start, one that ends
// at the blob's last byte, an open "bytes=N-" and a one-byte range in the middle.
func TestColdRangeOfGoodBlob(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	img := pushRandom(t, up, "test/ranges", 1<<20, 4)
	p := newFaultProxy(t, up.host())
	p.rate.Store(16 << 20) // ~60 ms per layer: the range is asked while the download runs
	d, logs := startBehind(t, p.addr())
	layers, _ := img.Layers()
	cases := []struct {
		name       string
		rng        func(size int) (hdr string, start, end int)
		layerIndex int
	}{
		{"first 100 bytes", func(int) (string, int, int) { return "bytes=0-99", 0, 99 }, 0},
		{"up to the last byte", func(n int) (string, int, int) {
			return fmt.Sprintf("bytes=%d-%d", n-100, n-1), n - 100, n - 1
		}, 1},
		{"open range", func(n int) (string, int, int) { return fmt.Sprintf("bytes=%d-", n/3), n / 3, n - 1 }, 2},
		{"one byte in the middle", func(n int) (string, int, int) { return fmt.Sprintf("bytes=%d-%d", n/2, n/2), n / 2, n / 2 }, 3},
	}
	for _, tc := range cases {
		dg, good := layerBytes(t, layers[tc.layerIndex])
		hdr, start, end := tc.rng(len(good))
		resp, body, err := getRange(t, d, "test/ranges", dg, hdr)
		if err != nil || resp.StatusCode != http.StatusPartialContent {
			t.Fatalf("%s: status %d, read error %v\n%s", tc.name, resp.StatusCode, err, logs)
		}
		if want := fmt.Sprintf("bytes %d-%d/%d", start, end, len(good)); resp.Header.Get("Content-Range") != want {
			t.Errorf("%s: Content-Range %q, want %q", tc.name, resp.Header.Get("Content-Range"), want)
		}
		if !bytes.Equal(body, good[start:end+1]) {
			t.Errorf("%s: got %d bytes, not the blob's bytes %d-%d", tc.name, len(body), start, end)
		}
		// The answer was complete only once the blob verified: either the download is still
		// in flight and verified, or it is committed.
		if inFlight, verified := d.fetch.Verified(dg); inFlight {
			if !verified {
				t.Errorf("%s: complete 206 before the blob verified", tc.name)
			}
		} else if _, err := d.store.Stat(context.Background(), dg); err != nil {
			t.Errorf("%s: complete 206, but the blob is neither verified in flight nor stored: %v", tc.name, err)
		}
		if src := resp.Header.Get(mirror.HeaderSource); !strings.Contains("upstream inflight", src) {
			t.Errorf("%s: source %q", tc.name, src)
		}
	}
	checkStore(t, d)
}
