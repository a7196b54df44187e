package hostsetup

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestPrepareDataDir(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("PrepareDataDir changes owners: run the tests as root (CI does)")
	}
	dir := filepath.Join(t.TempDir(), "var", "lib", "shoal")
	if err := os.MkdirAll(filepath.Join(dir, "blobs"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "blobs/a", "x")
	outside := writeFile(t, t.TempDir(), "outside", "y")
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := PrepareDataDir(dir, 65532, 65533); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "blobs"), filepath.Join(dir, "blobs", "a"), filepath.Join(dir, "link")} {
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if s := st.Sys().(*syscall.Stat_t); s.Uid != 65532 || s.Gid != 65533 {
			t.Errorf("%s owned by %d:%d", p, s.Uid, s.Gid)
		}
	}
	if st, _ := os.Stat(outside); st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Error("a symbolic link was followed out of the data dir")
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o750 {
		t.Errorf("data dir mode %v, want 0750", st.Mode().Perm())
	}
}
