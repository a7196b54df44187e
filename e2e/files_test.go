package e2e

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-mirror/shoal/files/filestest"
)

// TestFilesThroughDaemon: a real `shoal daemon` whose file hosts are mapped with --file-host to
// the Hub/GitHub fixture: `shoal pull hf://…` warms it, then curl -L fetches a release asset and
// a gated model file (fetched with --hf-token-file, the token never in the log), with 0 more
// upstream bytes for what the pull warmed.
func TestFilesThroughDaemon(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatalf("curl is needed (.ci/install-deps): %v", err)
	}
	rnd := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return b
	}
	fx := filestest.New(t)
	fx.Token = "hf_e2e_secret_token"
	weights, cfg, gated, asset := rnd(3<<20), []byte(`{"hidden":8}`), rnd(1<<20), rnd(512<<10)
	fx.AddModel("acme/m", map[string][]byte{"model.safetensors": weights, "config.json": cfg, "extra.bin": rnd(2 << 20)}, false)
	fx.AddModel("acme/gated", map[string][]byte{"w.bin": gated}, true)
	fx.AddRelease("acme/tool", "v1.0.0", map[string][]byte{"tool.tgz": asset}, true)

	args := []string{"--hf-token-file", writeSecret(t, fx.Token)}
	for h, u := range fx.Hosts() {
		args = append(args, "--file-host", h+"="+u)
	}
	d := startOpsShoal(t, shoalOpts{args: args})

	r := d.run(t, 0, "pull", "hf://acme/m@main", "--include", "*.safetensors", "--include", "config.json")
	if !strings.Contains(r.Stdout, "model.safetensors") || !strings.Contains(r.Stdout, "config.json") || strings.Contains(r.Stdout, "extra.bin") {
		t.Errorf("shoal pull hf://acme/m --include: output\n%s", r.Stdout)
	}
	warmed := fx.FileBytes.Load()

	dir := t.TempDir()
	curl := func(path string) []byte {
		t.Helper()
		out := filepath.Join(dir, "out")
		if b, err := exec.CommandContext(t.Context(), "curl", "-fsSL", "-o", out, d.URL+path).CombinedOutput(); err != nil {
			t.Fatalf("curl -L %s: %v\n%s", path, err, b)
		}
		b, _ := os.ReadFile(out)
		return b
	}
	if got := curl("/hf/acme/m/resolve/main/model.safetensors"); !bytes.Equal(got, weights) {
		t.Error("model file through the daemon: wrong content")
	}
	if got := curl("/hf/acme/m/resolve/main/config.json"); !bytes.Equal(got, cfg) {
		t.Error("config.json through the daemon: wrong content")
	}
	if n := fx.FileBytes.Load() - warmed; n != 0 {
		t.Errorf("files warmed by shoal pull cost %d more upstream bytes", n)
	}
	if got := curl("/https://github.com/acme/tool/releases/download/v1.0.0/tool.tgz"); !bytes.Equal(got, asset) {
		t.Error("release asset through the daemon: wrong content")
	}
	if got := curl("/hf/acme/gated/resolve/main/w.bin"); !bytes.Equal(got, gated) {
		t.Error("gated file through the daemon: wrong content")
	}
	// The Hub's own error reaches the client as the clients expect it.
	resp, err := http.Get(d.URL + "/hf/acme/m/resolve/main/missing.bin")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("X-Error-Code") != "EntryNotFound" {
		t.Errorf("missing file: %d %q, want 404 EntryNotFound", resp.StatusCode, resp.Header.Get("X-Error-Code"))
	}
	if n := fx.CDNAuth.Load(); n != 0 {
		t.Errorf("the CDN saw the token %d times", n)
	}
	if strings.Contains(d.proc.log(), fx.Token) {
		t.Error("shoal's log contains the Hugging Face token")
	}
}
