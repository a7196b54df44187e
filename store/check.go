package store

import (
	"fmt"

	"github.com/opencontainers/go-digest"
)

// Check reports whether exactly size bytes were written (size < 0 skips this check) and hash
// to the digest, without making them durable or visible. A download spool uses it to release
// the final bytes to its clients as soon as they are known good, before Commit's fsync.
func (w *Writer) Check(size int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if n := w.written.Load(); size >= 0 && n != size {
		return fmt.Errorf("%w: %s: got %d bytes, expected %d", ErrDigestMismatch, w.d, n, size)
	}
	if got := digest.NewDigestFromBytes(w.d.Algorithm(), w.h.sum()); got != w.d {
		return fmt.Errorf("%w: expected %s, got %s", ErrDigestMismatch, w.d, got)
	}
	return nil
}
