package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWriteThrough: the crane CLI pushes through a `shoal daemon` to Debian's docker-registry
// configured with write_through.
//   - open registry, two nodes: the registry holds the image (same digest, asked directly); node
//     B pulls it right after through the counting proxy: 0 upstream blob GETs (from A, a peer).
//   - token-auth registry (distribution's token auth; shoal holds the credentials): the push
//     goes through the token flow with push scope; the registry holds the image.
//   - a registry without write_through: crane's push fails (405), the registry holds nothing.
func TestWriteThrough(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	crane := tool(t, "crane")
	dir := t.TempDir()
	env := []string{"DOCKER_CONFIG=" + dir}
	layer := filepath.Join(dir, "layer.tar")
	if out, err := runCmd(t.Context(), time.Minute, nil, "tar", "-C", "/usr/share/common-licenses", "-cf", layer, "."); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	run := func(argv ...string) (string, error) {
		out, err := runCmd(t.Context(), 2*time.Minute, env, argv...)
		return strings.TrimSpace(out), err
	}
	const host = "wt.example" // a name, so that HOST/REPO is a repository clients accept
	tag := fmt.Sprintf("v%d", time.Now().UnixNano())

	t.Run("open-two-nodes", func(t *testing.T) {
		proxy := startUpstreamProxy(t, up.Open.URL)
		// A pushes to the registry itself (distribution's upload Location names the Host it
		// was asked on; shoal sends credentials to the configured endpoint only); B reads
		// through the counting proxy.
		cfgA := writeShoalConfig(t, &shoalConfig{Registries: map[string]shoalRegistry{host: {URL: up.Open.URL, WriteThrough: true}}})
		cfgB := writeShoalConfig(t, &shoalConfig{Registries: map[string]shoalRegistry{host: {URL: proxy.URL}}})
		ipA, ipB := swarmIP(), swarmIP()
		a := launchSwarmNode(t, "wt-a", ipA, up.Open.URL, nil, []string{"--config", cfgA})
		a.awaitUp(t)
		b := launchSwarmNode(t, "wt-b", ipB, up.Open.URL, []string{a.bootstrapAddr(t)}, []string{"--config", cfgB})
		b.awaitUp(t)
		for _, n := range []*swarmNode{a, b} {
			eventually(t, 30*time.Second, n.proc, n.Name+" in the swarm", func() error {
				if size, ok := n.routingTableSize(); !ok || size < 1 {
					return fmt.Errorf("routing table holds %d peers", size)
				}
				return nil
			})
		}
		ref := host + "/wt/app:" + tag
		if out, err := run(crane, "append", "--insecure", "-f", layer, "-t", a.Addr+"/"+ref); err != nil {
			t.Fatalf("crane append through A: %v\n%s", err, out)
		}
		pushed, err := run(crane, "digest", "--insecure", a.Addr+"/"+ref)
		if err != nil || !strings.HasPrefix(pushed, "sha256:") {
			t.Fatalf("crane digest on A: %q %v", pushed, err)
		}
		direct, err := run(crane, "digest", "--insecure", up.Open.Addr+"/wt/app:"+tag)
		if err != nil || direct != pushed {
			t.Fatalf("the registry holds %q (%v), pushed %s", direct, err, pushed)
		}
		n := len(proxy.requests())
		dst := filepath.Join(t.TempDir(), "img")
		if out, err := cranePull(t.Context(), t, b.Addr, ref, dst); err != nil {
			t.Fatalf("crane pull on B: %v\n%s", err, out)
		}
		if got := ociLayoutDigest(t, dst); got != pushed {
			t.Errorf("B pulled %s, pushed %s", got, pushed)
		}
		blobGets := 0
		for _, r := range proxy.since(n) {
			if r.Method == "GET" && strings.Contains(r.Path, "/blobs/") {
				blobGets++
			}
		}
		t.Logf("upstream requests during B's pull:\n%s", describe(proxy.since(n)))
		if blobGets != 0 {
			t.Errorf("B's pull made %d upstream blob GETs, want 0:\n%s", blobGets, describe(proxy.since(n)))
		}
	})

	t.Run("token-auth", func(t *testing.T) {
		s := startShoal(t, shoalOpts{config: &shoalConfig{Registries: map[string]shoalRegistry{
			host: {URL: up.Token.URL, Username: tokenUser, PasswordFile: writeSecret(t, tokenPass), WriteThrough: true},
		}}})
		ref := host + "/wt/token:" + tag
		if out, err := run(crane, "append", "--insecure", "-f", layer, "-t", s.Addr+"/"+ref); err != nil {
			t.Fatalf("crane append through shoal to the token registry: %v\n%s", err, out)
		}
		pushed, _ := run(crane, "digest", "--insecure", s.Addr+"/"+ref)
		direct, err := run(crane, "digest", "--insecure", up.Open.Addr+"/wt/token:"+tag)
		if err != nil || direct != pushed || !strings.HasPrefix(pushed, "sha256:") {
			t.Fatalf("the registry holds %q (%v), shoal answers %q", direct, err, pushed)
		}
		push := false
		for _, r := range up.Tokens.requests() {
			push = push || (r.Authed && r.User == tokenUser && strings.Contains(strings.Join(r.Scopes, " "), "wt/token:pull,push"))
		}
		if !push {
			t.Errorf("no credentialed token request with push scope: %+v", up.Tokens.requests())
		}
		assertSecretNotLogged(t, s, tokenPass)
	})

	t.Run("not-configured", func(t *testing.T) {
		s := startShoal(t, shoalOpts{config: &shoalConfig{Registries: map[string]shoalRegistry{host: {URL: up.Open.URL}}}})
		ref := host + "/wt/refused:" + tag
		out, err := run(crane, "append", "--insecure", "-f", layer, "-t", s.Addr+"/"+ref)
		if err == nil {
			t.Fatal("push to a registry without write_through succeeded")
		}
		if !strings.Contains(out, "405") && !strings.Contains(out, "UNSUPPORTED") {
			t.Errorf("crane's error: %s", lastLine(out))
		}
		if _, err := run(crane, "digest", "--insecure", up.Open.Addr+"/wt/refused:"+tag); err == nil {
			t.Error("the registry holds the refused image")
		}
	})
}
