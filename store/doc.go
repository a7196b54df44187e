// Package store is shoal's node-local, content-addressed cache: blobs and manifests by digest,
// tag resolutions, and the budget that keeps them from filling the disk.
//
// # Layout
//
// Large content lives in files named by digest, Dir/blobs/<algorithm>/<first two hex
// digits>/<hex>, written to Dir/tmp first, hashed while written, checked, fsynced and renamed
// into place. Badger (Dir/index) holds the index: one small record per piece of content (size,
// media type, created and accessed times, pinned), the references a manifest makes, tag
// resolutions, and small content (≤ InlineMax) inline. Badger never holds large values: it does
// not give their space back after a delete. At Open the whole index is loaded into memory, so
// Stat and Reader cost a map lookup; Badger is the durable copy.
//
// # Guarantees
//
//   - Content becomes visible only after its bytes hashed to its digest and its file was
//     fsynced and renamed; a reader never sees partial or unverified content.
//   - Crash safety: a commit renames the file before it writes the record, an eviction renames
//     the file into Dir/tmp before it deletes the record. Open always empties Dir/tmp; unless
//     the last Close left its clean-close mark in Badger (a kill -9 does not), it also lists the
//     content files and removes files without records and records without files (inline
//     content has record and bytes in one Badger batch), so what remains is complete. A file
//     removed behind the store's back after a clean Close is noticed when read (its record is
//     dropped, the caller sees ErrNotFound) or by Verify.
//   - Content files a Reader or Writer of this process holds open are never evicted (the
//     evictor lists /proc/self/fd, because Reader returns a plain *os.File for sendfile and
//     cannot see its Close). Delete and Verify still remove such content from the index; the
//     open file stays readable to its end.
//   - Disk full, over quota or read-only: the failing call returns an error wrapping ErrNoSpace,
//     eviction runs in the background, and this is logged at most once a minute. The daemon
//     then passes content through without caching.
//   - Content never takes the index's headroom (four Badger memtables plus the index's size,
//     see headroom.go): Badger writes through memory maps of sparse files, and on a full
//     filesystem such a write is a SIGBUS that kills the process, not an error. A content write
//     that would take it fails with ErrNoSpace, as on a full disk.
//
// # Budget and eviction
//
// MaxSize (default: half of the filesystem's available space plus what the store already
// holds, computed at Open) caps the bytes of content; MinFree (default 10% of the filesystem)
// plus the index's headroom keeps the filesystem from filling. A commit that would break either
// evicts least recently used content first ("lru" / "min-free"), or fails with ErrNoSpace if
// not enough can be evicted. Access times are updated in memory on every Reader call and written to Badger in
// batches (every 30 s and at Close). The LRU order is a list that reads reorder, so an eviction
// costs in proportion to its victims, not to the index. Every GCInterval a sweep removes content not read for TTL
// ("ttl"), re-applies the budget and MinFree, and drops tags whose manifest is gone. Pinned
// content, content referenced through SetRefs by pinned content, and open content are never
// evicted.
//
// # Coherence between manifests and blobs
//
// The store keeps a manifest when blobs it references are evicted: content is addressed by
// digest, so the daemon refetches a missing blob on demand (from peers or the upstream) and
// verifies it like any other. Evicting the manifest as well would turn a cheap blob refetch
// into a tag revalidation and make offline pulls by tag fail earlier, not later. What the
// store does keep coherent: when a manifest leaves the store, the tags resolving to it and its
// reference list go with it, so a tag never points to a manifest the node cannot serve; and
// pinning a manifest protects the content it references (transitively, for indexes).
//
// # What it must never do
//
// The store knows nothing of HTTP, registries or peers. It never stores or returns bytes that
// were not verified against their digest, never holds large values in Badger, and never
// deletes files outside its directory.
package store
