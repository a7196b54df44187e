package store

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Verify finds bit rot and tampering in files and inline content, removes it and reports it.
func TestVerifyRemovesCorruptContent(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	ev := subscribe(t, s)
	var ds []digest.Digest
	for _, b := range blobs(t, 6, 200_000) {
		ds = append(ds, put(t, s, b))
	}
	man := []byte(`{"schemaVersion":2}`)
	md := digest.FromBytes(man)
	if err := s.PutSmall(ctx, md, "application/json", man); err != nil {
		t.Fatal(err)
	}
	// Flip one bit in place, truncate another file, delete a third, rewrite the inline bytes.
	f, err := os.OpenFile(s.blobPath(ds[0]), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, 123_456)
	f.WriteAt([]byte{b[0] ^ 0x10}, 123_456)
	f.Close()
	if err := os.Truncate(s.blobPath(ds[1]), 1000); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(s.blobPath(ds[2])); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(inlineKey(md), []byte(`{"schemaVersion":3}`)) }); err != nil {
		t.Fatal(err)
	}

	res, err := s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(res.Corrupt)
	want := []digest.Digest{ds[0], ds[1], md}
	slices.Sort(want)
	if !slices.Equal(res.Corrupt, want) || !slices.Equal(res.Missing, []digest.Digest{ds[2]}) || res.Checked != 6 {
		t.Fatalf("Verify = %+v; want corrupt %v, missing %v, 6 checked", res, want, ds[2])
	}
	for _, d := range append(want, ds[2]) {
		if present(t, s, d) {
			t.Fatalf("%s still listed after Verify", d)
		}
		if _, err := os.Stat(s.blobPath(d)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("file of bad content %s still on disk", d)
		}
	}
	for _, d := range ds[3:] {
		if !present(t, s, d) {
			t.Fatalf("good content %s removed", d)
		}
	}
	st := s.Stats()
	if st.VerifyFailures != 3 || st.Evictions[ReasonCorrupt] != 3 || st.Evictions[ReasonMissing] != 1 || st.Blobs != 3 {
		t.Fatalf("Stats = %+v", st)
	}
	if len(ev.evicted(t, 4)) != 4 {
		t.Fatal("missing eviction events")
	}
	if res, err := s.Verify(ctx); err != nil || len(res.Corrupt)+len(res.Missing) != 0 || res.Checked != 3 {
		t.Fatalf("second Verify = %+v, %v", res, err)
	}
}

// Open pairs files with records after an unclean stop: temporary files, files without records,
// stray names and records without files all go; intact content stays.
func TestOpenCleansOrphans(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	s := openStore(t, testConfig(dir))
	var ds []digest.Digest
	for _, b := range blobs(t, 5, 10_000) {
		ds = append(ds, put(t, s, b))
	}
	man := []byte(`{"m":1}`)
	md := digest.FromBytes(man)
	s.PutSmall(ctx, md, "application/json", man)
	s.PutTag(ctx, "r/x:1", Tag{Digest: md})
	blobDir, tmpDir := s.blobDir, s.tmpDir
	pathOf := s.blobPath
	s.abandon() // as if killed: no clean-close mark

	// Leftovers of crashes and strangers.
	os.WriteFile(filepath.Join(tmpDir, "w-123"), []byte("partial upload"), 0o600)
	os.WriteFile(filepath.Join(tmpDir, "x-"+ds[0].Encoded()), []byte("evicted, not yet unlinked"), 0o600)
	orphan := digest.FromString("file without record")
	os.MkdirAll(filepath.Dir(pathOf(orphan)), 0o700)
	os.WriteFile(pathOf(orphan), []byte("file without record"), 0o600)
	os.WriteFile(filepath.Join(filepath.Dir(pathOf(ds[1])), "not-a-digest"), nil, 0o600)
	os.MkdirAll(filepath.Join(blobDir, "md5", "ab"), 0o700)
	os.Remove(pathOf(ds[2])) // record without file

	s = openStore(t, testConfig(dir))
	if left := dirEntries(t, s.tmpDir); len(left) != 0 {
		t.Fatalf("tmp after Open: %v", left)
	}
	for _, p := range []string{pathOf(orphan), filepath.Join(filepath.Dir(pathOf(ds[1])), "not-a-digest"), filepath.Join(blobDir, "md5")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s survived Open", p)
		}
	}
	if present(t, s, ds[2]) {
		t.Fatal("record without file survived Open")
	}
	for _, d := range []digest.Digest{ds[0], ds[1], ds[3], ds[4], md} {
		if !present(t, s, d) {
			t.Fatalf("intact content %s lost", d)
		}
	}
	if _, err := s.GetTag(ctx, "r/x:1"); err != nil {
		t.Fatal(err)
	}
	assertConsistent(t, s)

	// After a clean Close, Open trusts the pairing and does not list the files; a file removed
	// behind the store's back is noticed when it is read, and its record dropped.
	s.Close()
	os.Remove(pathOf(ds[3]))
	s = openStore(t, testConfig(dir))
	if _, _, err := s.Reader(ctx, ds[3]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Reader of a vanished file = %v, want ErrNotFound", err)
	}
	if present(t, s, ds[3]) {
		t.Fatal("record of a vanished file kept after a read failed")
	}
	if st := s.Stats(); st.Evictions[ReasonMissing] != 1 {
		t.Fatalf("Evictions = %v", st.Evictions)
	}
	assertConsistent(t, s)
}

// abandon stops s without the clean-close mark, as a crash would, so that the next Open pairs
// files with records.
func (s *Store) abandon() {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.loopDone
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.events.close()
		s.db.Close()
		s.lock.Close()
	})
}

// assertConsistent checks the invariants a crash must not break: every listed piece of content
// reads back and hashes to its digest, every content file has a record, tmp is empty, and the
// byte count matches.
func assertConsistent(t testing.TB, s *Store) {
	t.Helper()
	ctx := t.Context()
	listed := map[digest.Digest]bool{}
	var used int64
	err := s.Walk(ctx, func(i Info) error {
		listed[i.Digest] = true
		used += i.Size
		rc, _, err := s.Reader(ctx, i.Digest)
		if err != nil {
			t.Fatalf("listed %s does not open: %v", i.Digest, err)
		}
		defer rc.Close()
		h := i.Digest.Algorithm().Digester()
		n, err := h.Hash().Write(mustReadAll(t, rc))
		if err != nil || int64(n) != i.Size || h.Digest() != i.Digest {
			t.Fatalf("listed %s reads %d bytes hashing to %s (size %d)", i.Digest, n, h.Digest(), i.Size)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	files, junk, err := listBlobs(s.blobDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(junk) != 0 {
		t.Fatalf("junk in blobs: %v", junk)
	}
	for d := range files {
		if !listed[d] {
			t.Fatalf("file %s has no record", d)
		}
	}
	if left := dirEntries(t, s.tmpDir); len(left) != 0 {
		t.Fatalf("tmp holds %v", left)
	}
	if st := s.Stats(); st.BytesUsed != used || st.Blobs != int64(len(listed)) {
		t.Fatalf("Stats %+v, want %d bytes in %d blobs", st, used, len(listed))
	}
}

func mustReadAll(t testing.TB, f interface{ Read([]byte) (int, error) }) []byte {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return out
		}
	}
}
