package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// Content of unknown digest: visible only after CommitAs with the digest it hashes to (sha256
// as hashed, or sha512 by hashing the bytes again); a wrong digest commits nothing and leaves
// no temporary file.
func TestIngestCommitAs(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	data := []byte("pushed bytes whose digest the client names at the end")
	cases := []struct {
		name string
		d    digest.Digest
		ok   bool
	}{
		{"sha256", digest.SHA256.FromBytes(data), true},
		{"sha512 rehashed", digest.SHA512.FromBytes(data), true},
		{"wrong", digest.SHA256.FromString("other"), false},
		{"wrong sha512", digest.SHA512.FromString("other"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, err := s.Ingest(ctx, digest.SHA256, "application/octet-stream")
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			err = w.CommitAs(ctx, tc.d, int64(len(data)))
			if tc.ok != (err == nil) || (!tc.ok && !errors.Is(err, ErrDigestMismatch)) {
				t.Fatalf("CommitAs: %v", err)
			}
			_, serr := s.Stat(ctx, tc.d)
			if tc.ok != (serr == nil) {
				t.Fatalf("visible=%v after CommitAs(%v)", serr == nil, err)
			}
			if es, _ := os.ReadDir(filepath.Join(s.dir, "tmp")); len(es) != 0 {
				t.Fatalf("temporary files left: %d", len(es))
			}
		})
	}
	if err := s.PutTag(ctx, "shoal.local/a:v1", Tag{Digest: cases[0].d}); err != nil {
		t.Fatal(err)
	}
	if got := s.TagNames("shoal.local/a:"); len(got) != 1 {
		t.Fatalf("TagNames: %v", got)
	}
	if err := s.DeleteTag(ctx, "shoal.local/a:v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetTag(ctx, "shoal.local/a:v1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted tag: %v", err)
	}
	if err := s.DeleteTag(ctx, "shoal.local/a:v1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}
