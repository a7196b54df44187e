package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Ingest starts writing content whose digest is not known yet (a push whose client names the
// digest only at the end). The bytes are hashed with alg as they arrive; CommitAs checks them
// against the digest the client finally names. Until then nothing is visible, and Abort, Close
// or the next Open remove the temporary file. Its bytes are written back to disk as they arrive,
// so that Commit's fsync, which the client waits for, finds little left.
func (s *Store) Ingest(ctx context.Context, alg digest.Algorithm, mediaType string) (*Writer, error) {
	if !alg.Available() {
		return nil, fmt.Errorf("store: ingest: digest algorithm %q is not available", alg)
	}
	// A placeholder digest of the right algorithm; CommitAs replaces it before the check.
	// The client waits for Commit: write back as the bytes arrive.
	return s.newWriter(ctx, digest.NewDigestFromEncoded(alg, strings.Repeat("0", alg.Size()*2)), mediaType, true)
}

// CommitAs is Commit for a writer from Ingest. When d uses another algorithm than the writer
// hashed with (a client that named a sha512 digest only at the end), the bytes written are read
// back and hashed again with d's algorithm. On a mismatch it returns ErrDigestMismatch and
// removes the temporary file.
func (w *Writer) CommitAs(ctx context.Context, d digest.Digest, size int64) error {
	if err := d.Validate(); err != nil {
		w.Abort()
		return fmt.Errorf("%w: %q: %w", ErrDigestMismatch, d, err)
	}
	w.mu.Lock()
	if w.state == writing && d.Algorithm() != w.d.Algorithm() {
		w.h.stop()
		h := d.Algorithm().Hash()
		if _, err := io.Copy(h, io.NewSectionReader(w.f, 0, w.written.Load())); err != nil {
			w.abortLocked()
			w.mu.Unlock()
			return w.s.ioErr("rehash "+d.String(), err)
		}
		w.h = &hasher{h: h, stopped: true, done: closedChan}
	}
	if w.state == writing {
		w.d = d
	}
	w.mu.Unlock()
	return w.Commit(ctx, size)
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// DeleteTag forgets a tag; ErrNotFound if it is not known.
func (s *Store) DeleteTag(ctx context.Context, name string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.RLock()
	_, ok := s.tags[name]
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if !ok {
		return fmt.Errorf("%w: tag %s", ErrNotFound, name)
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(tagKey(name)) }); err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
		return s.dbErr("delete tag "+name, err)
	}
	s.mu.Lock()
	if old, ok := s.tags[name]; ok {
		s.unindexTag(name, old.Digest)
		delete(s.tags, name)
	}
	s.mu.Unlock()
	return nil
}

// TagNames returns the names of the known tags that start with prefix, sorted.
func (s *Store) TagNames(prefix string) []string {
	s.mu.RLock()
	var out []string
	for name := range s.tags {
		if strings.HasPrefix(name, prefix) {
			out = append(out, name)
		}
	}
	s.mu.RUnlock()
	slices.Sort(out)
	return out
}
