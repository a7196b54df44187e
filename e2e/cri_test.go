package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Where .ci/install-deps builds containerd 2.x and crictl: directories of their own, off PATH, so
// that `containerd` and `ctr` on PATH stay Debian's 1.6 for the other tests.
const (
	containerd2Dir = "/usr/local/lib/shoal-test/containerd-2.4.2"
	crictlDir      = "/usr/local/lib/shoal-test/crictl-1.37.0"
	// debianContainerd is Debian's containerd 1.6 (package containerd).
	debianContainerd = "/usr/bin/containerd"
)

// builtTool returns dir/name, built by .ci/install-deps; a missing one fails the test.
func builtTool(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s: %v: run `bash .ci/install-deps` once (it builds containerd 2.4.2 and crictl 1.37.0 there)", p, err)
	}
	return p
}

// stockContainerd2Config is `containerd config default` of containerd 2.4.2 with root, state,
// the gRPC and ttrpc sockets and the opt directory moved into dir, no imports and NRI disabled:
// nothing else changed. It returns the file's text and containerd's socket.
func stockContainerd2Config(t *testing.T, dir string) (string, string) {
	t.Helper()
	out, err := runCmd(t.Context(), time.Minute, nil, builtTool(t, containerd2Dir, "containerd"), "config", "default")
	if err != nil {
		t.Fatalf("containerd config default: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "c.sock")
	cfg := out
	for _, r := range []struct{ old, new string }{
		{"root = '/var/lib/containerd'", fmt.Sprintf("root = '%s/root'", dir)},
		{"state = '/run/containerd'", fmt.Sprintf("state = '%s/state'", dir)},
		{"imports = ['/etc/containerd/conf.d/*.toml']", "imports = []"},
		{"address = '/run/containerd/containerd.sock'", fmt.Sprintf("address = '%s'", sock)},
		{"address = '/run/containerd/containerd.sock.ttrpc'", fmt.Sprintf("address = '%s.ttrpc'", sock)},
		{"path = '/opt/containerd'", fmt.Sprintf("path = '%s/opt'", dir)},
		{"[plugins.'io.containerd.nri.v1.nri']\n    disable = false", "[plugins.'io.containerd.nri.v1.nri']\n    disable = true"},
	} {
		if strings.Count(cfg, r.old) != 1 {
			t.Fatalf("containerd config default: want %q once, found it %d times:\n%s", r.old, strings.Count(cfg, r.old), out)
		}
		cfg = strings.Replace(cfg, r.old, r.new, 1)
	}
	if !strings.HasPrefix(cfg, "version = 4\n") || !strings.Contains(cfg, "[plugins.'io.containerd.cri.v1.images'.registry]\n      config_path = ''\n") {
		t.Fatalf("containerd config default: not the version-4 file with an empty CRI config_path these tests are about:\n%s", out)
	}
	return cfg, sock
}

// containerd2 is a containerd 2.4.2 daemon, CRI included, on a config file the test wrote.
type containerd2 struct {
	Sock string
	proc *proc
}

// startContainerd2 starts containerd 2.4.2 on cfgPath and waits until its CRI image service
// answers; containerd refusing the file fails the test with its log.
func startContainerd2(t *testing.T, dir, cfgPath, sock string) *containerd2 {
	t.Helper()
	requireRoot(t)
	t.Cleanup(func() { unmountUnder(dir) }) // registered first: runs after containerd stopped
	c := &containerd2{Sock: sock}
	// crictl's own config file, so that it reads neither /etc/crictl.yaml nor one next to itself.
	ep := "unix://" + sock
	if err := os.WriteFile(filepath.Join(dir, "crictl.yaml"), []byte("runtime-endpoint: "+ep+"\nimage-endpoint: "+ep+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.proc = startProc(t, "containerd-2.4.2", nil, builtTool(t, containerd2Dir, "containerd"), "--config", cfgPath)
	eventually(t, 30*time.Second, c.proc, "containerd 2.4.2 serves CRI", func() error {
		_, err := c.crictl(t, 10*time.Second, "images")
		return err
	})
	return c
}

// crictl runs crictl against c's CRI socket.
func (c *containerd2) crictl(t *testing.T, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ep := "unix://" + c.Sock
	argv := append([]string{builtTool(t, crictlDir, "crictl"), "--config", filepath.Join(filepath.Dir(c.Sock), "crictl.yaml"),
		"--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", timeout.String()}, args...)
	return runCmd(t.Context(), timeout+5*time.Second, nil, argv...)
}

// configFix is the fix of the first finding in setup's output that mentions config_path.
func configFix(t *testing.T, setupOut string) (finding, fix string) {
	t.Helper()
	lines := strings.Split(setupOut, "\n")
	for i, l := range lines {
		if !strings.HasPrefix(l, "problem: ") || !strings.Contains(l, "config_path") || i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "  fix: ") {
			continue
		}
		fixLines := []string{strings.TrimPrefix(lines[i+1], "  fix: ")}
		for _, f := range lines[i+2:] {
			if !strings.HasPrefix(f, "       ") {
				break
			}
			fixLines = append(fixLines, strings.TrimPrefix(f, "       "))
		}
		return l, strings.Join(fixLines, "\n")
	}
	t.Fatalf("setup printed no problem about config_path:\n%s", setupOut)
	return "", ""
}

var (
	fixReplace = regexp.MustCompile(`replace line (\d+) of (\S+) \(.*\) with:$`)
	fixInsert  = regexp.MustCompile(`insert after line (\d+) of (\S+):$`)
	fixBefore  = regexp.MustCompile(`insert before line (\d+) of (\S+):$`)
	fixAppend  = regexp.MustCompile(`(?:append|add) to (\S+):$`)
)

// applyFix carries out a printed fix on file mechanically: a line ending in one of the forms
// above says where, the lines after it, up to "then restart containerd", are the exact text.
func applyFix(t *testing.T, file, fix string) {
	t.Helper()
	old := strings.Split(strings.TrimSuffix(readText(t, file), "\n"), "\n")
	lines := strings.Split(fix, "\n")
	for i, l := range lines {
		var text []string
		for _, s := range lines[i+1:] {
			if strings.HasPrefix(s, "then restart containerd") {
				break
			}
			text = append(text, s)
		}
		at := func(m []string) int {
			n, _ := strconv.Atoi(m[1])
			if m[2] != file || n < 1 || n > len(old) {
				t.Fatalf("fix names line %d of %s; the file is %s (%d lines):\n%s", n, m[2], file, len(old), fix)
			}
			return n
		}
		var new []string
		switch m := (struct{ r, i, b, a []string }{fixReplace.FindStringSubmatch(l), fixInsert.FindStringSubmatch(l), fixBefore.FindStringSubmatch(l), fixAppend.FindStringSubmatch(l)}); {
		case m.r != nil && len(text) == 1:
			n := at(m.r)
			new = slices.Concat(old[:n-1], text, old[n:])
		case m.i != nil:
			n := at(m.i)
			new = slices.Concat(old[:n], text, old[n:])
		case m.b != nil:
			n := at(m.b)
			new = slices.Concat(old[:n-1], text, old[n-1:])
		case m.a != nil && m.a[1] == file:
			new = slices.Concat(old, []string{""}, text)
		default:
			continue
		}
		if err := os.WriteFile(file, []byte(strings.Join(new, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("the fix cannot be applied as printed:\n%s", fix)
}

// TestCRIPullAfterSetupContainerd2: on containerd 2.4.2, `shoal setup containerd` judges the
// config file, its fix (applied as printed, mechanically) gives a file containerd starts on, and
// a CRI pull (crictl, through the transfer service) then goes through shoal by the hosts.toml
// setup wrote. The image's registry is a closed port: only shoal, routed by ?ns=, can serve it.
// Cases: the stock config (an empty config_path), a list config_path, and the list again with
// Debian's containerd 1.6 first on PATH while the file is version 4.
func TestCRIPullAfterSetupContainerd2(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	up := upstreams(t)
	const reg = "127.0.0.1:9" // unreachableURL's host: containerd's fallback to the registry fails
	debianBin := t.TempDir()  // Debian's containerd, first on PATH in one case
	if err := os.Symlink(debianContainerd, filepath.Join(debianBin, "containerd")); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(debianContainerd, "--version").Output(); err != nil || !strings.Contains(string(out), " 1.") {
		t.Fatalf("%s --version: %q %v, want Debian's containerd 1.x (apt-get install containerd)", debianContainerd, out, err)
	}
	cases := []struct {
		name     string
		list     bool   // config_path = 'DIR/x/certs.d:DIR/y/certs.d' instead of the stock ''
		pathDir  string // first on PATH for setup
		problem  string // in setup's problem about config_path
		note     string // another line setup must print
		hostsDir bool   // pass --hosts-dir (the stock config names none)
	}{
		{name: "stock-config", pathDir: containerd2Dir, problem: "does not set config_path", hostsDir: true},
		{name: "list-config-path", list: true, pathDir: containerd2Dir, problem: "a list: containerd ≥ 2.1 pulls through the transfer service"},
		{name: "debian-1.6-first-on-path", list: true, pathDir: debianBin, problem: "a list: containerd ≥ 2.1 pulls through the transfer service",
			note: "says 1.6, which cannot load a version-4 config"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hub := startUpstreamProxy(t, up.Open.URL)
			s := startShoal(t, shoalOpts{registries: []string{reg + "=" + hub.URL}})
			dir := t.TempDir()
			cfg, sock := stockContainerd2Config(t, dir)
			hostsDir := filepath.Join(dir, "certs.d")
			if tc.list {
				hostsDir = filepath.Join(dir, "x/certs.d")
				cfg = strings.Replace(cfg, "      config_path = ''\n", fmt.Sprintf("      config_path = '%s:%s/y/certs.d'\n", hostsDir, dir), 1)
			}
			cfgPath := filepath.Join(dir, "config.toml")
			if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}

			argv := []string{shoalBin, "setup", "containerd", "--containerd-config", cfgPath, "--mirror", s.URL, "--registries", reg}
			if tc.hostsDir {
				argv = append(argv, "--hosts-dir", hostsDir)
			}
			out, err := runCmd(t.Context(), time.Minute, []string{"PATH=" + tc.pathDir + ":" + os.Getenv("PATH")}, argv...)
			if err != nil {
				t.Fatalf("shoal setup containerd: %v\n%s", err, out)
			}
			t.Logf("setup:\n%s", out)
			if !strings.Contains(out, "created "+filepath.Join(hostsDir, reg, "hosts.toml")) {
				t.Errorf("setup did not write %s/%s/hosts.toml", hostsDir, reg)
			}
			problem, fix := configFix(t, out)
			if !strings.Contains(problem, tc.problem) {
				t.Errorf("setup's problem:\n%s\nwant one with %q", problem, tc.problem)
			}
			if tc.note != "" && !strings.Contains(out, tc.note) {
				t.Errorf("setup does not say %q", tc.note)
			}
			if strings.Contains(out, "transfer.v1.local") {
				t.Errorf("setup advises the transfer service's config_path, which containerd 2.4.2 never reads:\n%s", out)
			}
			applyFix(t, cfgPath, fix)
			if d := lineDiff(cfg, readText(t, cfgPath)); d != 1 {
				t.Errorf("the fix changed %d lines of the file, want 1 (config_path):\n%s", d, readText(t, cfgPath))
			}

			// The fixed file: containerd starts on it and a CRI pull goes through shoal.
			c := startContainerd2(t, dir, cfgPath, sock)
			assertCRIPullThroughShoal(t, c, s, hub, reg, up.Img.Small)
		})
	}
}

// assertCRIPullThroughShoal pulls reg/img with crictl (the kubelet's path) and checks that it came
// through shoal: containerd recorded the upstream's digest, the upstream proxy behind shoal saw
// one GET per blob, and shoal's access log has a 200 for each blob (linux/amd64).
func assertCRIPullThroughShoal(t *testing.T, c *containerd2, s *shoalDaemon, hub *upstreamProxy, reg string, img testImage) {
	t.Helper()
	mark := len(hub.requests())
	ref := reg + "/" + img.Ref()
	start := time.Now()
	if out, err := c.crictl(t, time.Minute, "pull", ref); err != nil {
		t.Fatalf("crictl pull %s: %v\n%s", ref, err, out)
	}
	t.Logf("crictl pull %s: %s", ref, time.Since(start).Round(time.Millisecond))
	if d := c.repoDigests(t, ref); !slices.Contains(d, reg+"/"+img.Repo+"@"+img.Digest) {
		t.Errorf("containerd recorded %v, want %s@%s", d, img.Repo, img.Digest)
	}
	assertOneGETPerBlob(t, hub.since(mark), img.AMD64)
	// shoal's access log: the manifest and every blob, asked for with ?ns= by containerd.
	served := shoalServed(s)
	for _, b := range img.AMD64 {
		if !served["/v2/"+img.Repo+"/blobs/"+b] {
			t.Errorf("shoal's access log has no 200 for blob %s: %v", b, served)
		}
	}
	if c.proc.exited() {
		t.Errorf("containerd 2.4.2 exited:\n%s", c.proc.tail(40))
	}
}

// repoDigests is what containerd's CRI image service recorded for ref.
func (c *containerd2) repoDigests(t *testing.T, ref string) []string {
	t.Helper()
	out, err := c.crictl(t, 10*time.Second, "inspecti", "-o", "json", ref)
	if err != nil {
		t.Fatalf("crictl inspecti: %v\n%s", err, out)
	}
	var img struct {
		Status struct {
			RepoDigests []string `json:"repoDigests"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &img); err != nil {
		t.Fatalf("crictl inspecti: %v\n%s", err, out)
	}
	return img.Status.RepoDigests
}

// shoalServed is the set of paths that shoal's access log shows answered with 200.
func shoalServed(s *shoalDaemon) map[string]bool {
	served := map[string]bool{}
	for _, line := range strings.Split(s.proc.log(), "\n") {
		var rec struct {
			Msg, Path string
			Status    int
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "request" && rec.Status == http.StatusOK {
			served[rec.Path] = true
		}
	}
	return served
}

// lineDiff counts the lines that differ between two texts with the same number of lines (else
// the difference in length, plus one).
func lineDiff(a, b string) int {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	if len(la) != len(lb) {
		return max(len(la), len(lb)) - min(len(la), len(lb)) + 1
	}
	n := 0
	for i := range la {
		if la[i] != lb[i] {
			n++
		}
	}
	return n
}
