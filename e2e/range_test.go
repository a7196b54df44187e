package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestColdRangeOfCorruptBlobWithCurl is issue 14's reproduction: a layer's file in
// docker-registry's storage damaged at offset 10, then curl asks a cold shoal for
// "Range: bytes=0-99". It must never get a complete 206 (an error status, or a transfer curl
// reports as incomplete); an undamaged layer's cold range gets 206 with the right bytes.
func TestColdRangeOfCorruptBlobWithCurl(t *testing.T) {
	t.Parallel()
	curl := tool(t, "curl")
	root := filepath.Join(t.TempDir(), "storage")
	reg := startRegistry(t, "range-upstream", root, registryAuth{})
	ti, err := seedImage(reg.Addr, imageSpec{repo: "test/range", tag: "v1", seed: 14, layers: 2, size: 512 << 10, oci: true})
	if err != nil {
		t.Fatalf("seeding: %v", err)
	}
	blobFile := func(dg string) string {
		hex := strings.TrimPrefix(dg, "sha256:")
		return filepath.Join(root, "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
	}
	bad, good := ti.Layers[0], ti.Layers[1]
	data, err := os.ReadFile(blobFile(bad))
	if err != nil {
		t.Fatalf("the registry's copy of %s: %v", bad, err)
	}
	data[10] ^= 0xff
	if err := os.WriteFile(blobFile(bad), data, 0o644); err != nil {
		t.Fatal(err)
	}
	goodData, err := os.ReadFile(blobFile(good))
	if err != nil {
		t.Fatal(err)
	}
	s := startShoal(t, shoalOpts{config: &shoalConfig{
		Registries: map[string]shoalRegistry{reg.Addr: {URL: reg.URL}},
		Upstream:   &shoalUpstream{OnlyConfigured: true},
	}, defaultRegistry: reg.Addr})

	get := func(dg string) (code string, body []byte, err error) {
		out := filepath.Join(t.TempDir(), "body")
		res, err := runCmd(t.Context(), 60*time.Second, nil, curl, "-sS", "-o", out, "-w", "%{http_code}",
			"-H", "Range: bytes=0-99", s.URL+"/v2/"+ti.Repo+"/blobs/"+dg)
		body, _ = os.ReadFile(out)
		lines := strings.Split(strings.TrimSpace(res), "\n")
		return lines[len(lines)-1], body, err
	}

	code, body, err := get(bad)
	t.Logf("damaged layer: curl says %s, %d bytes, %v", code, len(body), err)
	if code == "206" && err == nil && len(body) == 100 {
		t.Fatalf("complete 206 for a damaged blob (bytes as the registry has them: %v)\n%s", bytes.Equal(body, data[:100]), s.proc.tail(20))
	}
	if err == nil && code != "502" {
		t.Errorf("damaged layer: curl succeeded with %s; want 502 or a transfer cut short", code)
	}

	code, body, err = get(good)
	if err != nil || code != "206" || !bytes.Equal(body, goodData[:100]) {
		t.Fatalf("good layer: %s, %d bytes, %v; want 206 with its first 100 bytes", code, len(body), err)
	}
}

// TestEndlessBlobIsBoundedWithCurl is issue 14's disk-filling reproduction: with
// --store-max-size 100MiB, an upstream answers a blob with a chunked body that never ends. The
// download must stop at the budget (store.max_blob_size's default) without the manifest, at
// the descriptor's size with it; curl sees a cut transfer, the temp file is gone, the log
// names the registry and digest, and the store serves the good layer afterwards.
func TestEndlessBlobIsBoundedWithCurl(t *testing.T) {
	t.Parallel()
	curl := tool(t, "curl")
	root := filepath.Join(t.TempDir(), "storage")
	reg := startRegistry(t, "endless-upstream", root, registryAuth{})
	ti, err := seedImage(reg.Addr, imageSpec{repo: "test/endless", tag: "v1", seed: 15, layers: 2, size: 256 << 10, oci: true})
	if err != nil {
		t.Fatalf("seeding: %v", err)
	}
	bad, good := ti.Layers[0], ti.Layers[1]
	target, _ := url.Parse(reg.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	var sent atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+bad) || r.Method != http.MethodGet {
			rp.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		chunk := bytes.Repeat([]byte("a"), 64<<10)
		for r.Context().Err() == nil {
			n, err := w.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(up.Close)
	host := strings.TrimPrefix(up.URL, "http://")
	s := startShoal(t, shoalOpts{config: &shoalConfig{
		Registries: map[string]shoalRegistry{host: {URL: up.URL}},
		Upstream:   &shoalUpstream{OnlyConfigured: true},
	}, defaultRegistry: host, args: []string{"--store-max-size", "100MiB"}})

	get := func(path string) (string, error) {
		res, err := runCmd(t.Context(), 90*time.Second, nil, curl, "-sS", "--max-time", "60", "-o", "/dev/null",
			"-w", "%{http_code} %{size_download}", s.URL+path)
		return strings.TrimSpace(res), err
	}
	tmp := filepath.Join(s.DataDir, "tmp")
	emptyTmp := func() {
		eventually(t, 10*time.Second, s.proc, "the temp dir is empty", func() error {
			ents, err := os.ReadDir(tmp)
			if err != nil || len(ents) > 0 {
				return fmt.Errorf("%s: %d entries, %v", tmp, len(ents), err)
			}
			return nil
		})
	}

	// No manifest seen: the bound is the budget.
	start := time.Now()
	res, err := get("/v2/" + ti.Repo + "/blobs/" + bad)
	t.Logf("no manifest: curl %q after %s, %v; upstream sent %d MiB", res, time.Since(start).Round(time.Millisecond), err, sent.Load()>>20)
	switch {
	case err == nil:
		t.Fatalf("curl got a complete answer: %s", res)
	case strings.Contains(err.Error(), "timed out") || strings.Contains(res, "Operation timed out"):
		t.Fatalf("the download was not stopped: %s", res)
	case sent.Load() > 100<<20+64<<20:
		t.Errorf("the upstream sent %d bytes for a 100 MiB bound", sent.Load())
	}
	emptyTmp()

	// With the manifest pulled through shoal, the descriptor's size is the bound.
	if r := do(t, http.MethodGet, s.URL, "/v2/"+ti.Repo+"/manifests/"+ti.Tag, acceptAll); r.Status != http.StatusOK {
		t.Fatalf("manifest: %d", r.Status)
	}
	before := sent.Load()
	res, err = get("/v2/" + ti.Repo + "/blobs/" + bad)
	t.Logf("manifest first: curl %q, %v; upstream sent %d KiB", res, err, (sent.Load()-before)>>10)
	if err == nil && !strings.HasPrefix(res, "502 ") {
		t.Fatalf("curl got a complete answer: %s", res)
	}
	if n := sent.Load() - before; n > 64<<20 {
		t.Errorf("the upstream sent %d bytes for a %d-byte layer", n, ti.LayerSizes[bad])
	}
	emptyTmp()
	log := s.proc.log()
	for _, want := range []string{`"msg":"blob download broke its size bound`, `"registry":"` + host + `"`, `"digest":"` + bad + `"`, `"reason":"max_blob_size"`, `"reason":"descriptor"`} {
		if !strings.Contains(log, want) {
			t.Errorf("shoal's log has no %s", want)
		}
	}
	if res, err := get("/v2/" + ti.Repo + "/blobs/" + good); err != nil || res != fmt.Sprintf("200 %d", ti.LayerSizes[good]) {
		t.Errorf("good layer afterwards: %q, %v", res, err)
	}
}
