package store

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestWriteBufferHashesInPlace: content written through Buffer/WriteBuffer, mixed with plain
// Writes, commits under its digest and reads back whole; the same bytes under another digest
// do not commit. The buffers the writer took over are recycled, so later buffers are reused
// ones: the content must still be right.
func TestWriteBufferHashesInPlace(t *testing.T) {
	t.Parallel()
	data := make([]byte, 5*BufferSize+12345)
	rand.NewChaCha8([32]byte{3}).Read(data)
	write := func(s *Store, d digest.Digest) *Writer {
		w, err := s.Writer(t.Context(), d, "")
		if err != nil {
			t.Fatal(err)
		}
		rest := data
		for i := 0; len(rest) > 0; i++ {
			if i%3 == 2 { // a plain Write now and then
				n := min(len(rest), 1000)
				if _, err := w.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
				continue
			}
			b := w.Buffer()
			n := copy(b[:min(cap(b), len(rest))], rest)
			if _, err := w.WriteBuffer(b[:n]); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		return w
	}
	s := newStore(t)
	d := digest.FromBytes(data)
	w := write(s, d)
	if err := w.Commit(t.Context(), int64(len(data))); err != nil {
		t.Fatalf("commit: %v", err)
	}
	w.Close()
	rc, _, err := s.Reader(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data) {
		t.Fatal("stored content differs from what was written")
	}

	wrong := digest.FromString("something else")
	w = write(s, wrong)
	defer w.Close()
	if err := w.Commit(t.Context(), int64(len(data))); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("commit under the wrong digest: %v, want ErrDigestMismatch", err)
	}
	if _, _, err := s.Reader(t.Context(), wrong); !errors.Is(err, ErrNotFound) {
		t.Fatalf("wrong content visible: %v", err)
	}
}
