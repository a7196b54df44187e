package store

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Writer writes content with a known digest into a temporary file and makes it visible only
// when Commit finds that the bytes hash to the digest. While it is being written, other
// goroutines may read what has been written so far with ReadAt (readers following a download).
type Writer struct {
	s         *Store
	d         digest.Digest
	mediaType string
	f         *os.File
	tmp       string
	written   atomic.Int64

	mu sync.Mutex // serialises Write, Commit, Abort and Close
	h  *hasher
	// early: start the writeback as bytes arrive (Ingest: a push, whose client waits for
	// Commit's fsync); queued is how far it was started.
	early  bool
	queued int64
	err    error // first write error; the writer can no longer commit
	state  int
	closed bool
}

const (
	writing = iota
	committed
	aborted
)

// Writer starts writing content expected to hash to d. The caller must call Commit or Abort,
// then Close once no reader needs ReadAt any more.
func (s *Store) Writer(ctx context.Context, d digest.Digest, mediaType string) (*Writer, error) {
	return s.newWriter(ctx, d, mediaType, false)
}

// newWriter is Writer; an upload's writer (Ingest) writes back early and lets its hasher fall
// further behind (uploadHashQueue).
func (s *Store) newWriter(ctx context.Context, d digest.Digest, mediaType string, upload bool) (*Writer, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("store: writer for %q: %w", d, err)
	}
	if s.isClosed() {
		return nil, ErrClosed
	}
	f, err := os.CreateTemp(s.tmpDir, "w-")
	if err != nil {
		return nil, s.ioErr("create temporary file", err)
	}
	depth := hashQueue
	if upload {
		depth = uploadHashQueue
	}
	return &Writer{s: s, d: d, mediaType: mediaType, f: f, tmp: f.Name(), h: newHasher(d.Algorithm().Hash(), depth), early: upload}, nil
}

func (s *Store) isClosed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.closed
}

// Digest is the digest the content is expected to have.
func (w *Writer) Digest() digest.Digest { return w.d }

// Write appends p to the temporary file and hashes it. A full, over-quota or read-only
// filesystem, or one whose free space would drop below the index's headroom (headroom.go), gives
// an error wrapping ErrNoSpace and schedules eviction; the writer can then only be aborted.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	if w.state != writing {
		return 0, errors.New("store: write after commit or abort")
	}
	if err := w.s.claimSpace(int64(len(p))); err != nil {
		w.err = w.s.ioErr("write "+w.d.String(), err)
		return 0, w.err
	}
	w.h.write(p) // before the file write, so that hashing overlaps it
	n, err := w.f.Write(p)
	w.s.writing.Add(-int64(len(p)))
	w.written.Add(int64(n))
	if err != nil {
		w.err = w.s.ioErr("write "+w.d.String(), err)
		return n, w.err
	}
	w.writeback()
	return n, nil
}

// writeback starts, for an early writer, the disk writes of the whole writebackChunks written
// since the last call, so that they run while more bytes arrive instead of all in Commit's
// fsync (that fsync took ~0.5 s per GiB at the end of a push here, after the last byte was in).
// Only whole chunks: a page still being written is not written back twice. A download's writer
// does not: its fsync runs after its clients got every byte, off their path, and writing back
// during the transfer cost CPU beside them (docs/benchmarks.md). w.mu is held.
func (w *Writer) writeback() {
	if !w.early {
		return
	}
	if end := w.written.Load() &^ (writebackChunk - 1); end > w.queued {
		startWriteback(w.f, w.queued, end-w.queued)
		w.queued = end
	}
}

// writebackChunk is how many written bytes gather before their writeback starts: large enough
// for few system calls and long sequential disk writes (a power of two).
const writebackChunk = 8 << 20

// Buffer returns an empty buffer (capacity BufferSize) to read content into and hand to
// WriteBuffer, which hashes it without copying it.
func (w *Writer) Buffer() []byte { return (*hashBufs.Get().(*[]byte))[:0] }

// BufferSize is the capacity of the buffers Buffer returns.
const BufferSize = hashChunk

// WriteBuffer is Write for a buffer that came from Buffer: the writer takes it over (the
// hasher works on it in place, then recycles it), so the caller must not touch b afterwards.
func (w *Writer) WriteBuffer(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	if w.state != writing {
		return 0, errors.New("store: write after commit or abort")
	}
	if cap(b) != hashChunk {
		return 0, errors.New("store: WriteBuffer of a buffer that Buffer did not return")
	}
	if err := w.s.claimSpace(int64(len(b))); err != nil {
		w.err = w.s.ioErr("write "+w.d.String(), err)
		return 0, w.err
	}
	n, err := w.f.Write(b)
	w.s.writing.Add(-int64(len(b)))
	w.written.Add(int64(n))
	// After the file write: the hasher may recycle b at once. A small buffer (a slow link
	// delivers 64 KiB at a time) is copied into the hasher's current one instead, so the
	// hasher still wakes once per full chunk.
	if n < hashChunk/2 {
		w.h.write(b[:n])
		b = b[:0]
		hashBufs.Put(&b)
	} else {
		w.h.take(b[:n])
	}
	if err != nil {
		w.err = w.s.ioErr("write "+w.d.String(), err)
		return n, w.err
	}
	w.writeback()
	return n, nil
}

// ReadFrom writes what r yields until io.EOF, reading it straight into the writer's own buffers
// (Buffer, WriteBuffer): each byte is copied once, from r, and hashed in place. io.Copy into a
// Writer uses it. It gathers at least half a buffer per write, so that the hasher wakes once per
// chunk even when r yields little at a time (an HTTP body sent in 32 KiB chunks).
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		b := w.Buffer()[:BufferSize]
		n, rerr := io.ReadAtLeast(r, b, len(b)/2)
		if rerr == io.ErrUnexpectedEOF {
			rerr = io.EOF
		}
		if n > 0 {
			k, err := w.WriteBuffer(b[:n])
			total += int64(k)
			if err != nil {
				return total, err
			}
		} else {
			b = b[:0]
			hashBufs.Put(&b)
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// ReadAt reads bytes already written; reading at or past Written() gives io.EOF. It may run
// concurrently with Write, and keeps working after Commit or Abort until Close.
func (w *Writer) ReadAt(p []byte, off int64) (int, error) {
	n := w.written.Load()
	if off >= n {
		return 0, io.EOF
	}
	short := false
	if int64(len(p)) > n-off {
		p, short = p[:n-off], true
	}
	k, err := w.f.ReadAt(p, off)
	if err == nil && short {
		err = io.EOF
	}
	return k, err
}

// File is the temporary file, for sending bytes below Written() with sendfile(2) at an
// explicit offset. The caller must not write, seek or close it, nor use it after Close.
func (w *Writer) File() *os.File { return w.f }

// Written is the number of bytes written so far.
func (w *Writer) Written() int64 { return w.written.Load() }

// Commit checks that exactly size bytes were written (size < 0 skips this check) and that they
// hash to the digest, fsyncs the file, renames it into place and records it; only then can
// Stat and Reader see it. On a mismatch it returns ErrDigestMismatch and removes the temporary
// file. If the content is already stored the new copy is discarded and Commit succeeds. If the
// content does not fit the budget or the filesystem, Commit returns ErrNoSpace.
func (w *Writer) Commit(ctx context.Context, size int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch w.state {
	case committed:
		return nil
	case aborted:
		return errors.New("store: commit after abort")
	}
	if w.err != nil {
		w.abortLocked()
		return w.err
	}
	n := w.written.Load()
	if size >= 0 && n != size {
		w.abortLocked()
		return fmt.Errorf("%w: %s: got %d bytes, expected %d", ErrDigestMismatch, w.d, n, size)
	}
	// fsync while the hasher finishes; the digest is checked before anything becomes visible.
	w.h.flush()
	w.s.at("commit-before-sync")
	syncErr := w.f.Sync()
	if got := digest.NewDigestFromBytes(w.d.Algorithm(), w.h.sum()); got != w.d {
		w.abortLocked()
		return fmt.Errorf("%w: expected %s, got %s", ErrDigestMismatch, w.d, got)
	}
	if syncErr != nil {
		w.abortLocked()
		return w.s.ioErr("fsync "+w.d.String(), syncErr)
	}
	if err := w.s.commitFile(ctx, w.d, w.mediaType, w.tmp, n); err != nil {
		w.state = aborted // commitFile removed the temporary file
		return err
	}
	w.state = committed
	return nil
}

// Abort discards the content. It is idempotent and does nothing after a successful Commit.
func (w *Writer) Abort() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state == writing {
		w.abortLocked()
	}
	return nil
}

func (w *Writer) abortLocked() {
	w.h.stop()
	w.state = aborted
	if err := os.Remove(w.tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		w.s.log.Warn("remove temporary file", "path", w.tmp, "err", err)
	}
}

// Close releases the file descriptor, aborting first if neither Commit nor Abort was called.
// Call it once readers using ReadAt are done.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	if w.state == writing {
		w.abortLocked()
	}
	w.closed = true
	return w.f.Close()
}

// hasher hashes a Writer's bytes on its own goroutine, so that hashing (SHA-256 runs at about
// 1 GB/s here, no faster than a disk) overlaps the file writes and the fsync instead of adding
// to them. Bytes are copied into buffers of hashChunk bytes; at most hashQueue (an upload's:
// uploadHashQueue) full buffers wait, after which Write waits for the hasher.
type hasher struct {
	h       hash.Hash
	cur     *[]byte
	q       chan *[]byte
	done    chan struct{}
	stopped bool
}

const (
	hashChunk = 256 << 10
	hashQueue = 2
	// uploadHashQueue: a push upload's hasher may fall 2 MiB behind, so that the receiving and
	// the hashing goroutine do not wait on each other whenever one of them is descheduled (2
	// busy cores): push / raw write+fsync went from 0.78 to 0.90 in one run
	// (BenchmarkPushBeforeAfter). Downloads keep 2: there may be hundreds at once.
	uploadHashQueue = 8
)

var hashBufs = sync.Pool{New: func() any { b := make([]byte, 0, hashChunk); return &b }}

func newHasher(h hash.Hash, depth int) *hasher {
	hs := &hasher{h: h, q: make(chan *[]byte, depth), done: make(chan struct{})}
	go hs.run()
	return hs
}

func (hs *hasher) run() {
	defer close(hs.done)
	for b := range hs.q {
		hs.h.Write(*b)
		*b = (*b)[:0]
		hashBufs.Put(b)
	}
}

func (hs *hasher) write(p []byte) {
	if hs.stopped { // after sum (Check, then more bytes): hash inline
		hs.h.Write(p)
		return
	}
	for len(p) > 0 {
		if hs.cur == nil {
			hs.cur = hashBufs.Get().(*[]byte)
		}
		b := *hs.cur
		n := min(len(p), cap(b)-len(b))
		*hs.cur = append(b, p[:n]...)
		p = p[n:]
		if len(*hs.cur) == cap(*hs.cur) {
			hs.q <- hs.cur
			hs.cur = nil
		}
	}
}

// take hands b (from hashBufs) to the hasher without copying it, after what came before.
func (hs *hasher) take(b []byte) {
	if hs.stopped {
		hs.h.Write(b)
		b = b[:0]
		hashBufs.Put(&b)
		return
	}
	hs.flush()
	hs.q <- &b
}

// flush hands the partly filled buffer to the hasher.
func (hs *hasher) flush() {
	if hs.cur != nil && !hs.stopped {
		hs.q <- hs.cur
		hs.cur = nil
	}
}

// sum waits for the hasher and returns the hash of everything written so far. Writes after it
// are hashed inline.
func (hs *hasher) sum() []byte {
	hs.flush()
	hs.stop()
	return hs.h.Sum(nil)
}

// stop ends the hasher goroutine; later writes are not hashed. It is idempotent.
func (hs *hasher) stop() {
	if !hs.stopped {
		hs.stopped = true
		close(hs.q)
	}
	<-hs.done
}

// PutSmall stores small content (at most SmallMax bytes, such as a manifest) after verifying
// its digest: inside Badger up to InlineMax bytes, as a file above. It is idempotent.
func (s *Store) PutSmall(ctx context.Context, d digest.Digest, mediaType string, data []byte) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("store: put %q: %w", d, err)
	}
	if len(data) > SmallMax {
		return fmt.Errorf("store: put %s: %d bytes is over the %d-byte limit for small content", d, len(data), SmallMax)
	}
	if got := d.Algorithm().FromBytes(data); got != d {
		return fmt.Errorf("%w: expected %s, got %s", ErrDigestMismatch, d, got)
	}
	s.mu.RLock()
	exists, closed := s.idx[d] != nil, s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if exists {
		return nil
	}
	if len(data) > InlineMax {
		w, err := s.Writer(ctx, d, mediaType)
		if err != nil {
			return err
		}
		defer w.Close()
		if _, err := w.Write(data); err != nil {
			return err
		}
		return w.Commit(ctx, int64(len(data)))
	}

	var trash []string
	s.wmu.Lock()
	defer func() {
		s.wmu.Unlock()
		s.unlink(trash)
	}()
	s.mu.RLock()
	exists, closed = s.idx[d] != nil, s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if exists {
		return nil
	}
	trash, err := s.makeRoomLocked(int64(len(data)))
	if err != nil {
		return err
	}
	e := &entry{d: d, size: int64(len(data)), mediaType: mediaType, created: time.Now().UnixNano(), inline: true}
	e.accessed.Store(e.created)
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	if err := wb.Set(inlineKey(d), data); err != nil {
		return fmt.Errorf("store: put %s: %w", d, err)
	}
	if err := wb.Set(contentKey(d), e.record()); err != nil {
		return fmt.Errorf("store: put %s: %w", d, err)
	}
	if err := wb.Flush(); err != nil {
		return s.dbErr("put "+d.String(), err)
	}
	s.insert(e)
	return nil
}

// commitFile moves a verified, fsynced temporary file into place and records it. It removes
// the temporary file when it does not commit it.
func (s *Store) commitFile(ctx context.Context, d digest.Digest, mediaType, tmp string, size int64) error {
	var trash []string
	s.wmu.Lock()
	defer func() {
		s.wmu.Unlock()
		s.unlink(trash)
	}()
	s.mu.RLock()
	exists, closed := s.idx[d] != nil, s.closed
	s.mu.RUnlock()
	if closed || exists {
		trash = append(trash, tmp)
		if closed {
			return ErrClosed
		}
		return nil
	}
	var err error
	if trash, err = s.makeRoomLocked(size); err != nil {
		trash = append(trash, tmp)
		return err
	}
	p := s.blobPath(d)
	if err := os.Mkdir(filepath.Dir(p), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			trash = append(trash, tmp)
			return s.ioErr("create directory", err)
		}
	}
	s.at("commit-before-rename")
	if err := os.Rename(tmp, p); err != nil {
		trash = append(trash, tmp)
		return s.ioErr("rename into place", err)
	}
	s.at("commit-after-rename")
	now := time.Now().UnixNano()
	e := &entry{d: d, size: size, mediaType: mediaType, created: now}
	e.accessed.Store(now)
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(contentKey(d), e.record()) }); err != nil {
		_ = os.Remove(p) // under wmu: a later commit of d may rename into p
		return s.dbErr("record "+d.String(), err)
	}
	s.at("commit-after-record")
	s.insert(e)
	return nil
}

func (s *Store) insert(e *entry) {
	s.mu.Lock()
	s.idx[e.d] = e
	s.used += e.size
	s.lruPushBack(e)
	s.mu.Unlock()
	s.emit(Event{Kind: EventCommitted, Digest: e.d})
}

// dbErr wraps a Badger error; Badger reports a full disk as a wrapped syscall error too.
func (s *Store) dbErr(op string, err error) error {
	if isNoSpace(err) {
		return s.ioErr(op, err)
	}
	return fmt.Errorf("store: %s: %w", op, err)
}

// unlink removes files that left the index; it runs after wmu is released because returning
// the blocks of a large file to the filesystem takes a while.
func (s *Store) unlink(paths []string) {
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("remove file", "path", p, "err", err)
		}
	}
}
