package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/files/filestest"
	"github.com/shoal-mirror/shoal/p2p"
)

// hubNodeModules is where .ci/install-deps puts @huggingface/hub.
const hubNodeModules = "/usr/local/lib/shoal-test/node/node_modules"

func randBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// startFilesDaemon runs a daemon whose file hosts are the fixture's servers.
func startFilesDaemon(t *testing.T, fx *filestest.Fixture, mod ...func(*Config)) *Daemon {
	t.Helper()
	up := newUpstream(t)
	return startDaemon(t, up, append([]func(*Config){func(c *Config) {
		for h, u := range fx.Hosts() {
			c.SetFileHost(h, u)
		}
	}}, mod...)...)
}

func httpGet(t *testing.T, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// runHub runs a script with @huggingface/hub (the npm package, as users run it).
func runHub(t *testing.T, script string, env ...string) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(hubNodeModules, "@huggingface", "hub")); err != nil {
		t.Fatalf("@huggingface/hub is not installed (run .ci/install-deps): %v", err)
	}
	f := filepath.Join(t.TempDir(), "hub.js")
	if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*60e9)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", f)
	cmd.Env = append(os.Environ(), append([]string{"NODE_PATH=" + hubNodeModules}, env...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	return string(out)
}

const hubScript = `
const hub = require("@huggingface/hub");
const fs = require("fs");
(async () => {
  const hubUrl = process.env.HUB_URL;
  const blob = await hub.downloadFile({ repo: "acme/tiny-model", path: "model.safetensors", hubUrl });
  fs.writeFileSync(process.env.OUT + "/single.bin", Buffer.from(await blob.arrayBuffer()));
  const dir = await hub.snapshotDownload({ repo: "acme/tiny-model", hubUrl, cacheDir: process.env.OUT + "/cache" });
  console.log("SNAPSHOT " + dir);
})().catch((e) => { console.error(e); process.exit(1); });
`

// TestFilesHuggingFaceClient: the official JS client downloads one file and a whole snapshot
// through shoal (hubUrl = shoal/hf); every file matches; the second run costs the Hub 0 file
// bytes; Xet file info never reaches the client.
func TestFilesHuggingFaceClient(t *testing.T) {
	fx := filestest.New(t)
	big := randBytes(t, 3<<20)
	model := map[string][]byte{
		"model.safetensors":   big,
		"config.json":         []byte(`{"architectures":["Tiny"],"hidden_size":8}`),
		"tokenizer/vocab.txt": []byte("a\nb\nc\n"),
		"weights/part-2.bin":  randBytes(t, 200<<10),
		"README.md":           []byte("# tiny\n"),
	}
	commit := fx.AddModel("acme/tiny-model", model, false)
	d := startFilesDaemon(t, fx)
	base := "http://" + d.Addr() + "/hf"

	for run := 1; run <= 2; run++ {
		before := fx.FileBytes.Load()
		out := t.TempDir()
		res := runHub(t, hubScript, "HUB_URL="+base, "OUT="+out)
		got, err := os.ReadFile(filepath.Join(out, "single.bin"))
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("run %d: downloadFile through shoal: %d bytes, err %v; want the model's %d bytes", run, len(got), err, len(big))
		}
		snap := strings.TrimSpace(res[strings.Index(res, "SNAPSHOT ")+len("SNAPSHOT "):])
		if !strings.HasSuffix(snap, commit) {
			t.Errorf("run %d: snapshot dir %s, want one named by commit %s", run, snap, commit)
		}
		for p, want := range model {
			got, err := os.ReadFile(filepath.Join(snap, p))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("run %d: snapshot file %s: %d bytes, err %v; want %d bytes", run, p, len(got), err, len(want))
			}
		}
		spent := fx.FileBytes.Load() - before
		t.Logf("run %d: the Hub and its CDN sent %d file bytes", run, spent)
		if run == 2 && spent != 0 {
			t.Errorf("second download sent %d file bytes from the upstream, want 0", spent)
		}
	}
	if n := fx.Count("cdn GET"); n != 2 { // model.safetensors and weights/part-2.bin, once each
		t.Errorf("CDN GETs = %d, want 2 (one per LFS file)", n)
	}

	// Xet negotiation does not pass through; the plain answer carries the Hub's headers.
	resp, body := httpGet(t, base+"/acme/tiny-model/resolve/main/model.safetensors", "Range", "bytes=0-0", "Accept", "application/vnd.xet-fileinfo+json, */*")
	f := fx.File("acme/tiny-model", "model.safetensors")
	switch {
	case resp.StatusCode != http.StatusPartialContent:
		t.Errorf("probe: status %d, want 206", resp.StatusCode)
	case strings.Contains(resp.Header.Get("Content-Type"), "xet"), resp.Header.Get("X-Xet-Hash") != "":
		t.Errorf("probe: Xet file info passed through: %v", resp.Header)
	case resp.Header.Get("X-Linked-Etag") != `"`+f.SHA256+`"` || resp.Header.Get("X-Linked-Size") != strconv.Itoa(len(big)):
		t.Errorf("probe: X-Linked-Etag %q X-Linked-Size %q", resp.Header.Get("X-Linked-Etag"), resp.Header.Get("X-Linked-Size"))
	case resp.Header.Get("X-Repo-Commit") != commit || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 0-0/%d", len(big)) || !bytes.Equal(body, big[:1]):
		t.Errorf("probe: X-Repo-Commit %q Content-Range %q body %x", resp.Header.Get("X-Repo-Commit"), resp.Header.Get("Content-Range"), body)
	}
	// A missing file is the Hub's EntryNotFound, which the clients read.
	resp, _ = httpGet(t, base+"/acme/tiny-model/resolve/main/nope.bin")
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("X-Error-Code") != "EntryNotFound" {
		t.Errorf("missing file: %d X-Error-Code %q, want 404 EntryNotFound", resp.StatusCode, resp.Header.Get("X-Error-Code"))
	}
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestFilesGitHubReleaseCurlWget: curl -L and wget fetch release assets through the hubproxy
// form; an asset with an API digest is verified and kept, one without is kept on the node;
// the second fetch costs GitHub 0 bytes.
func TestFilesGitHubReleaseCurlWget(t *testing.T) {
	for _, tool := range []string{"curl", "wget"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (.ci/install-deps): %v", tool, err)
		}
	}
	fx := filestest.New(t)
	withDigest, noDigest := randBytes(t, 2<<20), randBytes(t, 300<<10)
	fx.AddRelease("acme/tool", "v1.2.0", map[string][]byte{"tool-linux-amd64.tar.gz": withDigest}, true)
	fx.AddRelease("acme/tool", "v0.9.0", map[string][]byte{"tool-old.tar.gz": noDigest}, false)
	d := startFilesDaemon(t, fx)
	dir := t.TempDir()
	fetch := func(tool, tag, name string) []byte {
		t.Helper()
		u := "http://" + d.Addr() + "/https://github.com/acme/tool/releases/download/" + tag + "/" + name
		out := filepath.Join(dir, tool+"-"+name)
		var cmd *exec.Cmd
		if tool == "curl" {
			cmd = exec.CommandContext(t.Context(), "curl", "-fsSL", "-o", out, u)
		} else {
			cmd = exec.CommandContext(t.Context(), "wget", "-q", "-O", out, u)
		}
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", tool, u, err, b)
		}
		b, _ := os.ReadFile(out)
		return b
	}
	for i, tool := range []string{"curl", "wget"} {
		before := fx.FileBytes.Load()
		if got := fetch(tool, "v1.2.0", "tool-linux-amd64.tar.gz"); sha256hex(got) != sha256hex(withDigest) {
			t.Errorf("%s: asset with digest: got %d bytes, wrong content", tool, len(got))
		}
		if got := fetch(tool, "v0.9.0", "tool-old.tar.gz"); sha256hex(got) != sha256hex(noDigest) {
			t.Errorf("%s: asset without digest: got %d bytes, wrong content", tool, len(got))
		}
		spent := fx.FileBytes.Load() - before
		t.Logf("%s: GitHub sent %d file bytes", tool, spent)
		if want := int64(len(withDigest) + len(noDigest)); i == 0 && spent != want {
			t.Errorf("first fetch: upstream sent %d bytes, want %d", spent, want)
		}
		if i == 1 && spent != 0 {
			t.Errorf("second fetch: upstream sent %d bytes, want 0", spent)
		}
	}
	// The asset with a digest is in the content store under that digest.
	if _, _, err := d.store.Reader(t.Context(), digestOf(withDigest)); err != nil {
		t.Errorf("asset with an API digest is not in the store: %v", err)
	}
	if _, _, err := d.store.Reader(t.Context(), digestOf(noDigest)); err == nil {
		t.Errorf("asset without a digest is in the shared content store")
	}
}

func digestOf(b []byte) digest.Digest { return digest.Digest("sha256:" + sha256hex(b)) }

// TestFilesUpstreamDown: with the Hub and GitHub unreachable, cached files are still served
// and metadata is served stale (X-Shoal-Stale), also after its TTL.
func TestFilesUpstreamDown(t *testing.T) {
	fx := filestest.New(t)
	big, small, asset := randBytes(t, 1<<20), []byte(`{"a":1}`), randBytes(t, 100<<10)
	commit := fx.AddModel("acme/m", map[string][]byte{"w.bin": big, "config.json": small}, false)
	fx.AddRelease("acme/tool", "v1", map[string][]byte{"t.tgz": asset}, true)
	d := startFilesDaemon(t, fx, func(c *Config) { c.Files.MetaTTL = time.Nanosecond }) // every answer is past its TTL at once
	base := "http://" + d.Addr()
	urls := map[string][]byte{
		base + "/hf/acme/m/resolve/main/w.bin":                            big,
		base + "/hf/acme/m/resolve/main/config.json":                      small,
		base + "/https://github.com/acme/tool/releases/download/v1/t.tgz": asset,
		base + "/hf/api/models/acme/m/revision/main?expand=sha":           nil,
		base + "/hf/api/models/acme/m/tree/" + commit + "?recursive=true": nil,
	}
	for u := range urls {
		if resp, _ := httpGet(t, u); resp.StatusCode != http.StatusOK || resp.Header.Get("X-Shoal-Stale") != "" {
			t.Fatalf("warm %s: %d stale=%q", u, resp.StatusCode, resp.Header.Get("X-Shoal-Stale"))
		}
	}
	fx.Down.Store(true)
	for u, want := range urls {
		resp, body := httpGet(t, u)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("upstream down: %s: status %d %s", u, resp.StatusCode, body)
			continue
		}
		if want != nil && !bytes.Equal(body, want) {
			t.Errorf("upstream down: %s: wrong content", u)
		}
		if !strings.Contains(u, "/tree/"+commit) && resp.Header.Get("X-Shoal-Stale") != "true" {
			t.Errorf("upstream down: %s: X-Shoal-Stale = %q, want true (its metadata is past its TTL)", u, resp.Header.Get("X-Shoal-Stale"))
		}
	}
	// Never seen: a clear error, not a hang.
	if resp, _ := httpGet(t, base+"/hf/acme/m/resolve/main/other.bin"); resp.StatusCode < 500 {
		t.Errorf("unknown file with the upstream down: status %d, want 5xx", resp.StatusCode)
	}
}

// TestFilesCorruptUpstreamNeverServedOrKept: the Hub's CDN (and GitHub) send one wrong byte:
// the client never gets the whole file with a success status, nothing is kept, and once the
// upstream is fixed the right file comes.
func TestFilesCorruptUpstreamNeverServedOrKept(t *testing.T) {
	fx := filestest.New(t)
	big, small := randBytes(t, 2<<20), []byte(`{"vocab_size":32000,"hidden":64}`)
	fx.AddModel("acme/m", map[string][]byte{"w.bin": big, "config.json": small}, false)
	fx.AddRelease("acme/tool", "v1", map[string][]byte{"t.tgz": randBytes(t, 1<<20)}, true)
	d := startFilesDaemon(t, fx)
	base := "http://" + d.Addr()
	fx.Corrupt.Store(true)
	for _, u := range []string{base + "/hf/acme/m/resolve/main/w.bin", base + "/hf/acme/m/resolve/main/config.json", base + "/https://github.com/acme/tool/releases/download/v1/t.tgz"} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			continue // cut before the headers: fine
		}
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && rerr == nil {
			t.Errorf("corrupt upstream: %s: 200 and a complete body of %d bytes", u, len(body))
		}
	}
	if _, _, err := d.store.Reader(t.Context(), digestOf(big)); err == nil {
		t.Error("a file that did not verify is in the store")
	}
	fx.Corrupt.Store(false)
	for u, want := range map[string][]byte{base + "/hf/acme/m/resolve/main/w.bin": big, base + "/hf/acme/m/resolve/main/config.json": small} {
		if resp, body := httpGet(t, u); resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
			t.Errorf("after the fix: %s: status %d, %d bytes", u, resp.StatusCode, len(body))
		}
	}
}

// TestFilesSwarmPaysUpstreamOnce: 5 nodes download the same model file at once: every client
// gets the right bytes and the upstream sends at most 1.05× the file. With a lying peer
// advertising the file too, every client still gets the right bytes, nothing wrong is stored
// and the liar is banned; the upstream bytes are logged, not bounded (nodes that took the
// liar's bytes download again: see docs/files.md). SHOAL_FILES_SWARM_MIB sets the size
// (default 24 MiB; the 1 GiB: SHOAL_FILES_SWARM_MIB=1024), SHOAL_FILES_SWARM_N the
// number of nodes (default 5; each stores the file, so N × size of disk).
func TestFilesSwarmPaysUpstreamOnce(t *testing.T) {
	t.Run("honest", func(t *testing.T) { testFilesSwarm(t, false) })
	t.Run("lying peer", func(t *testing.T) { testFilesSwarm(t, true) })
}

func testFilesSwarm(t *testing.T, liar bool) {
	mib, count := 24, 5
	if v := os.Getenv("SHOAL_FILES_SWARM_MIB"); v != "" {
		mib, _ = strconv.Atoi(v)
	}
	if v := os.Getenv("SHOAL_FILES_SWARM_N"); v != "" {
		if count, _ = strconv.Atoi(v); count < 2 {
			t.Fatalf("SHOAL_FILES_SWARM_N=%q: want a number ≥ 2", v)
		}
	}
	fx := filestest.New(t)
	big := randBytes(t, mib<<20)
	fx.AddModel("acme/llm", map[string][]byte{"model-00001-of-00001.safetensors": big}, false)
	fd := digestOf(big)

	ip := nextIP()
	hcfg := p2p.DefaultConfig()
	hcfg.Listen = []string{"/ip4/" + ip + "/tcp/0"}
	hostile, err := p2p.New(t.Context(), hcfg, t.TempDir(), &hostileContent{d: fd, data: big}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hostile.Close() })

	up := newUpstream(t)
	mod := func(c *Config) {
		for h, u := range fx.Hosts() {
			c.SetFileHost(h, u)
		}
	}
	var boot []string
	if liar {
		boot = hostile.Addrs()
	}
	first := startNode(t, up, boot, mod)
	nodes := []*Daemon{first}
	for range count - 1 {
		nodes = append(nodes, startNode(t, up, first.node.Addrs(), mod))
	}
	for _, n := range nodes {
		waitFor(t, func() bool { return n.node.Status().RoutingTableSize >= len(nodes)-1 })
	}
	if liar {
		if err := hostile.Provide(t.Context(), fd); err != nil {
			t.Fatal(err)
		}
		waitProvided(t, first.node, fd)
	}

	start := make(chan struct{})
	errs := make(chan error, len(nodes))
	for _, n := range nodes {
		go func() {
			<-start
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+n.Addr()+"/hf/acme/llm/resolve/main/model-00001-of-00001.safetensors", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			_, err = io.Copy(h, resp.Body)
			switch {
			case err != nil:
			case resp.StatusCode != http.StatusOK:
				err = fmt.Errorf("status %d", resp.StatusCode)
			case "sha256:"+hex.EncodeToString(h.Sum(nil)) != fd.String():
				err = fmt.Errorf("wrong content")
			}
			errs <- err
		}()
	}
	close(start)
	for range nodes {
		if err := <-errs; err != nil {
			t.Errorf("download: %v", err)
		}
	}
	sent := fx.FileBytes.Load()
	t.Logf("%d nodes, %d MiB file: the upstream sent %d bytes (%.3f×); CDN GETs %d", count, mib, sent, float64(sent)/float64(len(big)), fx.Count("cdn GET"))
	if !liar && float64(sent) > 1.05*float64(len(big)) {
		t.Errorf("upstream sent %d bytes for a %d-byte file on %d nodes, want ≤ 1.05×", sent, len(big), count)
	}
	banned := 0
	for _, n := range nodes {
		if peerStatus(n.node, hostile.ID()).Banned {
			banned++
		}
		res, err := n.store.Verify(t.Context())
		if err != nil || len(res.Corrupt) != 0 {
			t.Errorf("store verify: %+v %v", res, err)
		}
	}
	t.Logf("nodes that banned the lying peer: %d", banned)
}

// TestFilesWithoutDigestStayOnTheNode: a release asset without a digest is never advertised
// nor served to a peer: another node with the upstream down cannot get it from the swarm.
func TestFilesWithoutDigestStayOnTheNode(t *testing.T) {
	fx := filestest.New(t)
	data := randBytes(t, 512<<10)
	fx.AddRelease("acme/tool", "v0", map[string][]byte{"old.tgz": data}, false)
	up := newUpstream(t)
	mod := func(c *Config) {
		for h, u := range fx.Hosts() {
			c.SetFileHost(h, u)
		}
	}
	a := startNode(t, up, nil, mod)
	b := startNode(t, up, a.node.Addrs(), mod)
	waitFor(t, func() bool { return b.node.Status().RoutingTableSize > 0 })
	u := "/https://github.com/acme/tool/releases/download/v0/old.tgz"
	if resp, body := httpGet(t, "http://"+a.Addr()+u); resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("node A: status %d", resp.StatusCode)
	}
	if provs, _ := b.node.FindProviders(t.Context(), digestOf(data), 4); len(provs) != 0 {
		t.Errorf("a file without a digest is advertised: %v", provs)
	}
	if _, _, err := a.store.Reader(t.Context(), digestOf(data)); err == nil {
		t.Error("a file without a digest is in the shared store")
	}
	fx.Down.Store(true)
	if resp, _ := httpGet(t, "http://"+b.Addr()+u); resp.StatusCode == http.StatusOK {
		t.Error("node B got a file without a digest while the upstream was down: it came from a peer")
	}
	if out := peerStatus(a.node, b.node.ID()).BytesOut; out != 0 {
		t.Errorf("node A sent %d bytes to B", out)
	}
}

// TestFilesPullWarmsNode: `shoal pull hf://ORG/NAME@REV --include …` and a GitHub release URL
// warm the node with progress events; clients then get every file with 0 upstream bytes.
func TestFilesPullWarmsNode(t *testing.T) {
	fx := filestest.New(t)
	model := map[string][]byte{
		"model.safetensors": randBytes(t, 2<<20), "config.json": []byte(`{"x":1}`),
		"onnx/model.onnx": randBytes(t, 1<<20), "extra/notes.txt": []byte("notes"),
	}
	fx.AddModel("acme/m", model, false)
	asset := randBytes(t, 256<<10)
	fx.AddRelease("acme/tool", "v2", map[string][]byte{"t.tgz": asset}, true)
	d := startFilesDaemon(t, fx, withOps)
	cl := adminFor(t, d)
	evs, done := pull(t, cl, adminapi.PullRequest{Images: []string{"hf://acme/m@main", "https://github.com/acme/tool/releases/download/v2/t.tgz"}, Include: []string{"*.safetensors", "*.json"}})
	if done.Errors != 0 || done.Images != 2 || done.Blobs != 3 {
		t.Fatalf("pull: %+v", done)
	}
	var doneFiles []string
	for _, ev := range evs {
		if ev.Type == adminapi.EventBlob && ev.State == adminapi.StateDone {
			doneFiles = append(doneFiles, ev.Digest)
		}
	}
	t.Logf("files warmed: %v", doneFiles)
	if _, _, err := d.store.Reader(t.Context(), digestOf(model["model.safetensors"])); err != nil {
		t.Errorf("the LFS file is not in the store after the pull: %v", err)
	}
	before := fx.FileBytes.Load()
	base := "http://" + d.Addr()
	for u, want := range map[string][]byte{
		base + "/hf/acme/m/resolve/main/model.safetensors":                model["model.safetensors"],
		base + "/hf/acme/m/resolve/main/config.json":                      model["config.json"],
		base + "/https://github.com/acme/tool/releases/download/v2/t.tgz": asset,
	} {
		if resp, body := httpGet(t, u); resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
			t.Errorf("%s after the pull: %d", u, resp.StatusCode)
		}
	}
	if n := fx.FileBytes.Load() - before; n != 0 {
		t.Errorf("clients after a pull cost the upstream %d file bytes, want 0", n)
	}
	if n := fx.Count("cdn GET"); n != 1 {
		t.Errorf("CDN GETs = %d, want 1: --include left out onnx/model.onnx, the other LFS file", n)
	}
	// cache ls names the file; the metrics count file requests under route="file".
	ls, err := cl.CacheList(t.Context(), "size")
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]string{}
	for _, e := range ls.Entries {
		if e.Kind == "file" {
			named[e.Digest] = e.Name
		}
	}
	if got, want := named[digestOf(model["model.safetensors"]).String()], "hf://acme/m@"; !strings.HasPrefix(got, want) || !strings.HasSuffix(got, "/model.safetensors") {
		t.Errorf("cache ls names the model file %q, want hf://acme/m@COMMIT/model.safetensors (entries %+v)", got, named)
	}
	if got := named[digestOf(asset).String()]; got != "https://github.com/acme/tool/releases/download/v2/t.tgz" {
		t.Errorf("cache ls names the release asset %q", got)
	}
	// explain takes the name cache ls shows.
	name := named[digestOf(model["model.safetensors"]).String()]
	ex, err := cl.Explain(t.Context(), name)
	if err != nil || ex.Digest != digestOf(model["model.safetensors"]).String() || len(ex.Blobs) != 1 || ex.Blobs[0].Kind != "file" || !ex.Blobs[0].InStore {
		t.Errorf("explain %s: %+v, %v", name, ex, err)
	}
	_, metrics := httpGet(t, "http://"+d.MetricsAddr()+"/metrics")
	if !strings.Contains(string(metrics), `shoal_http_requests_total{route="file",source="store",status="200"}`) {
		t.Errorf("metrics have no route=\"file\" answers from the store")
	}

}

// TestFilesGatedRepoStaysPrivate: a gated repo is fetched with the node's token (never sent
// to the CDN, never handed to the client), and its files are not advertised to peers.
func TestFilesGatedRepoStaysPrivate(t *testing.T) {
	fx := filestest.New(t)
	fx.Token = "hf_fixturetoken"
	secret := randBytes(t, 1<<20)
	fx.AddModel("acme/gated", map[string][]byte{"w.bin": secret}, true)
	up := newUpstream(t)
	mod := func(c *Config) {
		for h, u := range fx.Hosts() {
			c.SetFileHost(h, u)
		}
	}
	a := startNode(t, up, nil, mod, func(c *Config) { c.Files.HFToken = fx.Token })
	b := startNode(t, up, a.node.Addrs(), mod)
	waitFor(t, func() bool { return b.node.Status().RoutingTableSize > 0 })
	u := "/hf/acme/gated/resolve/main/w.bin"
	if resp, body := httpGet(t, "http://"+a.Addr()+u); resp.StatusCode != http.StatusOK || !bytes.Equal(body, secret) {
		t.Fatalf("node A with the token: status %d", resp.StatusCode)
	}
	if resp, _ := httpGet(t, "http://"+b.Addr()+u); resp.StatusCode == http.StatusOK {
		t.Errorf("node B without a token got the gated file (from a peer or the Hub)")
	}
	if out := peerStatus(a.node, b.node.ID()).BytesOut; out != 0 {
		t.Errorf("node A sent %d bytes of a gated file to a peer", out)
	}
	if n := fx.CDNAuth.Load(); n != 0 {
		t.Errorf("the CDN got %d requests with an Authorization header", n)
	}
}

// TestFilesParallelRangesShareOneDownload: a client's parallel Range requests on a cold file
// share one upstream download, and every range is right.
func TestFilesParallelRangesShareOneDownload(t *testing.T) {
	fx := filestest.New(t)
	data := randBytes(t, 8<<20)
	fx.AddModel("acme/m", map[string][]byte{"w.bin": data}, false)
	d := startFilesDaemon(t, fx)
	const parts = 4
	errs := make(chan error, parts)
	for i := range parts {
		go func() {
			lo, hi := i*len(data)/parts, (i+1)*len(data)/parts-1
			resp, body := httpGet(t, "http://"+d.Addr()+"/hf/acme/m/resolve/main/w.bin", "Range", fmt.Sprintf("bytes=%d-%d", lo, hi))
			switch {
			case resp.StatusCode != http.StatusPartialContent:
				errs <- fmt.Errorf("range %d-%d: status %d", lo, hi, resp.StatusCode)
			case !bytes.Equal(body, data[lo:hi+1]):
				errs <- fmt.Errorf("range %d-%d: wrong bytes", lo, hi)
			default:
				errs <- nil
			}
		}()
	}
	for range parts {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := fx.Count("cdn GET"); n != 1 {
		t.Errorf("%d parallel ranges made %d CDN GETs, want 1", parts, n)
	}
	if sent := fx.FileBytes.Load(); sent != int64(len(data)) {
		t.Errorf("upstream sent %d bytes for an %d-byte file", sent, len(data))
	}
}

// TestFilesGuardRepoPatterns: deny_repo and allow_repo cover hf/ORG/NAME and
// github.com/OWNER/REPO.
func TestFilesGuardRepoPatterns(t *testing.T) {
	fx := filestest.New(t)
	fx.AddModel("acme/ok", map[string][]byte{"c.json": []byte("{}")}, false)
	fx.AddModel("evil/m", map[string][]byte{"c.json": []byte("{}")}, false)
	fx.AddRelease("acme/tool", "v1", map[string][]byte{"a.tgz": []byte("x")}, true)
	fx.AddRelease("evil/tool", "v1", map[string][]byte{"b.tgz": []byte("y")}, true)
	d := startFilesDaemon(t, fx, func(c *Config) { c.Guard.DenyRepo = []string{"hf/evil/*", "github.com/evil/*"} })
	base := "http://" + d.Addr()
	for u, want := range map[string]int{
		"/hf/acme/ok/resolve/main/c.json":                          200,
		"/hf/evil/m/resolve/main/c.json":                           403,
		"/hf/api/models/evil/m/revision/main":                      403,
		"/https://github.com/acme/tool/releases/download/v1/a.tgz": 200,
		"/https://github.com/evil/tool/releases/download/v1/b.tgz": 403,
	} {
		if resp, _ := httpGet(t, base+u); resp.StatusCode != want {
			t.Errorf("%s: status %d, want %d", u, resp.StatusCode, want)
		}
	}
}

// TestFilesWithoutDigestRevalidate: a raw.githubusercontent.com file (no digest) is kept on the
// node by URL and ETag; past meta_ttl it is revalidated (304: 0 bytes) and a change is fetched.
func TestFilesWithoutDigestRevalidate(t *testing.T) {
	fx := filestest.New(t)
	fx.SetRaw("/acme/tool/main/install.sh", []byte("#!/bin/sh\necho v1\n"))
	d := startFilesDaemon(t, fx, func(c *Config) { c.Files.MetaTTL = time.Nanosecond })
	u := "http://" + d.Addr() + "/https://raw.githubusercontent.com/acme/tool/main/install.sh"
	for i := range 2 {
		before := fx.FileBytes.Load()
		if resp, body := httpGet(t, u); resp.StatusCode != http.StatusOK || string(body) != "#!/bin/sh\necho v1\n" {
			t.Fatalf("fetch %d: %d %q", i, resp.StatusCode, body)
		}
		if n := fx.FileBytes.Load() - before; i == 1 && n != 0 {
			t.Errorf("revalidation sent %d bytes, want 0 (304)", n)
		}
	}
	if n := fx.Count("raw GET"); n != 2 {
		t.Errorf("raw GETs = %d, want 2 (fetch, revalidation)", n)
	}
	fx.SetRaw("/acme/tool/main/install.sh", []byte("#!/bin/sh\necho v2\n"))
	if _, body := httpGet(t, u); string(body) != "#!/bin/sh\necho v2\n" {
		t.Errorf("after a change upstream: %q", body)
	}
}
