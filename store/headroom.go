package store

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"syscall"
	"time"
)

// Why content never takes the filesystem's last bytes.
//
// Badger writes its write-ahead log (index/*.mem, 2 × memTableSize each), its tables
// (index/*.sst) and its value log through shared memory maps of files it first sizes with
// ftruncate, so their blocks are allocated only when a page is first written. On a full
// filesystem that first write gets no block and the kernel answers with SIGBUS (tmpfs always,
// ext4 once root's reserved blocks are gone too), which kills the process: Go cannot turn a
// fault in Badger's goroutines into an error. So content writes leave Badger the headroom it can
// need (Store.headroom): a Write that would take it fails with ErrNoSpace (the daemon passes
// bytes through) and schedules eviction, and commits and eviction keep it free on top of
// MinFree. When space returns, the next content is cached as before.

// memTableSize is Badger's memtable size (openBadger). The index is small records and content
// up to InlineMax, so a small memtable costs nothing and keeps the headroom small.
const memTableSize = 4 << 20

// freeSpaceWatch is how often the store looks at the filesystem's free space, so that eviction
// restores the headroom soon after something else took it.
const freeSpaceWatch = time.Second

// openMinFree is the free space Open requires before it opens Badger, which at once writes the
// first pages of a new write-ahead log, value log and discard file through memory maps.
const openMinFree = 1 << 20

// headroomTables is how many memtables' worth of free space the index keeps: the rest of the
// active write-ahead log (up to a memtable plus one batch), the next log after it fills, and
// the table its flush writes.
const headroomTables = 4

// headroom is the free space content writes leave to the index: headroomTables memtables plus
// the index's current size, which a compaction may rewrite before it deletes the old tables.
func (s *Store) headroom() int64 { return headroomTables*memTableSize + s.indexBytes.Load() }

// measureIndex records the space the index's files occupy (allocated blocks, as du counts
// them: Badger's sparse files count only for the pages written).
func (s *Store) measureIndex() {
	var n int64
	_ = filepath.WalkDir(filepath.Join(s.dir, "index"), func(_ string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return nil
		}
		if fi, err := de.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	s.indexBytes.Store(n)
}

// claimSpace admits a content write of n bytes if it leaves the index its headroom, counting
// the bytes of other writes in flight (released by the caller once written). It fails with an
// error wrapping ENOSPC, which the caller turns into ErrNoSpace.
func (s *Store) claimSpace(n int64) error {
	inFlight := s.writing.Add(n)
	sp, err := statfs(s.dir)
	if err != nil {
		return nil // the write itself reports what is wrong with the filesystem
	}
	if h := s.headroom(); sp.Avail-inFlight < h {
		s.writing.Add(-n)
		return fmt.Errorf("%d bytes free, %d of them kept for the index: %w", sp.Avail, h, syscall.ENOSPC)
	}
	return nil
}
