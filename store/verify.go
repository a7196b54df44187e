package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/opencontainers/go-digest"
)

// Verify re-hashes every piece of content and removes (and reports) any whose bytes no longer
// match its digest or whose file is gone. It reads at disk speed and can be cancelled through
// ctx; content committed while it runs is not checked.
func (s *Store) Verify(ctx context.Context) (VerifyResult, error) {
	var res VerifyResult
	s.mu.RLock()
	entries := make([]*entry, 0, len(s.idx))
	for _, e := range s.idx {
		entries = append(entries, e)
	}
	s.mu.RUnlock()
	buf := make([]byte, 1<<20)
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		n, got, err := s.hashContent(e, buf)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if s.dropIfSame(e, ReasonMissing) {
				s.log.Warn("verify: content file is missing", "digest", e.d)
				res.Missing = append(res.Missing, e.d)
			}
			continue
		case err != nil:
			return res, fmt.Errorf("store: verify %s: %w", e.d, err)
		}
		res.Checked++
		res.Bytes += n
		if got != e.d || n != e.size {
			if s.dropIfSame(e, ReasonCorrupt) {
				s.verifyFailures.Add(1)
				s.log.Error("verify: content does not match its digest; removed", "digest", e.d, "got", got,
					"size", n, "expected_size", e.size)
				res.Corrupt = append(res.Corrupt, e.d)
			}
		}
	}
	return res, nil
}

func (s *Store) hashContent(e *entry, buf []byte) (int64, digest.Digest, error) {
	dg := e.d.Algorithm().Digester()
	if e.inline {
		s.mu.RLock()
		if s.closed {
			s.mu.RUnlock()
			return 0, "", ErrClosed
		}
		data, err := s.loadInline(e.d)
		s.mu.RUnlock()
		if err != nil {
			if s.indexed(e) {
				return 0, "", os.ErrNotExist
			}
			return 0, e.d, nil // removed meanwhile: nothing to report
		}
		dg.Hash().Write(data)
		return int64(len(data)), dg.Digest(), nil
	}
	f, err := os.Open(s.blobPath(e.d))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !s.indexed(e) {
			return e.size, e.d, nil // evicted meanwhile
		}
		return 0, "", err
	}
	defer f.Close()
	n, err := io.CopyBuffer(dg.Hash(), f, buf)
	if err != nil {
		return n, "", err
	}
	return n, dg.Digest(), nil
}

func (s *Store) indexed(e *entry) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.idx[e.d] == e
}
