package hostsetup

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// PrepareDataDir creates dir (mode 0750) and hands it, with everything in it, to uid:gid. A
// Kubernetes hostPath volume is created root-owned and kubelet cannot change that, so an init
// container running as root does it for the daemon's non-root user. Symbolic links are changed
// themselves, never followed. Entries already owned by uid:gid are left alone, which keeps a
// restart over a large cache cheap.
func PrepareDataDir(dir string, uid, gid int) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o750); err != nil {
		return err
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && int(st.Uid) == uid && int(st.Gid) == gid {
			return nil
		}
		return os.Lchown(p, uid, gid)
	})
	if err != nil {
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	return nil
}
