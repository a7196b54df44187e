package daemon

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// A store on a filesystem too small for the image: the pull still succeeds, verified, with the
// mirror degraded to a pass-through proxy, and the store stays consistent.
func TestPullSucceedsWhenTheDiskIsFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a small tmpfs and needs root (CI runs as root)")
	}
	dir := filepath.Join(t.TempDir(), "small")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })

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
