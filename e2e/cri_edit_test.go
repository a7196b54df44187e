package e2e

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSetupEditConfigContainerd2: `shoal setup containerd --edit-config` on containerd 2.4.2's
// stock config (an empty config_path): --dry-run shows the one-line change as a diff and writes
// nothing; the run sets config_path in the file itself (one line, backup kept, a restart asked
// for), a second run changes nothing; containerd 2.4.2 started on the edited file pulls for CRI
// (crictl, through the transfer service) through shoal, and with shoal down falls back to the
// next host, the registry itself; --uninstall gives the stock file back byte for byte.
func TestSetupEditConfigContainerd2(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	up := upstreams(t)
	const reg = "127.0.0.1:9" // a closed port: only shoal, routed by ?ns=, can serve it
	hub := startUpstreamProxy(t, up.Open.URL)
	direct := startUpstreamProxy(t, up.Open.URL) // a registry containerd reaches itself when shoal is down
	s := startShoal(t, shoalOpts{registries: []string{reg + "=" + hub.URL}})
	dir := t.TempDir()
	stock, sock := stockContainerd2Config(t, dir)
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(stock), 0o644); err != nil {
		t.Fatal(err)
	}
	hostsDir := filepath.Join(dir, "certs.d")
	setup := func(extra ...string) string {
		t.Helper()
		argv := append([]string{shoalBin, "setup", "containerd", "--containerd-config", cfgPath, "--hosts-dir", hostsDir,
			"--mirror", s.URL, "--containerd-version", "2.4.2"}, extra...)
		out, err := runCmd(t.Context(), time.Minute, nil, argv...)
		if err != nil {
			t.Fatalf("shoal setup containerd %s: %v\n%s", strings.Join(extra, " "), err, out)
		}
		t.Logf("setup %s:\n%s", strings.Join(extra, " "), out)
		return out
	}

	// --dry-run: the diff of the one line, nothing written.
	out := setup("--edit-config", "--dry-run")
	wantDiff := fmt.Sprintf("     [plugins.'io.containerd.cri.v1.images'.registry]\n-      config_path = ''\n+      config_path = %q\n", hostsDir)
	if !strings.Contains(out, "--- "+cfgPath+"\n+++ "+cfgPath+"\n") || !strings.Contains(out, wantDiff) {
		t.Errorf("--dry-run shows no diff of %s with\n%s", cfgPath, wantDiff)
	}
	if readText(t, cfgPath) != stock {
		t.Fatalf("--dry-run changed %s", cfgPath)
	}

	// The edit: one line, a backup, a restart asked for, no problem left.
	out = setup("--edit-config")
	edited := readText(t, cfgPath)
	if d := lineDiff(stock, edited); d != 1 || !strings.Contains(edited, fmt.Sprintf("\n      config_path = %q\n", hostsDir)) {
		t.Errorf("the edit changed %d lines, want the config_path line only:\n%s", d, edited)
	}
	if b := readText(t, cfgPath+".shoal-backup"); b != stock {
		t.Errorf("%s.shoal-backup is not the stock file", cfgPath)
	}
	for _, want := range []string{
		"config_path set in " + cfgPath + " (backup: " + cfgPath + ".shoal-backup)",
		"created " + filepath.Join(hostsDir, "_default", "hosts.toml"),
		"restart containerd",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("setup does not say %q", want)
		}
	}
	if strings.Contains(out, "problem:") {
		t.Errorf("setup --edit-config left a problem")
	}
	// Idempotent.
	out = setup("--edit-config")
	if !strings.Contains(out, "unchanged "+cfgPath) || readText(t, cfgPath) != edited {
		t.Errorf("the second run changed %s", cfgPath)
	}

	// containerd 2.4.2 on the edited file: CRI pulls through shoal.
	c := startContainerd2(t, dir, cfgPath, sock)
	assertCRIPullThroughShoal(t, c, s, hub, reg, up.Img.Small)

	// shoal down: containerd tries it, then the next host (the registry named in the reference,
	// _default's fallback), and the pull still succeeds.
	s.stop()
	ref := direct.Addr + "/" + up.Img.Hello.Ref()
	start := time.Now()
	if out, err := c.crictl(t, time.Minute, "pull", ref); err != nil {
		t.Fatalf("crictl pull %s with shoal down: %v\n%s", ref, err, out)
	}
	t.Logf("crictl pull %s with shoal down: %s", ref, time.Since(start).Round(time.Millisecond))
	if d := c.repoDigests(t, ref); !strings.Contains(strings.Join(d, " "), "@"+up.Img.Hello.Digest) {
		t.Errorf("containerd recorded %v, want %s", d, up.Img.Hello.Digest)
	}
	assertOneGETPerBlob(t, direct.requests(), up.Img.Hello.AMD64)
	// containerd asked shoal first: its resolver logs the refused connection and the next host.
	if !slices.ContainsFunc(strings.Split(c.proc.log(), "\n"), func(l string) bool {
		return strings.Contains(l, "trying next host") && strings.Contains(l, `host="`+s.Addr+`"`) && strings.Contains(l, "connection refused")
	}) {
		t.Errorf("containerd's log has no \"trying next host\" for shoal at %s:\n%s", s.Addr, c.proc.tail(30))
	}
	if n := count(hub.requests(), http.MethodGet, "/manifests/"+up.Img.Hello.Tag); n != 0 {
		t.Errorf("shoal's upstream saw the fallback pull")
	}
	c.proc.stop()

	// --uninstall: the stock file byte for byte, no backup, no hosts.toml.
	out = setup("--uninstall")
	if got := readText(t, cfgPath); got != stock {
		t.Errorf("after --uninstall %s is not the stock file:\n%s", cfgPath, got)
	}
	if !strings.Contains(out, "restored from backup "+cfgPath) || !strings.Contains(out, "restart containerd") {
		t.Errorf("--uninstall does not say it restored %s and that containerd must restart", cfgPath)
	}
	if _, err := os.Stat(cfgPath + ".shoal-backup"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("backup still there after --uninstall: %v", err)
	}
	if _, err := os.Stat(filepath.Join(hostsDir, "_default", "hosts.toml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("_default/hosts.toml still there after --uninstall: %v", err)
	}
}

// TestContainerd2LocalPullAndCtr: containerd 2.4.2 with a list config_path and
// use_local_image_pull = true (CRI pulls without the transfer service, which reads the list):
// setup finds no problem, a CRI pull goes through shoal, and so does containerd 2.4.2's own
// `ctr image pull --hosts-dir` (the transfer service, told where hosts.toml is).
func TestContainerd2LocalPullAndCtr(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	up := upstreams(t)
	const reg = "127.0.0.1:9"
	hub := startUpstreamProxy(t, up.Open.URL)
	s := startShoal(t, shoalOpts{registries: []string{reg + "=" + hub.URL}})
	dir := t.TempDir()
	cfg, sock := stockContainerd2Config(t, dir)
	hostsDir := filepath.Join(dir, "x/certs.d")
	for _, r := range [][2]string{
		{"      config_path = ''\n", fmt.Sprintf("      config_path = '%s:%s/y/certs.d'\n", hostsDir, dir)},
		{"    use_local_image_pull = false\n", "    use_local_image_pull = true\n"},
	} {
		if strings.Count(cfg, r[0]) != 1 {
			t.Fatalf("stock config: want %q once", r[0])
		}
		cfg = strings.Replace(cfg, r[0], r[1], 1)
	}
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runCmd(t.Context(), time.Minute, nil, shoalBin, "setup", "containerd", "--containerd-config", cfgPath,
		"--mirror", s.URL, "--registries", reg, "--containerd-version", "2.4.2", "--strict")
	if err != nil {
		t.Fatalf("shoal setup containerd --strict: %v\n%s", err, out)
	}
	t.Logf("setup:\n%s", out)
	if !strings.Contains(out, "created "+filepath.Join(hostsDir, reg, "hosts.toml")) {
		t.Errorf("setup did not write under the list's first directory %s", hostsDir)
	}
	if strings.Contains(out, "problem:") || strings.Contains(out, "warning:") {
		t.Errorf("setup finds fault with a list config_path and use_local_image_pull = true")
	}

	c := startContainerd2(t, dir, cfgPath, sock)
	assertCRIPullThroughShoal(t, c, s, hub, reg, up.Img.Small)

	// containerd 2.4.2's ctr, default namespace, through the transfer service with --hosts-dir.
	ref := reg + "/" + up.Img.DockerML.Ref()
	mark := len(hub.requests())
	start := time.Now()
	if out, err := runCmd(t.Context(), time.Minute, nil, builtTool(t, containerd2Dir, "ctr"), "--address", sock,
		"image", "pull", "--hosts-dir", hostsDir, ref); err != nil {
		t.Fatalf("ctr image pull --hosts-dir %s: %v\n%s", ref, err, out)
	}
	t.Logf("ctr image pull %s: %s", ref, time.Since(start).Round(time.Millisecond))
	out, err = runCmd(t.Context(), 30*time.Second, nil, builtTool(t, containerd2Dir, "ctr"), "--address", sock, "image", "ls")
	if err != nil || !strings.Contains(out, up.Img.DockerML.Digest) {
		t.Errorf("ctr image ls (%v) does not show %s at %s:\n%s", err, ref, up.Img.DockerML.Digest, out)
	}
	assertOneGETPerBlob(t, hub.since(mark), up.Img.DockerML.AMD64)
	served := shoalServed(s)
	for _, b := range up.Img.DockerML.AMD64 {
		if !served["/v2/"+up.Img.DockerML.Repo+"/blobs/"+b] {
			t.Errorf("shoal's access log has no 200 for blob %s", b)
		}
	}
}
