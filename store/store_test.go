package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// testLogger sends the store's log to the test log, so that failures show what it said.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testConfig(dir string) Config {
	c := DefaultConfig()
	c.Dir = dir
	c.MinFree = ""
	c.MaxSize = 1 << 40
	return c
}

func openStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := Open(context.Background(), cfg, testLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newStore(t testing.TB) *Store { return openStore(t, testConfig(t.TempDir())) }

func randomBlob(t testing.TB, n int) ([]byte, digest.Digest) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b, digest.FromBytes(b)
}

// put writes data through a Writer and commits it.
func put(t testing.TB, s *Store, data []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	w, err := s.Writer(context.Background(), d, "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(context.Background(), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	return d
}

func readAll(t testing.TB, s *Store, d digest.Digest) []byte {
	t.Helper()
	rc, _, err := s.Reader(context.Background(), d)
	if err != nil {
		t.Fatalf("Reader(%s): %v", d, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func dirEntries(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func TestCommitThenRead(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	data, d := randomBlob(t, 3<<20+17)

	w, err := s.Writer(ctx, d, "application/octet-stream")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for chunk := data; len(chunk) > 0; {
		n := min(len(chunk), 64<<10)
		if _, err := w.Write(chunk[:n]); err != nil {
			t.Fatal(err)
		}
		chunk = chunk[n:]
	}
	if _, err := s.Stat(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat before Commit: err = %v, want ErrNotFound (content must not be visible before commit)", err)
	}
	if _, _, err := s.Reader(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Reader before Commit: err = %v, want ErrNotFound", err)
	}
	if err := w.Commit(ctx, int64(len(data))); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	info, err := s.Stat(ctx, d)
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if info.Digest != d || info.Size != int64(len(data)) || info.MediaType != "application/octet-stream" || info.Created.IsZero() {
		t.Fatalf("Stat = %+v", info)
	}
	rc, rinfo, err := s.Reader(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, ok := rc.(*os.File); !ok {
		t.Fatalf("Reader returned %T, want *os.File so that net/http can use sendfile", rc)
	}
	if rinfo.Size != info.Size {
		t.Fatalf("Reader info %+v", rinfo)
	}
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes (err %v), want the %d committed bytes", len(got), err, len(data))
	}
	if _, err := rc.Seek(1000, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Blobs != 1 || st.BytesUsed != int64(len(data)) || st.Hits != 1 || st.Misses != 1 {
		t.Fatalf("Stats = %+v, want 1 blob of %d bytes, 1 hit, 1 miss", st, len(data))
	}
	if left := dirEntries(t, s.tmpDir); len(left) != 0 {
		t.Fatalf("tmp dir after commit holds %v", left)
	}
}

func TestCommitRejectsWrongBytes(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	data, d := randomBlob(t, 100_000)
	for _, tc := range []struct {
		name  string
		write []byte
		size  int64
	}{
		{"flipped byte", append(append([]byte{}, data[:500]...), append([]byte{data[500] ^ 1}, data[501:]...)...), int64(len(data))},
		{"truncated", data[:len(data)-1], int64(len(data))},
		{"size differs", data, int64(len(data)) + 1},
		{"extra byte", append(append([]byte{}, data...), 0), int64(len(data)) + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := s.Writer(ctx, d, "")
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if _, err := w.Write(tc.write); err != nil {
				t.Fatal(err)
			}
			if err := w.Commit(ctx, tc.size); !errors.Is(err, ErrDigestMismatch) {
				t.Fatalf("Commit = %v, want ErrDigestMismatch", err)
			}
			if _, err := s.Stat(ctx, d); !errors.Is(err, ErrNotFound) {
				t.Fatalf("after mismatch Stat err = %v, want ErrNotFound", err)
			}
			if left := dirEntries(t, s.tmpDir); len(left) != 0 {
				t.Fatalf("temporary file left after mismatch: %v", left)
			}
		})
	}
	if err := s.PutSmall(ctx, d, "application/json", data[1:]); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("PutSmall wrong bytes = %v, want ErrDigestMismatch", err)
	}
	if _, err := s.Writer(ctx, "sha256:nothex", ""); err == nil {
		t.Fatal("Writer accepted an invalid digest")
	}
	if _, err := s.Writer(ctx, "md5:d41d8cd98f00b204e9800998ecf8427e", ""); err == nil {
		t.Fatal("Writer accepted an unsupported algorithm")
	}
	if st := s.Stats(); st.Blobs != 0 || st.BytesUsed != 0 {
		t.Fatalf("Stats after rejected content = %+v", st)
	}
}

// Readers follow a download as it grows, as the daemon's spool does, and keep reading after the
// commit until the writer is closed.
func TestReadersFollowGrowingWriter(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	data, d := randomBlob(t, 4<<20+123)
	w, err := s.Writer(ctx, d, "")
	if err != nil {
		t.Fatal(err)
	}
	progress := make(chan struct{}, 1)
	const readers = 4
	var wg sync.WaitGroup
	results := make([][]byte, readers)
	errs := make([]error, readers)
	var progMu sync.Mutex
	conds := sync.NewCond(&progMu)
	done := false
	for i := range readers {
		wg.Go(func() {
			var got []byte
			buf := make([]byte, 37_000+i*1000)
			for int64(len(got)) < int64(len(data)) {
				n, err := w.ReadAt(buf, int64(len(got)))
				got = append(got, buf[:n]...)
				if err == io.EOF && n == 0 {
					progMu.Lock()
					for !done && w.Written() <= int64(len(got)) {
						conds.Wait()
					}
					progMu.Unlock()
					continue
				}
				if err != nil && err != io.EOF {
					errs[i] = err
					return
				}
			}
			results[i] = got
		})
	}
	for chunk := data; len(chunk) > 0; {
		n := min(len(chunk), 100_000)
		if _, err := w.Write(chunk[:n]); err != nil {
			t.Fatal(err)
		}
		chunk = chunk[n:]
		progMu.Lock()
		conds.Broadcast()
		progMu.Unlock()
		select {
		case progress <- struct{}{}:
		default:
		}
	}
	if err := w.Commit(ctx, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	progMu.Lock()
	done = true
	conds.Broadcast()
	progMu.Unlock()
	wg.Wait()
	for i := range readers {
		if errs[i] != nil || !bytes.Equal(results[i], data) {
			t.Fatalf("reader %d: err %v, got %d bytes, equal=%v", i, errs[i], len(results[i]), bytes.Equal(results[i], data))
		}
	}
	// After Commit, ReadAt still serves the bytes (a slow reader that joined late).
	tail := make([]byte, 10)
	if n, err := w.ReadAt(tail, int64(len(data))-10); n != 10 || (err != nil && err != io.EOF) || !bytes.Equal(tail, data[len(data)-10:]) {
		t.Fatalf("ReadAt after Commit: n=%d err=%v", n, err)
	}
	if n, err := w.ReadAt(tail, int64(len(data))); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt at the end: n=%d err=%v, want 0, io.EOF", n, err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.ReadAt(tail, 0); err == nil {
		t.Fatal("ReadAt after Close succeeded")
	}
	if got := readAll(t, s, d); !bytes.Equal(got, data) {
		t.Fatal("committed content differs")
	}
}

func TestAbort(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	data, d := randomBlob(t, 10_000)
	w, err := s.Writer(ctx, d, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data[:5000]); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatalf("second Abort: %v", err)
	}
	if left := dirEntries(t, s.tmpDir); len(left) != 0 {
		t.Fatalf("Abort left %v", left)
	}
	// Readers that already hold the writer keep reading what was written.
	buf := make([]byte, 5000)
	if n, _ := w.ReadAt(buf, 0); n != 5000 || !bytes.Equal(buf, data[:5000]) {
		t.Fatalf("ReadAt after Abort: %d bytes", n)
	}
	if err := w.Commit(ctx, 5000); err == nil {
		t.Fatal("Commit after Abort succeeded")
	}
	if _, err := w.Write(data); err == nil {
		t.Fatal("Write after Abort succeeded")
	}
	w.Close()
	if _, err := s.Stat(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat after Abort: %v", err)
	}
	// Close without Commit or Abort aborts.
	w2, _ := s.Writer(ctx, d, "")
	w2.Write(data)
	w2.Close()
	if left := dirEntries(t, s.tmpDir); len(left) != 0 {
		t.Fatalf("Close without Commit left %v", left)
	}
	// Abort after a successful commit leaves the content alone.
	w3, _ := s.Writer(ctx, d, "")
	w3.Write(data)
	if err := w3.Commit(ctx, -1); err != nil {
		t.Fatal(err)
	}
	w3.Abort()
	w3.Close()
	if got := readAll(t, s, d); !bytes.Equal(got, data) {
		t.Fatal("Abort after Commit damaged the content")
	}
}

// Two fills of the same digest (say, after a restart raced a peer transfer) both succeed and
// the content is stored once.
func TestConcurrentWritersSameDigest(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	data, d := randomBlob(t, 1<<20)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			w, err := s.Writer(ctx, d, "")
			if err != nil {
				errs[i] = err
				return
			}
			defer w.Close()
			if _, err := w.Write(data); err != nil {
				errs[i] = err
				return
			}
			errs[i] = w.Commit(ctx, int64(len(data)))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	if st := s.Stats(); st.Blobs != 1 || st.BytesUsed != int64(len(data)) {
		t.Fatalf("Stats = %+v, want one blob", st)
	}
	if left := dirEntries(t, s.tmpDir); len(left) != 0 {
		t.Fatalf("tmp holds %v", left)
	}
}

func TestPutSmall(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	s := openStore(t, testConfig(dir))
	const mt = "application/vnd.oci.image.manifest.v1+json"
	small := []byte(`{"schemaVersion":2,"mediaType":"` + mt + `"}`)
	large, _ := randomBlob(t, InlineMax+1)
	for _, tc := range []struct {
		name       string
		data       []byte
		wantInline bool
	}{
		{"inline", small, true},
		{"empty", []byte{}, true},
		{"file", large, false},
	} {
		d := digest.FromBytes(tc.data)
		if err := s.PutSmall(ctx, d, mt, tc.data); err != nil {
			t.Fatalf("%s: PutSmall: %v", tc.name, err)
		}
		if err := s.PutSmall(ctx, d, mt, tc.data); err != nil {
			t.Fatalf("%s: second PutSmall: %v", tc.name, err)
		}
		rc, info, err := s.Reader(ctx, d)
		if err != nil {
			t.Fatalf("%s: Reader: %v", tc.name, err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, tc.data) || info.MediaType != mt || info.Size != int64(len(tc.data)) {
			t.Fatalf("%s: got %d bytes, info %+v", tc.name, len(got), info)
		}
		_, isFile := rc.(*os.File)
		if isFile == tc.wantInline {
			t.Fatalf("%s: Reader returned %T", tc.name, rc)
		}
		_, statErr := os.Stat(s.blobPath(d))
		if (statErr == nil) == tc.wantInline {
			t.Fatalf("%s: file exists=%v, want inline=%v", tc.name, statErr == nil, tc.wantInline)
		}
	}
	tooBig := make([]byte, SmallMax+1)
	if err := s.PutSmall(ctx, digest.FromBytes(tooBig), mt, tooBig); err == nil {
		t.Fatal("PutSmall accepted more than SmallMax bytes")
	}
	// Everything survives a restart, inline bytes included.
	s.Close()
	s2 := openStore(t, testConfig(dir))
	if got := readAll(t, s2, digest.FromBytes(small)); !bytes.Equal(got, small) {
		t.Fatal("inline content lost across reopen")
	}
	if got := readAll(t, s2, digest.FromBytes(large)); !bytes.Equal(got, large) {
		t.Fatal("file content lost across reopen")
	}
	if info, _ := s2.Stat(ctx, digest.FromBytes(small)); info.MediaType != mt {
		t.Fatalf("media type after reopen = %q", info.MediaType)
	}
}

func TestTags(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	s := openStore(t, testConfig(dir))
	m1 := []byte(`{"schemaVersion":2,"n":1}`)
	m2 := []byte(`{"schemaVersion":2,"n":2}`)
	d1, d2 := digest.FromBytes(m1), digest.FromBytes(m2)
	const mt = "application/vnd.oci.image.index.v1+json"
	for _, m := range [][]byte{m1, m2} {
		if err := s.PutSmall(ctx, digest.FromBytes(m), mt, m); err != nil {
			t.Fatal(err)
		}
	}
	const name = "docker.io/library/alpine:3.20"
	if _, err := s.GetTag(ctx, name); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetTag unknown = %v", err)
	}
	checked := time.Now().Truncate(time.Second)
	if err := s.PutTag(ctx, name, Tag{Digest: d1, MediaType: mt, Size: int64(len(m1)), Checked: checked}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTag(ctx, name, Tag{Digest: d2, MediaType: mt, Size: int64(len(m2)), Checked: checked}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTag(ctx, "ghcr.io/a/b:latest", Tag{Digest: d1, MediaType: mt}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTag(ctx, "x:y", Tag{Digest: "nope"}); err == nil {
		t.Fatal("PutTag accepted an invalid digest")
	}
	got, err := s.GetTag(ctx, name)
	if err != nil || got.Digest != d2 || got.MediaType != mt || got.Size != int64(len(m2)) || !got.Checked.Equal(checked) {
		t.Fatalf("GetTag = %+v, %v", got, err)
	}
	s.Close()
	s = openStore(t, testConfig(dir))
	if got, err := s.GetTag(ctx, name); err != nil || got.Digest != d2 {
		t.Fatalf("GetTag after reopen = %+v, %v", got, err)
	}
	// A tag goes with its manifest; the replaced resolution no longer names d1.
	if err := s.Delete(ctx, d1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetTag(ctx, "ghcr.io/a/b:latest"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("tag of deleted manifest: %v, want ErrNotFound", err)
	}
	if _, err := s.GetTag(ctx, name); err != nil {
		t.Fatalf("tag re-pointed to d2 was dropped with d1: %v", err)
	}
	s.Close()
	s = openStore(t, testConfig(dir))
	if _, err := s.GetTag(ctx, "ghcr.io/a/b:latest"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("tag of deleted manifest came back after reopen: %v", err)
	}
}

func TestReopenKeepsContentAndAccessTimes(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	s := openStore(t, testConfig(dir))
	var ds []digest.Digest
	for i := range 20 {
		data, _ := randomBlob(t, 1000*(i+1))
		ds = append(ds, put(t, s, data))
	}
	readAll(t, s, ds[3])
	before, _ := s.Stat(ctx, ds[3])
	if err := s.Pin(ctx, ds[5]); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Stat(ctx, ds[0]); err == nil {
		// Stat after Close may still answer from memory; Reader and Writer must refuse.
	}
	if _, _, err := s.Reader(ctx, ds[0]); !errors.Is(err, ErrClosed) {
		t.Fatalf("Reader after Close: %v", err)
	}
	if _, err := s.Writer(ctx, ds[0], ""); !errors.Is(err, ErrClosed) {
		t.Fatalf("Writer after Close: %v", err)
	}
	s = openStore(t, testConfig(dir))
	if st := s.Stats(); st.Blobs != 20 {
		t.Fatalf("after reopen %d blobs, want 20", st.Blobs)
	}
	after, err := s.Stat(ctx, ds[3])
	if err != nil || !after.Accessed.Equal(before.Accessed) {
		t.Fatalf("access time after reopen %v, want %v (err %v)", after.Accessed, before.Accessed, err)
	}
	if info, _ := s.Stat(ctx, ds[5]); !info.Pinned {
		t.Fatal("pin lost across reopen")
	}
	n := 0
	if err := s.Walk(ctx, func(i Info) error { n++; return nil }); err != nil || n != 20 {
		t.Fatalf("Walk saw %d (err %v)", n, err)
	}
	stop := errors.New("stop")
	if err := s.Walk(ctx, func(Info) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("Walk error = %v", err)
	}
}

func TestOpenRefusesSecondProcessOnSameDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	openStore(t, testConfig(dir))
	if _, err := Open(t.Context(), testConfig(dir), nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open = %v, want an 'in use' error", err)
	}
}

func TestDeleteAndEvents(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	evs := make(chan Event, 10)
	unsub := s.Subscribe(func(e Event) { evs <- e })
	data, _ := randomBlob(t, 5000)
	d := put(t, s, data)
	if e := <-evs; e.Kind != EventCommitted || e.Digest != d {
		t.Fatalf("event %+v, want committed %s", e, d)
	}
	if err := s.Delete(ctx, d); err != nil {
		t.Fatal(err)
	}
	if e := <-evs; e.Kind != EventEvicted || e.Digest != d || e.Reason != ReasonDeleted {
		t.Fatalf("event %+v, want evicted/deleted %s", e, d)
	}
	if err := s.Delete(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete = %v", err)
	}
	if _, err := os.Stat(s.blobPath(d)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file still there after Delete: %v", err)
	}
	unsub()
	put(t, s, data)
	select {
	case e := <-evs:
		t.Fatalf("event after unsubscribe: %+v", e)
	default:
	}
	if st := s.Stats(); st.Evictions[ReasonDeleted] != 1 {
		t.Fatalf("Evictions = %v", st.Evictions)
	}
}

func TestOpenFilesAreFound(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	data, _ := randomBlob(t, 100)
	d := put(t, s, data)
	rc, _, err := s.Reader(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	open, ok := openBlobFiles(s.blobDir)
	if !ok || !open[d] {
		t.Fatalf("openBlobFiles = %v, %v; want %s open", open, ok, d)
	}
	rc.Close()
	if open, _ := openBlobFiles(s.blobDir); open[d] {
		t.Fatal("closed file still reported open")
	}
	_ = filepath.Join
}

// countingHandler keeps log messages so that tests can count them.
type countingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.mu.Unlock()
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func (h *countingHandler) count(sub string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

// Check verifies the bytes before Commit makes them durable; both agree.
func TestCheckBeforeCommit(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newStore(t)
	data, d := randomBlob(t, 700_000)
	w, err := s.Writer(ctx, d, "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write(data[:300_000])
	if err := w.Check(int64(len(data))); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Check of a partial write = %v, want ErrDigestMismatch", err)
	}
	w.Write(data[300_000:]) // bytes after a Check are hashed too
	if err := w.Check(int64(len(data))); err != nil {
		t.Fatalf("Check = %v", err)
	}
	if err := w.Commit(ctx, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, s, d); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
}
