package daemon

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/internal/mirror"
	"github.com/shoal-mirror/shoal/upstream"
)

// A store on a filesystem too small for the image: the pull still succeeds, verified, with the
// mirror degraded to a pass-through proxy, and the store stays consistent.
func TestPullSucceedsWhenTheDiskIsFull(t *testing.T) {
	dir := mountTmpfs(t, "3m")

	up := newUpstream(t)
	img := pushRandom(t, up, "test/huge", 2<<20, 3) // 6 MiB of layers on a 3 MiB disk
	// A budget far above the disk's size, so that writes really hit ENOSPC midway through a
	// blob (the budget check, which refuses earlier, is covered by the store's tests).
	d := startDaemon(t, up, func(c *Config) {
		c.DataDir = dir
		c.Store.MaxSize = 1 << 30
		c.Store.MinFree = "0"
	})
	for i := range 2 { // the second pull meets a store that is already full
		got, err := pullThrough(t, d, "test/huge:latest")
		if err != nil {
			t.Fatalf("pull %d on a full disk: %v", i+1, err)
		}
		if mustDigest(t, got) != mustDigest(t, img) {
			t.Fatal("wrong image")
		}
	}
	res, err := d.store.Verify(t.Context())
	if err != nil || len(res.Corrupt) != 0 || len(res.Missing) != 0 {
		t.Fatalf("store after disk-full pulls: %+v, %v", res, err)
	}
}

// Environment of the full-filesystem child: its data directory and the upstream registry.
const (
	fullChildEnvDir      = "SHOAL_FULL_CHILD_DIR"
	fullChildEnvUpstream = "SHOAL_FULL_CHILD_UPSTREAM"
)

// Pulls of images larger than a small tmpfs data directory, round after round, with space freed
// between rounds: the daemon never dies. Badger writes its index through memory maps of sparse
// files, and a page a full tmpfs cannot back is a SIGBUS that kills the process (it did in
// every run before the store kept free space for the index). The daemon runs in a child process
// so that such a death is reported with its stack instead of killing the test binary. Once
// space is back, an image that fits is cached again.
func TestIndexSurvivesFullFilesystem(t *testing.T) {
	if os.Getenv(fullChildEnvDir) != "" {
		return // running as the child: see TestFullFilesystemChild
	}
	dir := mountTmpfs(t, "48m")

	up := newUpstream(t)
	const images = 3
	for i := range images { // 3 × 60 MiB, pulled at once, on a 48 MiB filesystem
		pushRandom(t, up, fmt.Sprintf("test/big%d", i), 3<<20, 20)
	}
	small := pushRandom(t, up, "test/small", 1<<20, 2)

	cmd := exec.Command(os.Args[0], "-test.run=^TestFullFilesystemChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), fullChildEnvDir+"="+dir, fullChildEnvUpstream+"="+up.srv.URL)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				addrc <- a
			}
		}
		exited <- cmd.Wait()
	}()
	tail := func() string {
		s := stderr.String()
		if i := strings.Index(s, "fatal error"); i >= 0 {
			s = s[i:] // the fault and the goroutine that took it
		}
		return s[:min(len(s), 6000)]
	}
	alive := func(when string) {
		t.Helper()
		select {
		case err := <-exited:
			t.Fatalf("%s: the daemon died (%v):\n%s", when, err, tail())
		default:
		}
	}
	var addr string
	select {
	case addr = <-addrc:
	case err := <-exited:
		t.Fatalf("child daemon did not start (%v):\n%s", err, tail())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("child daemon did not start within 30s:\n%s", tail())
	}
	defer func() {
		stdin.Close() // the child stops its daemon and exits
		select {
		case err := <-exited:
			if err != nil && !t.Failed() {
				t.Errorf("child daemon: %v\n%s", err, tail())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Error("child daemon did not stop within 30s")
		}
	}()
	admin, err := adminapi.NewClient("unix:" + filepath.Join(dir, adminapi.DefaultSocketName))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	removeAll := func(keep func(i int) bool) {
		t.Helper()
		list, err := admin.CacheList(ctx, "")
		if err != nil {
			alive("cache ls")
			t.Fatal(err)
		}
		for i, e := range list.Entries {
			if keep(i) {
				continue
			}
			if _, err := admin.CacheRemove(ctx, e.Digest); err != nil {
				alive("cache rm")
				t.Fatalf("cache rm %s: %v", e.Digest, err)
			}
		}
	}

	const rounds = 20
	for round := range rounds {
		errs := make(chan error, images)
		for i := range images {
			go func() {
				img, err := pullFrom(addr, fmt.Sprintf("test/big%d:latest", i))
				if err == nil && img == nil {
					err = errors.New("no image")
				}
				errs <- err
			}()
		}
		var pullErr error
		for range images {
			pullErr = cmp.Or(pullErr, <-errs)
		}
		alive(fmt.Sprintf("round %d of %d", round+1, rounds))
		if pullErr != nil {
			t.Fatalf("round %d: pull on a full filesystem: %v", round+1, pullErr)
		}
		// Space comes back, and is filled again next round: every other entry goes.
		removeAll(func(i int) bool { return i%2 == round%2 })
	}

	// The filesystem has room again: an image that fits is cached as before.
	removeAll(func(int) bool { return false })
	got, err := pullFrom(addr, "test/small:latest")
	alive("pull after space came back")
	if err != nil {
		t.Fatal(err)
	}
	if mustDigest(t, got) != mustDigest(t, small) {
		t.Fatal("wrong image")
	}
	layers, err := small.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		ld, _ := l.Digest()
		waitFor(t, func() bool {
			resp, err := http.Head("http://" + addr + "/v2/test/small/blobs/" + ld.String())
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK && resp.Header.Get(mirror.HeaderSource) == "store"
		})
	}
}

// TestFullFilesystemChild runs the daemon TestIndexSurvivesFullFilesystem pulls through, until
// its stdin closes. It does nothing in a normal test run.
func TestFullFilesystemChild(t *testing.T) {
	dir := os.Getenv(fullChildEnvDir)
	if dir == "" {
		return
	}
	upURL := os.Getenv(fullChildEnvUpstream)
	host := strings.TrimPrefix(upURL, "http://")
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = dir
	cfg.DefaultRegistry = host
	cfg.Upstream.OnlyConfigured = true
	cfg.P2PEnabled = false
	cfg.SetRegistry(host, upstream.RegistryConfig{URL: upURL})
	// A budget far above the filesystem's size and no min_free: only the filesystem stops
	// writes, as on a tmpfs sized below what the node pulls.
	cfg.Store.MaxSize = 1 << 30
	cfg.Store.MinFree = "0"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := New(ctx, cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	fmt.Println("READY", d.Addr())
	io.Copy(io.Discard, os.Stdin)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// pullFrom pulls repo:tag from a mirror at addr and checks every byte against its digest.
func pullFrom(addr, repoTag string) (v1.Image, error) {
	ref, err := name.ParseReference(addr+"/"+repoTag, name.Insecure)
	if err != nil {
		return nil, err
	}
	img, err := remote.Image(ref)
	if err != nil {
		return nil, err
	}
	return img, validate.Image(img)
}

// mountTmpfs mounts a tmpfs of the given size ("3m") in a temp dir for the test's lifetime.
// Mounting needs root, which CI has.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a small tmpfs and needs root (CI runs as root)")
	}
	dir := filepath.Join(t.TempDir(), "small")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}
