package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
)

// fsSpace is what statfs says about the filesystem holding the store.
type fsSpace struct {
	Total int64 // size of the filesystem
	Avail int64 // bytes an unprivileged writer may still use
}

func statfs(dir string) (fsSpace, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fsSpace{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	bs := int64(st.Bsize) //nolint:unconvert // Bsize's type differs between platforms
	return fsSpace{Total: int64(st.Blocks) * bs, Avail: int64(st.Bavail) * bs}, nil
}

// isNoSpace reports whether err means the filesystem cannot take more data (full, over quota or
// read-only), the cases in which the daemon should stop caching and pass bytes through.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EROFS)
}

// lockDir takes an exclusive, non-blocking flock on dir/LOCK so that two processes never
// reconcile the same store against each other. The kernel drops the lock when the process dies,
// so a kill -9 leaves no stale lock behind.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	// A lock just released can linger for a moment: a child forked (by this process or a
	// restarting supervisor) shares the descriptor until its exec closes it. Retry briefly.
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("store directory %s is in use by another process", dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// openBlobFiles lists the content files this process has open, by reading /proc/self/fd. The
// Reader hands out plain *os.File values (so that net/http can use sendfile) and cannot observe
// their Close, so eviction asks the kernel instead. It returns ok=false where /proc is missing;
// eviction then relies on POSIX semantics alone (an unlinked file stays readable through open
// descriptors, so a reader is never cut short, but its space returns only when it closes).
func openBlobFiles(blobDir string) (open map[digest.Digest]bool, ok bool) {
	const fdDir = "/proc/self/fd"
	d, err := os.Open(fdDir)
	if err != nil {
		return nil, false
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, false
	}
	prefix := blobDir + string(filepath.Separator)
	open = make(map[digest.Digest]bool)
	for _, n := range names {
		target, err := os.Readlink(fdDir + "/" + n)
		if err != nil || !strings.HasPrefix(target, prefix) {
			continue // closed meanwhile, or not ours
		}
		// blobs/<algorithm>/<xx>/<encoded>
		parts := strings.Split(target[len(prefix):], string(filepath.Separator))
		if len(parts) != 3 {
			continue
		}
		open[digest.NewDigestFromEncoded(digest.Algorithm(parts[0]), parts[2])] = true
	}
	return open, true
}
