package store

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
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

// pieces yields its data in uneven pieces of up to 40 000 bytes (as an HTTP body does), then
// err (io.EOF if nil).
type pieces struct {
	data []byte
	i    int
	err  error
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(p.data) == 0 {
		if p.err != nil {
			return 0, p.err
		}
		return 0, io.EOF
	}
	p.i++
	n := copy(b[:min(len(b), 1000+p.i*7919%39000)], p.data)
	p.data = p.data[n:]
	return n, nil
}

// TestReadFromVerifies: io.Copy into a Writer (its ReadFrom), from Writer (push copies between
// nodes) or Ingest (a push upload, written back as it goes), over more than two writeback
// chunks, stores the exact bytes; the same stream with one byte flipped fails the digest check,
// leaves nothing visible and no temporary file; a stream that breaks returns its error with
// the bytes taken so far.
func TestReadFromVerifies(t *testing.T) {
	t.Parallel()
	for _, ingest := range []bool{false, true} {
		t.Run(map[bool]string{false: "Writer", true: "Ingest"}[ingest], func(t *testing.T) {
			t.Parallel()
			testReadFromVerifies(t, ingest)
		})
	}
}

func testReadFromVerifies(t *testing.T, ingest bool) {
	data := make([]byte, 2*writebackChunk+3*BufferSize+777)
	rand.NewChaCha8([32]byte{4}).Read(data)
	d := digest.FromBytes(data)
	s := newStore(t)
	tmpEmpty := func() {
		t.Helper()
		es, err := os.ReadDir(s.tmpDir)
		if err != nil || len(es) != 0 {
			t.Fatalf("temporary files left: %v %v", es, err)
		}
	}

	bad := bytes.Clone(data)
	bad[writebackChunk+12345] ^= 0x40
	open := func() *Writer {
		t.Helper()
		var w *Writer
		var err error
		if ingest {
			w, err = s.Ingest(t.Context(), digest.SHA256, "")
		} else {
			w, err = s.Writer(t.Context(), d, "")
		}
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	commit := func(w *Writer, size int64) error {
		if ingest {
			return w.CommitAs(t.Context(), d, size)
		}
		return w.Commit(t.Context(), size)
	}
	w := open()
	if n, err := io.Copy(w, &pieces{data: bad}); err != nil || n != int64(len(bad)) {
		t.Fatalf("copy: %d, %v", n, err)
	}
	if err := commit(w, int64(len(bad))); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("commit of a corrupted copy: %v, want ErrDigestMismatch", err)
	}
	w.Close()
	if _, _, err := s.Reader(t.Context(), d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("corrupted content visible: %v", err)
	}
	tmpEmpty()

	broken := errors.New("client went away")
	w = open()
	n, err := io.Copy(w, &pieces{data: data[:BufferSize+5], err: broken})
	if !errors.Is(err, broken) || n != BufferSize+5 || w.Written() != n {
		t.Fatalf("broken stream: %d bytes (written %d), %v", n, w.Written(), err)
	}
	w.Close()
	tmpEmpty()

	w = open()
	if n, err := io.Copy(w, &pieces{data: data}); err != nil || n != int64(len(data)) {
		t.Fatalf("copy: %d, %v", n, err)
	}
	if err := commit(w, int64(len(data))); err != nil {
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
	tmpEmpty()
}
