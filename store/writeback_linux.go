package store

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing n bytes of f at off to disk, without waiting
// for it (sync_file_range with SYNC_FILE_RANGE_WRITE, as RocksDB's bytes_per_sync does). It
// gives no durability: Commit's fsync does. An error is ignored: that fsync reports it.
func startWriteback(f *os.File, off, n int64) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) { _ = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE) })
}
