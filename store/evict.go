package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

func (s *Store) minFree(sp fsSpace) int64 {
	if s.minFreeFrac > 0 {
		return int64(s.minFreeFrac * float64(sp.Total))
	}
	return s.minFreeB
}

// makeRoomLocked evicts least recently used content so that incoming more bytes fit the budget
// and the filesystem stays above MinFree plus the index's headroom. When that is impossible it
// evicts nothing and returns ErrNoSpace. It returns files to unlink once wmu is released. The
// caller holds wmu.
func (s *Store) makeRoomLocked(incoming int64) ([]string, error) {
	if incoming > s.maxSize {
		return nil, s.noSpaceErr("commit", fmt.Errorf("%d bytes are more than the store's budget of %d bytes", incoming, s.maxSize))
	}
	s.mu.RLock()
	over := s.used + incoming - s.maxSize
	s.mu.RUnlock()
	need, reason := over, ReasonLRU
	if sp, err := statfs(s.dir); err == nil {
		// A file being committed already occupies its blocks, so no incoming here. The
		// index's headroom stays free on top of MinFree (headroom.go).
		if deficit := s.minFree(sp) + s.headroom() - sp.Avail; deficit > need {
			need, reason = deficit, ReasonMinFree
		}
	}
	if need <= 0 {
		return nil, nil
	}
	victims, tags, ok := s.pickLocked(need, 0, true)
	if !ok {
		return nil, s.noSpaceErr("commit", fmt.Errorf("%d bytes do not fit: %d more bytes needed (%s) and not enough content can be evicted (pinned or in use)", incoming, need, reason))
	}
	return s.retireLocked(victims, tags, reason), nil
}

// noSpaceErr reports a commit refused for lack of room (not an I/O error, so no eviction is
// scheduled), logging at most once a minute.
func (s *Store) noSpaceErr(op string, err error) error {
	s.logNoSpace(op, err)
	return fmt.Errorf("store: %s: %w: %w", op, ErrNoSpace, err)
}

// pickLocked chooses content to evict, least recently used first, skipping pinned content,
// content a pinned manifest references and content files open in this process. With need > 0
// it picks until need bytes are freed (with strict, nothing unless need can be met); with
// olderThan > 0 it picks everything last accessed before that time (unix nanoseconds). The
// victims leave the in-memory index before it returns, together with the tags that pointed at
// them; the caller holds wmu and must retire them. It walks the LRU list from its old end, so
// its cost grows with the victims and the protected content it passes, not with the index.
func (s *Store) pickLocked(need, olderThan int64, strict bool) ([]*entry, []string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Under the exclusive lock no Reader can open a file between this look and the unindexing.
	open, _ := openBlobFiles(s.blobDir)
	prot := s.protectedLocked()
	var (
		victims []*entry
		freed   int64
	)
	s.lruMu.Lock()
	for e := s.lru.next; e != &s.lru; e = e.next {
		if olderThan > 0 && e.accessed.Load() >= olderThan {
			break
		}
		if need > 0 && freed >= need {
			break
		}
		if e.pinned || prot[e.d] || open[e.d] {
			continue
		}
		victims = append(victims, e)
		freed += e.size
	}
	s.lruMu.Unlock()
	if need > 0 && strict && freed < need {
		return nil, nil, false
	}
	var tags []string
	for _, v := range victims {
		tags = append(tags, s.unindexLocked(v)...)
	}
	return victims, tags, true
}

// protectedLocked returns content referenced, directly or through nested manifests, by pinned
// content. The caller holds mu.
func (s *Store) protectedLocked() map[digest.Digest]bool {
	prot := map[digest.Digest]bool{}
	stack := make([]digest.Digest, 0, len(s.pins))
	for d := range s.pins {
		stack = append(stack, d)
	}
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, r := range s.refs[d] {
			if !prot[r] {
				prot[r] = true
				stack = append(stack, r)
			}
		}
	}
	return prot
}

// unindexLocked removes e from memory with its refs and the tags that name it, returning those
// tags. The caller holds mu.
func (s *Store) unindexLocked(e *entry) []string {
	delete(s.idx, e.d)
	s.lruRemove(e)
	delete(s.pins, e.d)
	delete(s.refs, e.d)
	s.used -= e.size
	var names []string
	for name := range s.tagsBy[e.d] {
		delete(s.tags, name)
		names = append(names, name)
	}
	delete(s.tagsBy, e.d)
	return names
}

// retireLocked removes unindexed content from disk and Badger: files are renamed into tmp/
// (fast, and a crash leaves them where Open deletes them) and returned for unlinking; records go
// in one batch. The caller holds wmu.
func (s *Store) retireLocked(victims []*entry, tags []string, reason string) []string {
	if len(victims) == 0 && len(tags) == 0 {
		return nil
	}
	var trash []string
	for _, v := range victims {
		if v.inline {
			continue
		}
		t := filepath.Join(s.tmpDir, "x-"+v.d.Encoded())
		if err := os.Rename(s.blobPath(v.d), t); err == nil {
			trash = append(trash, t)
		} else if !errors.Is(err, os.ErrNotExist) {
			// The record goes anyway; Open removes a file without a record.
			s.log.Warn("evict: move file aside", "digest", v.d, "err", err)
		}
		s.at("evict-after-rename")
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, v := range victims {
		_ = wb.Delete(contentKey(v.d))
		_ = wb.Delete(refsKey(v.d))
		if v.inline {
			_ = wb.Delete(inlineKey(v.d))
		}
	}
	for _, name := range tags {
		_ = wb.Delete(tagKey(name))
	}
	if err := wb.Flush(); err != nil {
		// Memory is already consistent; Open drops records whose files are gone.
		s.log.Warn("evict: delete records", "err", err, "count", len(victims))
	}
	s.at("evict-after-delete")
	if len(victims) > 0 {
		s.evMu.Lock()
		s.evictions[reason] += int64(len(victims))
		s.evMu.Unlock()
	}
	for _, v := range victims {
		s.emit(Event{Kind: EventEvicted, Digest: v.d, Reason: reason})
	}
	return trash
}

// dropIfSame removes e if it is still the indexed entry for its digest.
func (s *Store) dropIfSame(e *entry, reason string) bool {
	s.wmu.Lock()
	s.mu.Lock()
	same := s.idx[e.d] == e
	var tags []string
	if same {
		tags = s.unindexLocked(e)
	}
	s.mu.Unlock()
	var trash []string
	if same {
		trash = s.retireLocked([]*entry{e}, tags, reason)
	}
	s.wmu.Unlock()
	s.unlink(trash)
	return same
}

// Delete removes content whatever its pins, with the tags that name it. Readers that already
// hold the file keep reading it to its end.
func (s *Store) Delete(ctx context.Context, d digest.Digest) error {
	s.mu.RLock()
	e := s.idx[d]
	s.mu.RUnlock()
	if e == nil || !s.dropIfSame(e, ReasonDeleted) {
		return fmt.Errorf("%w: %s", ErrNotFound, d)
	}
	return nil
}

// Pin protects content, and everything it references through SetRefs, from eviction.
func (s *Store) Pin(ctx context.Context, d digest.Digest) error { return s.setPinned(d, true) }

// Unpin makes content evictable again.
func (s *Store) Unpin(ctx context.Context, d digest.Digest) error { return s.setPinned(d, false) }

func (s *Store) setPinned(d digest.Digest, pinned bool) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	e := s.idx[d]
	if e == nil || s.closed {
		s.mu.Unlock()
		if s.closed {
			return ErrClosed
		}
		return fmt.Errorf("%w: %s", ErrNotFound, d)
	}
	e.pinned = pinned
	if pinned {
		s.pins[d] = true
	} else {
		delete(s.pins, d)
	}
	rec := e.record()
	s.mu.Unlock()
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(contentKey(d), rec) }); err != nil {
		return s.dbErr("pin "+d.String(), err)
	}
	return nil
}

// SetRefs records the digests a stored manifest references (layers, config, child manifests).
// The store keeps a manifest when content it references is evicted (the daemon refetches that
// on demand); refs make a pin on the manifest protect what it references. It replaces earlier
// refs; the manifest must be stored (ErrNotFound otherwise).
func (s *Store) SetRefs(ctx context.Context, manifest digest.Digest, refs []digest.Digest) error {
	for _, r := range refs {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("store: refs of %s: %q: %w", manifest, r, err)
		}
	}
	refs = slices.Clone(refs)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.RLock()
	exists, closed := s.idx[manifest] != nil, s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if !exists {
		return fmt.Errorf("%w: %s", ErrNotFound, manifest)
	}
	err := s.db.Update(func(txn *badger.Txn) error {
		if len(refs) == 0 {
			return txn.Delete(refsKey(manifest))
		}
		return txn.Set(refsKey(manifest), encodeRefs(refs))
	})
	if err != nil {
		return s.dbErr("refs of "+manifest.String(), err)
	}
	s.mu.Lock()
	if len(refs) == 0 {
		delete(s.refs, manifest)
	} else {
		s.refs[manifest] = refs
	}
	s.mu.Unlock()
	return nil
}

// PutTag records what a tag resolves to. name is "registry/repo:tag".
func (s *Store) PutTag(ctx context.Context, name string, t Tag) error {
	if name == "" || strings.ContainsAny(name, "\n\x00") || len(name) > 1024 {
		return fmt.Errorf("store: tag name %q: must be 1..1024 bytes without newlines", name)
	}
	if err := t.Digest.Validate(); err != nil {
		return fmt.Errorf("store: tag %s: digest %q: %w", name, t.Digest, err)
	}
	rec := tagRecord{Tag: t, Stored: time.Now()}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("store: tag %s: %w", name, err)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.isClosed() {
		return ErrClosed
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(tagKey(name), b) }); err != nil {
		return s.dbErr("tag "+name, err)
	}
	s.mu.Lock()
	if old, ok := s.tags[name]; ok {
		s.unindexTag(name, old.Digest)
	}
	s.tags[name] = rec
	s.indexTag(name, t.Digest)
	s.mu.Unlock()
	return nil
}

// GetTag returns what a tag last resolved to, or ErrNotFound. A tag is dropped when its
// manifest leaves the store.
func (s *Store) GetTag(ctx context.Context, name string) (Tag, error) {
	s.mu.RLock()
	rec, ok := s.tags[name]
	s.mu.RUnlock()
	if !ok {
		return Tag{}, fmt.Errorf("%w: tag %s", ErrNotFound, name)
	}
	return rec.Tag, nil
}

func (s *Store) indexTag(name string, d digest.Digest) {
	m := s.tagsBy[d]
	if m == nil {
		m = map[string]struct{}{}
		s.tagsBy[d] = m
	}
	m[name] = struct{}{}
}

func (s *Store) unindexTag(name string, d digest.Digest) {
	if m := s.tagsBy[d]; m != nil {
		delete(m, name)
		if len(m) == 0 {
			delete(s.tagsBy, d)
		}
	}
}

// dropDanglingTagsLocked removes tags whose manifest is not stored, once they are older than
// tagGrace (the daemon may record a tag just before its manifest). The caller holds wmu.
func (s *Store) dropDanglingTagsLocked() int {
	cutoff := time.Now().Add(-tagGrace)
	var names []string
	s.mu.Lock()
	for name, t := range s.tags {
		if s.idx[t.Digest] == nil && t.Stored.Before(cutoff) {
			names = append(names, name)
			delete(s.tags, name)
			s.unindexTag(name, t.Digest)
		}
	}
	s.mu.Unlock()
	if len(names) == 0 {
		return 0
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, n := range names {
		_ = wb.Delete(tagKey(n))
	}
	if err := wb.Flush(); err != nil {
		s.log.Warn("drop stale tags", "err", err)
	}
	return len(names)
}

// GC runs the periodic sweep now: it writes batched access times, removes content not read for
// TTL, evicts down to the budget and above MinFree (further after a write ran out of space), and
// drops tags whose manifest is gone.
func (s *Store) GC(ctx context.Context) (GCResult, error) {
	res := GCResult{ByReason: map[string]int{}}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.isClosed() {
		return res, ErrClosed
	}
	if err := s.flushLocked(); err != nil {
		s.log.Warn("gc", "err", err)
	}
	if s.cfg.TTL > 0 {
		cutoff := time.Now().Add(-s.cfg.TTL).UnixNano()
		v, tags, _ := s.pickLocked(0, cutoff, false)
		s.evictLocked(&res, v, tags, ReasonTTL)
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	s.mu.RLock()
	over := s.used - s.maxSize
	s.mu.RUnlock()
	if over > 0 {
		v, tags, _ := s.pickLocked(over, 0, false)
		s.evictLocked(&res, v, tags, ReasonLRU)
	}
	s.freeSpaceLocked(&res)
	res.TagsDropped = s.dropDanglingTagsLocked()
	return res, nil
}

// freeSpaceLocked evicts until the filesystem is above MinFree; after a write failed for lack
// of space, until at least 5% of the filesystem is free even if MinFree is lower. The index's
// headroom comes on top of either (headroom.go), so that eviction also makes room when
// something else filled the filesystem.
func (s *Store) freeSpaceLocked(res *GCResult) {
	noSpace := s.noSpace.Swap(false)
	s.measureIndex()
	sp, err := statfs(s.dir)
	if err != nil {
		s.log.Warn("gc", "err", err)
		return
	}
	target, reason := s.minFree(sp), ReasonMinFree
	if noSpace && sp.Total/20 > target {
		target, reason = sp.Total/20, ReasonNoSpace
	}
	if deficit := target + s.headroom() - sp.Avail; deficit > 0 {
		v, tags, _ := s.pickLocked(deficit, 0, false)
		s.evictLocked(res, v, tags, reason)
	}
}

// evictLocked retires victims and unlinks their files at once (GC may hold wmu for that: it
// runs in the background and needs the space back before it measures again).
func (s *Store) evictLocked(res *GCResult, victims []*entry, tags []string, reason string) {
	s.unlink(s.retireLocked(victims, tags, reason))
	for _, v := range victims {
		res.Evicted++
		res.Bytes += v.size
		res.ByReason[reason]++
	}
	res.TagsDropped += len(tags)
}

// loop runs GC every GCInterval and when a write runs out of space, and between runs writes
// access times and keeps MinFree and the index's headroom: every second it looks at the free
// space, which something other than the store may have taken.
func (s *Store) loop() {
	defer close(s.loopDone)
	gc := time.NewTicker(s.cfg.GCInterval)
	defer gc.Stop()
	light := time.NewTicker(min(flushInterval, s.cfg.GCInterval))
	defer light.Stop()
	watch := time.NewTicker(freeSpaceWatch)
	defer watch.Stop()
	ctx := context.Background()
	for {
		select {
		case <-s.stop:
			return
		case <-gc.C:
			s.runGC(ctx)
		case <-s.kick:
			s.runGC(ctx)
		case <-light.C:
			s.lightGC(true)
		case <-watch.C:
			if sp, err := statfs(s.dir); err == nil && sp.Avail < s.minFree(sp)+s.headroom() {
				s.lightGC(false)
			}
		}
	}
}

// lightGC writes access times (with flush) and evicts for MinFree and the index's headroom.
func (s *Store) lightGC(flush bool) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.isClosed() {
		return
	}
	if flush {
		if err := s.flushLocked(); err != nil {
			s.log.Warn("flush access times", "err", err)
		}
	}
	var res GCResult
	res.ByReason = map[string]int{}
	s.freeSpaceLocked(&res)
	s.logGC(res)
}

func (s *Store) runGC(ctx context.Context) {
	res, err := s.GC(ctx)
	if err != nil && !errors.Is(err, ErrClosed) {
		s.log.Warn("gc", "err", err)
	}
	s.logGC(res)
}

func (s *Store) logGC(res GCResult) {
	if res.Evicted > 0 || res.TagsDropped > 0 {
		s.log.Info("gc", "evicted", res.Evicted, "bytes", res.Bytes, "by_reason", res.ByReason, "tags_dropped", res.TagsDropped)
	}
}

// The LRU list runs from the least recently used entry (s.lru.next) to the most recently used
// (s.lru.prev); Reader moves an entry to the recent end. Its links are guarded by lruMu, a leaf
// lock, so that readers, which hold mu only shared, can reorder it.

func (s *Store) lruPushBack(e *entry) {
	s.lruMu.Lock()
	e.prev, e.next = s.lru.prev, &s.lru
	s.lru.prev.next = e
	s.lru.prev = e
	s.lruMu.Unlock()
}

func (s *Store) lruRemove(e *entry) {
	s.lruMu.Lock()
	if e.next != nil {
		e.prev.next, e.next.prev = e.next, e.prev
		e.prev, e.next = nil, nil
	}
	s.lruMu.Unlock()
}
