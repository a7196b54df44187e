package store

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	// Register the hash functions go-digest verifies with.
	_ "crypto/sha256"
	_ "crypto/sha512"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Errors callers distinguish with errors.Is.
var (
	// ErrNotFound: the store does not hold this content or tag.
	ErrNotFound = errors.New("store: not found")
	// ErrDigestMismatch: the bytes (or their count) do not match the digest; nothing was stored.
	ErrDigestMismatch = errors.New("store: content does not match its digest")
	// ErrNoSpace: the filesystem is full, over quota or read-only, or the content does not fit
	// the budget. The caller should keep serving its client without caching (pass-through).
	ErrNoSpace = errors.New("store: no space to cache content")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store: closed")
)

const (
	// InlineMax is the largest content PutSmall keeps inside Badger; larger content goes to a
	// file. Manifests and indexes are almost always below it, and keeping values this small
	// lets Badger's compaction return the space of deleted ones.
	InlineMax = 64 << 10
	// SmallMax is the largest content PutSmall accepts (containerd's manifest limit).
	SmallMax = 4 << 20

	flushInterval = 30 * time.Second // how often batched access times reach Badger
	noSpaceLogGap = time.Minute      // at most one "disk full" log line per this period
	tagGrace      = time.Minute      // a tag may precede its manifest by this much before GC drops it
	maxQueued     = 1 << 16          // events queued for slow subscribers before some are dropped
)

// Info describes committed content.
type Info struct {
	Digest digest.Digest
	Size   int64
	// MediaType is the exact Content-Type the upstream sent for manifests; "" or
	// application/octet-stream for blobs.
	MediaType string
	Created   time.Time
	// Accessed is the last time a Reader opened the content (or its commit).
	Accessed time.Time
	Pinned   bool
}

// Tag is a tag's last known resolution. Name keys are "registry/repo:tag".
type Tag struct {
	Digest    digest.Digest
	MediaType string
	Size      int64
	Checked   time.Time // when the daemon last confirmed it upstream
}

// EventKind says what happened to content.
type EventKind int

// Event kinds.
const (
	EventCommitted EventKind = iota + 1 // content became readable
	EventEvicted                        // content is gone; Event.Reason says why
)

func (k EventKind) String() string {
	switch k {
	case EventCommitted:
		return "committed"
	case EventEvicted:
		return "evicted"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Reasons content leaves the store, used in Event.Reason and as keys of Stats.Evictions.
const (
	ReasonLRU     = "lru"      // over MaxSize: least recently used first
	ReasonMinFree = "min-free" // the filesystem fell below MinFree
	ReasonNoSpace = "no-space" // a write hit ENOSPC/EDQUOT/EROFS
	ReasonTTL     = "ttl"      // not read for TTL
	ReasonCorrupt = "corrupt"  // Verify found bytes that do not match the digest
	ReasonMissing = "missing"  // the file vanished behind the store's back
	ReasonDeleted = "deleted"  // Delete was called
)

// Event tells subscribers that content was committed or evicted.
type Event struct {
	Kind   EventKind
	Digest digest.Digest
	Reason string // for EventEvicted
}

// Stats are counters for metrics. Hits and Misses count Reader calls.
type Stats struct {
	BytesUsed, Blobs, Hits, Misses, VerifyFailures int64
	Evictions                                      map[string]int64 // by reason
	MaxSize                                        int64            // effective budget
}

// GCResult summarises one GC run.
type GCResult struct {
	Evicted     int
	Bytes       int64
	ByReason    map[string]int
	TagsDropped int
}

// VerifyResult summarises one Verify run.
type VerifyResult struct {
	Checked int
	Bytes   int64
	Corrupt []digest.Digest // removed: bytes did not hash to the digest
	Missing []digest.Digest // removed: file was gone
}

// Store is a content-addressed store. All methods are safe for concurrent use.
type Store struct {
	cfg     Config
	log     *slog.Logger
	dir     string
	blobDir string
	tmpDir  string
	db      *badger.DB
	lock    *os.File

	maxSize     int64
	minFreeB    int64   // MinFree as bytes, or
	minFreeFrac float64 // MinFree as a fraction of the filesystem

	// wmu serialises every change to the index, the files and Badger (commit, evict, delete,
	// pin, tags, flush), so that a file and its record always change together. Writes of
	// content bytes and fsync happen before it is taken.
	wmu sync.Mutex
	// mu guards the in-memory index below; readers take it shared for a map lookup.
	mu     sync.RWMutex
	closed bool
	idx    map[digest.Digest]*entry
	used   int64
	pins   map[digest.Digest]bool
	refs   map[digest.Digest][]digest.Digest
	tags   map[string]tagRecord
	tagsBy map[digest.Digest]map[string]struct{}

	lruMu sync.Mutex
	lru   entry // sentinel of the LRU list, see lruPushBack

	dirtyMu sync.Mutex
	dirty   []*entry

	hits, misses, verifyFailures atomic.Int64
	evMu                         sync.Mutex
	evictions                    map[string]int64

	events *dispatcher

	noSpace        atomic.Bool  // a write hit ENOSPC; the next GC frees space
	indexBytes     atomic.Int64 // space the index's files occupy, see measureIndex
	writing        atomic.Int64 // content bytes being written, see claimSpace
	lastNoSpaceLog atomic.Int64 // unix nanoseconds
	noSpaceQuiet   atomic.Int64 // occurrences not logged since the last line
	kick           chan struct{}
	stop           chan struct{}
	loopDone       chan struct{}
	closeOnce      sync.Once
	closeErr       error

	// hook, when set by tests, is called at named points of commit and eviction so that a
	// crash test can kill the process exactly there.
	hook func(point string)
}

// Open opens (creating if needed) the store in cfg.Dir. It removes temporary files, content
// files without index records and records without files left by a crash, loads the index into
// memory and starts the background GC loop, which Close stops.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "store")
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("store.dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store.dir: %w", err)
	}
	// /proc/self/fd shows resolved paths; compare against the resolved directory.
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return nil, fmt.Errorf("store.dir: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &Store{
		cfg: cfg, log: log, dir: dir, lock: lock,
		blobDir:   filepath.Join(dir, "blobs"),
		tmpDir:    filepath.Join(dir, "tmp"),
		idx:       map[digest.Digest]*entry{},
		pins:      map[digest.Digest]bool{},
		tagsBy:    map[digest.Digest]map[string]struct{}{},
		evictions: map[string]int64{},
		kick:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		loopDone:  make(chan struct{}),
	}
	s.lru.prev, s.lru.next = &s.lru, &s.lru
	s.minFreeB, s.minFreeFrac, _ = parseMinFree(cfg.MinFree)
	if err := s.reconcile(ctx); err != nil {
		if s.db != nil {
			s.db.Close()
		}
		lock.Close()
		return nil, err
	}
	sp, err := statfs(dir)
	if err != nil {
		s.db.Close()
		lock.Close()
		return nil, err
	}
	s.measureIndex()
	s.maxSize = cfg.MaxSize
	if s.maxSize == 0 {
		s.maxSize = (sp.Avail + s.used) / 2
	}
	if mf := s.minFree(sp); sp.Avail < mf+s.headroom() {
		log.Warn("filesystem is below store.min_free plus the index's headroom: content will be evicted and new content not cached until space frees",
			"dir", dir, "avail", sp.Avail, "min_free", mf, "index_headroom", s.headroom())
	}
	s.events = newDispatcher(log)
	go s.loop()
	log.Info("store opened", "dir", dir, "blobs", len(s.idx), "bytes", s.used, "max_size", s.maxSize,
		"min_free", cfg.MinFree, "index_headroom", s.headroom(), "ttl", cfg.TTL, "took", time.Since(start).Round(time.Millisecond))
	return s, nil
}

// reconcile prepares the directories, opens Badger and pairs files with records.
func (s *Store) reconcile(ctx context.Context) error {
	// Temporary files are uploads that never committed and evicted files not yet unlinked.
	if err := os.RemoveAll(s.tmpDir); err != nil {
		return fmt.Errorf("clean %s: %w", s.tmpDir, err)
	}
	for _, d := range []string{s.blobDir, s.tmpDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	// Badger's first writes go through memory maps (headroom.go): on a filesystem without room
	// for them the process would crash, so refuse with an error instead.
	if sp, err := statfs(s.dir); err == nil && sp.Avail < openMinFree {
		return fmt.Errorf("store.dir %s: %w: %d bytes free, the index needs %d to open (Badger writes through memory maps, which a full filesystem turns into a crash)",
			s.dir, ErrNoSpace, sp.Avail, openMinFree)
	}
	db, err := openBadger(filepath.Join(s.dir, "index"), s.log)
	if err != nil {
		return err
	}
	s.db = db
	// After a clean Close, files and records are known to pair up, and listing 100k files
	// would double the time Open takes; after a crash, list them and pair them up.
	clean, err := takeCleanMark(db)
	if err != nil {
		return err
	}
	var (
		files    map[digest.Digest]struct{}
		junk     []string
		filesErr error
		wg       sync.WaitGroup
	)
	if !clean {
		wg.Go(func() { files, junk, filesErr = listBlobs(s.blobDir) })
	}
	l, err := loadIndex(ctx, db)
	wg.Wait()
	if err != nil {
		return err
	}
	if filesErr != nil {
		return fmt.Errorf("list %s: %w", s.blobDir, filesErr)
	}

	s.idx = make(map[digest.Digest]*entry, len(l.entries))
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	var dropped int
	for _, k := range l.bad {
		_ = wb.Delete(k)
		dropped++
	}
	for _, e := range l.entries {
		if e.inline {
			if !l.inline[e.d] {
				_ = wb.Delete(contentKey(e.d))
				dropped++
				continue
			}
		} else if !clean {
			if _, ok := files[e.d]; !ok {
				_ = wb.Delete(contentKey(e.d))
				dropped++
				continue
			}
			delete(files, e.d)
		}
		s.idx[e.d] = e
		s.used += e.size
		if e.pinned {
			s.pins[e.d] = true
		}
	}
	for d := range l.inline {
		if e := s.idx[d]; e == nil || !e.inline {
			_ = wb.Delete(inlineKey(d))
		}
	}
	// The LRU list starts in the order of the recorded access times (ties, as after a bulk
	// import, in digest order, which is Badger's).
	type item struct {
		at, created int64
		e           *entry
	}
	order := make([]item, 0, len(s.idx))
	for _, e := range l.entries {
		if s.idx[e.d] == e {
			order = append(order, item{e.accessed.Load(), e.created, e})
		}
	}
	slices.SortStableFunc(order, func(a, b item) int {
		return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.created, b.created))
	})
	for _, it := range order {
		s.lruPushBack(it.e)
	}
	s.refs = l.refs
	for m := range s.refs {
		if s.idx[m] == nil {
			_ = wb.Delete(refsKey(m))
			delete(s.refs, m)
		}
	}
	s.tags = l.tags
	for name, t := range s.tags {
		s.indexTag(name, t.Digest)
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("clean index: %w", err)
	}
	for d := range files {
		junk = append(junk, s.blobPath(d))
	}
	for _, p := range junk {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove orphan: %w", err)
		}
	}
	if dropped > 0 || len(junk) > 0 {
		s.log.Warn("recovered store after an unclean stop", "records_without_files", dropped, "files_without_records", len(junk))
	}
	return nil
}

// listBlobs returns the digests of the files in blobs/<alg>/<xx>/<encoded> and the paths of
// anything else found there.
func listBlobs(root string) (map[digest.Digest]struct{}, []string, error) {
	files := make(map[digest.Digest]struct{})
	var junk []string
	algs, err := readNames(root)
	if err != nil {
		return nil, nil, err
	}
	for _, alg := range algs {
		a := digest.Algorithm(alg)
		if !a.Available() {
			junk = append(junk, filepath.Join(root, alg))
			continue
		}
		subs, err := readNames(filepath.Join(root, alg))
		if err != nil {
			junk = append(junk, filepath.Join(root, alg))
			continue
		}
		for _, sub := range subs {
			subDir := filepath.Join(root, alg, sub)
			names, err := readNames(subDir)
			if err != nil {
				junk = append(junk, subDir)
				continue
			}
			for _, n := range names {
				if !validEncoded(a, n) || n[:2] != sub {
					junk = append(junk, filepath.Join(subDir, n))
					continue
				}
				files[digest.NewDigestFromEncoded(a, n)] = struct{}{}
			}
		}
	}
	return files, junk, nil
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// Close stops the GC loop, writes pending access times and closes the index. Writers still
// open can no longer commit.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.loopDone
		s.wmu.Lock()
		flushErr := s.flushLocked()
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.wmu.Unlock()
		s.events.close()
		if flushErr == nil {
			flushErr = setCleanMark(s.db)
		}
		s.closeErr = errors.Join(flushErr, s.db.Close(), s.lock.Close())
	})
	return s.closeErr
}

func (s *Store) blobPath(d digest.Digest) string {
	enc := d.Encoded()
	return s.blobDir + string(filepath.Separator) + string(d.Algorithm()) + string(filepath.Separator) +
		enc[:2] + string(filepath.Separator) + enc
}

func (s *Store) at(point string) {
	if s.hook != nil {
		s.hook(point)
	}
}

// Stat returns the metadata of committed content, or ErrNotFound. It does not count as a read.
func (s *Store) Stat(ctx context.Context, d digest.Digest) (Info, error) {
	s.mu.RLock()
	e := s.idx[d]
	var info Info
	if e != nil {
		info = e.info()
	}
	s.mu.RUnlock()
	if e == nil {
		return Info{}, fmt.Errorf("%w: %s", ErrNotFound, d)
	}
	return info, nil
}

// Reader opens committed content. File-backed content comes back as an *os.File, so that
// http.ServeContent can use sendfile; small content kept inline comes back as an in-memory
// reader. Opening counts as an access for LRU and TTL (recorded in memory at once, in Badger in
// batches). While the returned file is open the content is not evicted (the evictor asks the
// kernel which content files are open); Delete and Verify still remove it from the index, and
// the open file stays readable to its end.
func (s *Store) Reader(ctx context.Context, d digest.Digest) (io.ReadSeekCloser, Info, error) {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, Info{}, ErrClosed
	}
	e := s.idx[d]
	if e == nil {
		s.mu.RUnlock()
		s.misses.Add(1)
		return nil, Info{}, fmt.Errorf("%w: %s", ErrNotFound, d)
	}
	info := e.info()
	var (
		rc  io.ReadSeekCloser
		err error
	)
	if e.inline {
		var data []byte
		data, err = s.loadInline(d)
		if err == nil {
			rc = bytesReader{bytes.NewReader(data)}
		}
	} else {
		// Opened under the shared lock: the evictor takes it exclusively while it checks for
		// open files, so a file opened here is always seen.
		var f *os.File
		f, err = openBlob(s.blobPath(d))
		if err == nil {
			rc = f
		}
	}
	s.mu.RUnlock()
	if err != nil {
		s.misses.Add(1)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, badger.ErrKeyNotFound) {
			s.log.Warn("content vanished from disk; dropping its record", "digest", d)
			s.dropIfSame(e, ReasonMissing)
			return nil, Info{}, fmt.Errorf("%w: %s", ErrNotFound, d)
		}
		return nil, Info{}, fmt.Errorf("open %s: %w", d, err)
	}
	s.touch(e)
	info.Accessed = time.Unix(0, e.accessed.Load())
	s.hits.Add(1)
	return rc, info, nil
}

type bytesReader struct{ *bytes.Reader }

func (bytesReader) Close() error { return nil }

func (s *Store) loadInline(d digest.Digest) ([]byte, error) {
	var data []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(inlineKey(d))
		if err != nil {
			return err
		}
		data, err = item.ValueCopy(nil)
		return err
	})
	return data, err
}

// touch records a read: in memory now, in Badger at the next flush.
func (s *Store) touch(e *entry) {
	s.lruMu.Lock()
	// The time is taken under the lock so that the list stays ordered by access time.
	e.accessed.Store(time.Now().UnixNano())
	if e.next != nil { // still indexed: move to the recent end
		e.prev.next, e.next.prev = e.next, e.prev
		e.prev, e.next = s.lru.prev, &s.lru
		s.lru.prev.next = e
		s.lru.prev = e
	}
	s.lruMu.Unlock()
	if !e.dirty.Swap(true) {
		s.dirtyMu.Lock()
		s.dirty = append(s.dirty, e)
		s.dirtyMu.Unlock()
	}
}

// flushLocked writes batched access times to Badger. The caller holds wmu, so a record is never
// written back for content that was removed meanwhile.
func (s *Store) flushLocked() error {
	s.dirtyMu.Lock()
	list := s.dirty
	s.dirty = nil
	s.dirtyMu.Unlock()
	if len(list) == 0 || s.closed {
		return nil
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	s.mu.RLock()
	for _, e := range list {
		e.dirty.Store(false)
		if s.idx[e.d] == e {
			if err := wb.Set(contentKey(e.d), e.record()); err != nil {
				s.mu.RUnlock()
				return fmt.Errorf("flush access times: %w", err)
			}
		}
	}
	s.mu.RUnlock()
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("flush access times: %w", err)
	}
	return nil
}

// Walk calls fn for every piece of committed content (a snapshot taken at the start) until fn
// returns an error, which Walk returns.
func (s *Store) Walk(ctx context.Context, fn func(Info) error) error {
	s.mu.RLock()
	infos := make([]Info, 0, len(s.idx))
	for _, e := range s.idx {
		infos = append(infos, e.info())
	}
	s.mu.RUnlock()
	for _, i := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(i); err != nil {
			return err
		}
	}
	return nil
}

// Stats returns the current counters.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	st := Stats{BytesUsed: s.used, Blobs: int64(len(s.idx)), MaxSize: s.maxSize}
	s.mu.RUnlock()
	st.Hits, st.Misses, st.VerifyFailures = s.hits.Load(), s.misses.Load(), s.verifyFailures.Load()
	s.evMu.Lock()
	st.Evictions = make(map[string]int64, len(s.evictions))
	for k, v := range s.evictions {
		st.Evictions[k] = v
	}
	s.evMu.Unlock()
	return st
}

// Subscribe registers fn for events. Events are delivered in order on one goroutine; fn must
// not block for long and must not call the returned unsubscribe, after whose return fn is not
// called again.
func (s *Store) Subscribe(fn func(Event)) (unsubscribe func()) {
	return s.events.subscribe(fn)
}

// ioErr wraps a filesystem error, marking out-of-space conditions with ErrNoSpace, and for
// those schedules eviction and logs (at most once a minute).
func (s *Store) ioErr(op string, err error) error {
	if !isNoSpace(err) {
		return fmt.Errorf("store: %s: %w", op, err)
	}
	s.noSpace.Store(true)
	select {
	case s.kick <- struct{}{}:
	default:
	}
	s.logNoSpace(op, err)
	return fmt.Errorf("store: %s: %w: %w", op, ErrNoSpace, err)
}

// logNoSpace logs a failure to cache for lack of space at most once per noSpaceLogGap: on a
// full disk every request would otherwise log.
func (s *Store) logNoSpace(op string, err error) {
	now := time.Now().UnixNano()
	last := s.lastNoSpaceLog.Load()
	if (last == 0 || now-last >= int64(noSpaceLogGap)) && s.lastNoSpaceLog.CompareAndSwap(last, now) {
		s.log.Warn("no space to cache content; content passes through uncached until space frees", "op", op, "err", err,
			"suppressed_since_last", s.noSpaceQuiet.Swap(0))
	} else {
		s.noSpaceQuiet.Add(1)
	}
}

func (s *Store) emit(ev Event) { s.events.emit(ev) }

// dispatcher delivers events to subscribers in order, off the store's locks.
type dispatcher struct {
	log       *slog.Logger
	mu        sync.Mutex
	subs      map[int]func(Event)
	next      int
	queue     []Event
	dropped   int
	wake      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	deliverMu sync.Mutex // held while subscribers run, so unsubscribe can wait for them
}

func newDispatcher(log *slog.Logger) *dispatcher {
	d := &dispatcher{log: log, subs: map[int]func(Event){}, wake: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	go d.run()
	return d
}

func (d *dispatcher) subscribe(fn func(Event)) func() {
	d.mu.Lock()
	id := d.next
	d.next++
	d.subs[id] = fn
	d.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			d.deliverMu.Lock()
			d.mu.Lock()
			delete(d.subs, id)
			d.mu.Unlock()
			d.deliverMu.Unlock()
		})
	}
}

func (d *dispatcher) emit(ev Event) {
	d.mu.Lock()
	if len(d.subs) == 0 {
		d.mu.Unlock()
		return
	}
	if len(d.queue) >= maxQueued {
		d.dropped++
		d.mu.Unlock()
		return
	}
	d.queue = append(d.queue, ev)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *dispatcher) run() {
	defer close(d.done)
	for {
		select {
		case <-d.wake:
			d.deliver()
		case <-d.stop:
			d.deliver()
			return
		}
	}
}

func (d *dispatcher) deliver() {
	for {
		d.mu.Lock()
		q, dropped := d.queue, d.dropped
		d.queue, d.dropped = nil, 0
		d.mu.Unlock()
		if dropped > 0 {
			d.log.Warn("event subscribers are too slow; events dropped", "dropped", dropped)
		}
		if len(q) == 0 {
			return
		}
		d.deliverMu.Lock()
		for _, ev := range q {
			d.mu.Lock()
			subs := make([]func(Event), 0, len(d.subs))
			for _, fn := range d.subs {
				subs = append(subs, fn)
			}
			d.mu.Unlock()
			for _, fn := range subs {
				fn(ev)
			}
		}
		d.deliverMu.Unlock()
	}
}

func (d *dispatcher) close() {
	close(d.stop)
	<-d.done
}
