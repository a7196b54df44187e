package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Badger key prefixes. Content records are small and fixed-shape so that Open can load 100k of
// them quickly; inline bytes live under their own prefix so that loading the index never reads
// them.
const (
	prefixContent = "c/"      // digest -> content record
	prefixInline  = "d/"      // digest -> inline bytes (small content)
	prefixRefs    = "r/"      // manifest digest -> referenced digests, newline separated
	prefixTag     = "t/"      // registry/repo:tag -> tag record (JSON)
	keyClean      = "m/clean" // present while the store is closed cleanly
)

func contentKey(d digest.Digest) []byte { return []byte(prefixContent + string(d)) }
func inlineKey(d digest.Digest) []byte  { return []byte(prefixInline + string(d)) }
func refsKey(d digest.Digest) []byte    { return []byte(prefixRefs + string(d)) }
func tagKey(name string) []byte         { return []byte(prefixTag + name) }

// entry is the in-memory index record of one piece of committed content. Badger holds the
// durable copy; the map in Store is what Stat and Reader consult, so they cost a map lookup.
type entry struct {
	d         digest.Digest
	size      int64
	mediaType string
	created   int64 // unix nanoseconds
	inline    bool
	pinned    bool         // guarded by Store.mu (written under Store.wmu as well)
	accessed  atomic.Int64 // unix nanoseconds; updated by readers without locks
	dirty     atomic.Bool  // accessed changed since the record was last written
	// prev and next link the entry into the store's LRU list (guarded by Store.lruMu); nil
	// when it is not indexed.
	prev, next *entry
}

func (e *entry) info() Info {
	return Info{
		Digest:    e.d,
		Size:      e.size,
		MediaType: e.mediaType,
		Created:   time.Unix(0, e.created),
		Accessed:  time.Unix(0, e.accessed.Load()),
		Pinned:    e.pinned,
	}
}

const (
	recVersion  = 1
	flagInline  = 1
	flagPinned  = 2
	maxMTLength = 1 << 10
)

// record encodes e as: version, flags, uvarint size, varint created, varint accessed,
// uvarint len(mediaType), mediaType.
func (e *entry) record() []byte {
	b := make([]byte, 0, 2+3*binary.MaxVarintLen64+len(e.mediaType)+binary.MaxVarintLen16)
	var flags byte
	if e.inline {
		flags |= flagInline
	}
	if e.pinned {
		flags |= flagPinned
	}
	b = append(b, recVersion, flags)
	b = binary.AppendUvarint(b, uint64(e.size))
	b = binary.AppendVarint(b, e.created)
	b = binary.AppendVarint(b, e.accessed.Load())
	b = binary.AppendUvarint(b, uint64(len(e.mediaType)))
	return append(b, e.mediaType...)
}

func decodeRecord(d digest.Digest, b []byte) (*entry, error) {
	if len(b) < 2 || b[0] != recVersion {
		return nil, errors.New("unknown record version")
	}
	e := &entry{d: d, inline: b[1]&flagInline != 0, pinned: b[1]&flagPinned != 0}
	b = b[2:]
	size, n := binary.Uvarint(b)
	if n <= 0 || size > 1<<62 {
		return nil, errors.New("bad size")
	}
	b = b[n:]
	created, n := binary.Varint(b)
	if n <= 0 {
		return nil, errors.New("bad created time")
	}
	b = b[n:]
	accessed, n := binary.Varint(b)
	if n <= 0 {
		return nil, errors.New("bad access time")
	}
	b = b[n:]
	mtLen, n := binary.Uvarint(b)
	if n <= 0 || mtLen > maxMTLength || uint64(len(b)-n) != mtLen {
		return nil, errors.New("bad media type")
	}
	e.size, e.created, e.mediaType = int64(size), created, string(b[n:])
	e.accessed.Store(accessed)
	return e, nil
}

// tagRecord is a Tag as Badger keeps it, with the time the store recorded it (for the grace
// period before a tag whose manifest never arrived is dropped).
type tagRecord struct {
	Tag
	Stored time.Time `json:"stored"`
}

func encodeRefs(refs []digest.Digest) []byte {
	var sb strings.Builder
	for i, r := range refs {
		if i > 0 {
			sb.WriteByte('\n')
		}
		sb.WriteString(string(r))
	}
	return []byte(sb.String())
}

func decodeRefs(b []byte) []digest.Digest {
	if len(b) == 0 {
		return nil
	}
	parts := strings.Split(string(b), "\n")
	out := make([]digest.Digest, 0, len(parts))
	for _, p := range parts {
		out = append(out, digest.Digest(p))
	}
	return out
}

// openBadger opens the index with options sized for a metadata database: small memtables and
// caches (the daemon shares the node with workloads; the memtable size also sets the free space
// content leaves the index, see headroom.go), values kept in the LSM tree (none are larger than
// the inline threshold; the value threshold must stay below Badger's batch limit, 15% of a
// memtable), and no value-log growth to reclaim.
func openBadger(dir string, log *slog.Logger) (*badger.DB, error) {
	opts := badger.DefaultOptions(dir).
		WithLogger(badgerLogger{log}).
		WithMemTableSize(memTableSize).
		WithValueThreshold(256 << 10).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithNumCompactors(2).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(16 << 20).
		WithMetricsEnabled(false).
		WithNumVersionsToKeep(1).
		WithDetectConflicts(false)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open index %s: %w", dir, err)
	}
	return db, nil
}

// setCleanMark records that files and records pair up: Close writes it last.
func setCleanMark(db *badger.DB) error {
	err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(keyClean), []byte{1}) })
	if err != nil {
		return fmt.Errorf("record clean close: %w", err)
	}
	return nil
}

// takeCleanMark reports whether the store was closed cleanly and removes the mark, durably, so
// that a crash from now on is noticed at the next Open.
func takeCleanMark(db *badger.DB) (bool, error) {
	clean := false
	err := db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get([]byte(keyClean)); err != nil {
			if errors.Is(err, badger.ErrKeyNotFound) {
				return nil
			}
			return err
		}
		clean = true
		return txn.Delete([]byte(keyClean))
	})
	if err == nil && clean {
		err = db.Sync()
	}
	if err != nil {
		return false, fmt.Errorf("read clean-close mark: %w", err)
	}
	return clean, nil
}

// loaded is what Open reads from Badger.
type loaded struct {
	entries []*entry
	bad     [][]byte // undecodable content records, to delete
	inline  map[digest.Digest]bool
	refs    map[digest.Digest][]digest.Digest
	tags    map[string]tagRecord
}

func loadIndex(ctx context.Context, db *badger.DB) (*loaded, error) {
	l := &loaded{inline: map[digest.Digest]bool{}, refs: map[digest.Digest][]digest.Digest{}, tags: map[string]tagRecord{}}
	err := db.View(func(txn *badger.Txn) error {
		err := scan(txn, prefixContent, true, func(item *badger.Item) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			d := digest.Digest(item.Key()[len(prefixContent):])
			var e *entry
			err := item.Value(func(v []byte) error {
				var err error
				e, err = decodeRecord(d, v)
				return err
			})
			if err != nil || !validDigest(d) {
				l.bad = append(l.bad, item.KeyCopy(nil))
				return nil
			}
			l.entries = append(l.entries, e)
			return nil
		})
		if err != nil {
			return err
		}
		_ = scan(txn, prefixInline, false, func(item *badger.Item) error {
			l.inline[digest.Digest(item.Key()[len(prefixInline):])] = true
			return nil
		})
		_ = scan(txn, prefixRefs, true, func(item *badger.Item) error {
			d := digest.Digest(item.Key()[len(prefixRefs):])
			return item.Value(func(v []byte) error { l.refs[d] = decodeRefs(v); return nil })
		})
		return scan(txn, prefixTag, true, func(item *badger.Item) error {
			name := string(item.Key()[len(prefixTag):])
			var t tagRecord
			if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &t) }); err == nil {
				l.tags[name] = t
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load index: %w", err)
	}
	return l, nil
}

// validDigest is digest.Digest.Validate for the algorithms the store accepts, without the
// regular expression that made it the largest cost of opening a store of 100k blobs.
func validDigest(d digest.Digest) bool {
	alg, enc, ok := strings.Cut(string(d), ":")
	return ok && validEncoded(digest.Algorithm(alg), enc)
}

func validEncoded(alg digest.Algorithm, enc string) bool {
	if !alg.Available() || len(enc) != alg.Size()*2 {
		return false
	}
	for i := 0; i < len(enc); i++ {
		if c := enc[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// scan calls fn for every key with the prefix.
func scan(txn *badger.Txn, prefix string, values bool, fn func(*badger.Item) error) error {
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: values, PrefetchSize: 256, Prefix: []byte(prefix)})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		if err := fn(it.Item()); err != nil {
			return err
		}
	}
	return nil
}

// badgerLogger routes Badger's logging to slog; Badger's info chatter goes to debug.
type badgerLogger struct{ log *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.log.Error(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.log.Warn(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
func (b badgerLogger) Infof(f string, a ...any)  { b.debug(f, a...) }
func (b badgerLogger) Debugf(f string, a ...any) { b.debug(f, a...) }
func (b badgerLogger) debug(f string, a ...any) {
	if b.log.Enabled(context.Background(), slog.LevelDebug) {
		b.log.Debug(strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
	}
}
