package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
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
