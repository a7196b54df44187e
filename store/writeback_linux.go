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

// openBlob opens a stored file for reading. os.Open would try to register the file with the
// runtime's poller (three fcntl and an epoll_ctl that fails for a regular file): a cached GET
// opens one file, so that is four syscalls of the eleven nginx-like ones it needs. NewFile on a
// blocking descriptor keeps it out of the poller; reads and sendfile work the same.
func openBlob(path string) (*os.File, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return os.NewFile(uintptr(fd), path), nil
	}
}
