package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"
)

// blobs makes n distinct random blobs of size bytes.
func blobs(t testing.TB, n, size int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i], _ = randomBlob(t, size)
	}
	return out
}

func present(t testing.TB, s *Store, d digest.Digest) bool {
	t.Helper()
	_, err := s.Stat(context.Background(), d)
	if err != nil && !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// collect records events until the test ends.
type collect struct {
	mu  sync.Mutex
	evs []Event
}

func subscribe(t testing.TB, s *Store) *collect {
	c := &collect{}
	t.Cleanup(s.Subscribe(func(e Event) { c.mu.Lock(); c.evs = append(c.evs, e); c.mu.Unlock() }))
	return c
}

// evicted waits (with a deadline) until n eviction events arrived and returns their digests.
func (c *collect) evicted(t testing.TB, n int) []digest.Digest {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		var out []digest.Digest
		for _, e := range c.evs {
			if e.Kind == EventEvicted {
				out = append(out, e.Digest)
			}
		}
		c.mu.Unlock()
		if len(out) >= n {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("saw %d eviction events, want %d", len(out), n)
		}
		time.Sleep(time.Millisecond) // polling an event list with a deadline
	}
}

func TestLRUOrderUnderTightBudget(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cfg := testConfig(t.TempDir())
	cfg.MaxSize = 10 * 1000
	s := openStore(t, cfg)
	ev := subscribe(t, s)
	var ds []digest.Digest
	for _, b := range blobs(t, 10, 1000) {
		ds = append(ds, put(t, s, b))
	}
	for _, i := range []int{2, 0, 4} { // read these, in this order
		readAll(t, s, ds[i])
	}
	// Oldest access first: 1 3 5 6 7 8 9 2 0 4. Three new blobs push out 1, 3, 5.
	for _, b := range blobs(t, 3, 1000) {
		put(t, s, b)
	}
	got := ev.evicted(t, 3)
	want := []digest.Digest{ds[1], ds[3], ds[5]}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("eviction %d was %s, want %s (LRU order 1,3,5)", i, got[i], want[i])
		}
	}
	for i, d := range ds {
		evicted := i == 1 || i == 3 || i == 5
		if present(t, s, d) == evicted {
			t.Fatalf("blob %d present=%v, want evicted=%v", i, !evicted, evicted)
		}
	}
	st := s.Stats()
	if st.BytesUsed != 10*1000 || st.Blobs != 10 || st.Evictions[ReasonLRU] != 3 || st.MaxSize != 10*1000 {
		t.Fatalf("Stats = %+v", st)
	}
	// A blob larger than the whole budget is refused without evicting anything.
	big, bd := randomBlob(t, 10*1000+1)
	w, _ := s.Writer(ctx, bd, "")
	w.Write(big)
	if err := w.Commit(ctx, int64(len(big))); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Commit over budget = %v, want ErrNoSpace", err)
	}
	w.Close()
	if st := s.Stats(); st.Blobs != 10 || st.Evictions[ReasonLRU] != 3 {
		t.Fatalf("an impossible commit evicted content: %+v", st)
	}
	// Lowering the budget takes effect at the next GC (here: a restart with a smaller MaxSize).
	s.Close()
	cfg.MaxSize = 3 * 1000
	s = openStore(t, cfg)
	res, err := s.GC(ctx)
	if err != nil || res.Evicted != 7 || res.ByReason[ReasonLRU] != 7 || res.Bytes != 7000 {
		t.Fatalf("GC = %+v, %v; want 7 LRU evictions", res, err)
	}
	for _, i := range []int{2, 0, 4} {
		if !present(t, s, ds[i]) {
			// The three new blobs are the most recent; 2, 0, 4 were read before them.
			continue
		}
		t.Fatalf("blob %d should have gone before the three newer blobs", i)
	}
}

func TestPinsSurviveEviction(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cfg := testConfig(t.TempDir())
	cfg.MaxSize = 8 * 1000
	s := openStore(t, cfg)
	var ds []digest.Digest
	for _, b := range blobs(t, 4, 1000) {
		ds = append(ds, put(t, s, b))
	}
	// A manifest referencing ds[1] and a child index referencing the manifest.
	man := []byte(`{"layers":["` + ds[1].String() + `"]}`)
	md := digest.FromBytes(man)
	idx := []byte(`{"manifests":["` + md.String() + `"]}`)
	id := digest.FromBytes(idx)
	for _, m := range [][]byte{man, idx} {
		if err := s.PutSmall(ctx, digest.FromBytes(m), "application/json", m); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetRefs(ctx, md, []digest.Digest{ds[1]}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRefs(ctx, id, []digest.Digest{md}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRefs(ctx, digest.FromString("x"), nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetRefs of unknown manifest = %v", err)
	}
	if err := s.Pin(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin(ctx, id); err != nil { // protects md and, through it, ds[1]
		t.Fatal(err)
	}
	if err := s.Pin(ctx, digest.FromString("unknown")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Pin unknown = %v", err)
	}
	// Fill well past the budget several times over.
	for _, b := range blobs(t, 20, 1000) {
		put(t, s, b)
	}
	for _, d := range []digest.Digest{ds[0], ds[1], md, id} {
		if !present(t, s, d) {
			t.Fatalf("%s was evicted although pinned or referenced by a pinned index", d)
		}
	}
	if present(t, s, ds[2]) || present(t, s, ds[3]) {
		t.Fatal("unpinned old blobs survived")
	}
	// Pins persist; after Unpin the content is evictable again.
	s.Close()
	s = openStore(t, cfg)
	if info, _ := s.Stat(ctx, id); !info.Pinned {
		t.Fatal("pin lost on reopen")
	}
	if err := s.Unpin(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := s.Unpin(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	for _, b := range blobs(t, 8, 1000) {
		put(t, s, b)
	}
	for _, d := range []digest.Digest{ds[0], ds[1], md, id} {
		if present(t, s, d) {
			t.Fatalf("%s survived after Unpin", d)
		}
	}
	// When everything is pinned a commit fails with ErrNoSpace and evicts nothing.
	var all []digest.Digest
	s.Walk(ctx, func(i Info) error { all = append(all, i.Digest); return nil })
	for _, d := range all {
		s.Pin(ctx, d)
	}
	b, bd := randomBlob(t, 1000)
	w, _ := s.Writer(ctx, bd, "")
	w.Write(b)
	if err := w.Commit(ctx, 1000); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Commit with everything pinned = %v, want ErrNoSpace", err)
	}
	w.Close()
	if st := s.Stats(); int(st.Blobs) != len(all) {
		t.Fatalf("blobs %d, want %d", st.Blobs, len(all))
	}
}

// Readers open during eviction read complete, correct content; open content is not evicted.
func TestConcurrentReadersDuringEviction(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	cfg := testConfig(t.TempDir())
	const size = 32 << 10
	cfg.MaxSize = 20 * size
	s := openStore(t, cfg)

	// Hold the oldest blob open across heavy eviction: it must stay.
	first, _ := randomBlob(t, size)
	fd := put(t, s, first)
	held, _, err := s.Reader(ctx, fd)
	if err != nil {
		t.Fatal(err)
	}
	// A writer whose readers are not done yet (committed, not closed) holds its file too.
	wdata, wd := randomBlob(t, size)
	w, _ := s.Writer(ctx, wd, "")
	w.Write(wdata)
	if err := w.Commit(ctx, size); err != nil {
		t.Fatal(err)
	}

	var (
		mu      sync.Mutex
		live    []digest.Digest
		stop    atomic.Bool
		reads   atomic.Int64
		misses  atomic.Int64
		wg      sync.WaitGroup
		readErr = make(chan error, 8)
	)
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
				mu.Lock()
				if len(live) == 0 {
					mu.Unlock()
					continue
				}
				// Mostly recent content (still stored), sometimes older (being evicted).
				d := live[max(0, len(live)-1-rand.IntN(25))]
				mu.Unlock()
				rc, _, err := s.Reader(ctx, d)
				if errors.Is(err, ErrNotFound) {
					misses.Add(1)
					continue
				}
				if err != nil {
					readErr <- err
					return
				}
				h := d.Algorithm().Digester()
				_, err = io.Copy(h.Hash(), rc)
				rc.Close()
				if err != nil || h.Digest() != d {
					readErr <- errors.New("reader got wrong or short content for " + d.String())
					return
				}
				reads.Add(1)
			}
		})
	}
	for _, b := range blobs(t, 150, size) {
		d := put(t, s, b)
		mu.Lock()
		live = append(live, d)
		mu.Unlock()
	}
	stop.Store(true)
	wg.Wait()
	close(readErr)
	for err := range readErr {
		t.Fatal(err)
	}
	t.Logf("%d verified reads, %d misses of evicted content", reads.Load(), misses.Load())
	if reads.Load() == 0 {
		t.Fatal("no reads happened")
	}
	if !present(t, s, fd) || !present(t, s, wd) {
		t.Fatal("content held open (reader, or committed writer not yet closed) was evicted")
	}
	got, _ := io.ReadAll(held)
	if !bytes.Equal(got, first) {
		t.Fatal("held reader read wrong content")
	}
	held.Close()
	w.Close()
	if st := s.Stats(); st.BytesUsed > cfg.MaxSize {
		t.Fatalf("used %d over budget %d", st.BytesUsed, cfg.MaxSize)
	}
	// Once closed they are ordinary LRU victims, the oldest ones.
	put(t, s, mustRandom(t, size))
	put(t, s, mustRandom(t, size))
	if present(t, s, fd) || present(t, s, wd) {
		t.Fatal("content stayed after its readers closed although it was least recently used")
	}
	if st := s.Stats(); st.BytesUsed > cfg.MaxSize {
		t.Fatalf("used %d > budget %d after GC", st.BytesUsed, cfg.MaxSize)
	}
}

// mountTmpfs mounts a private tmpfs of size bytes for tests that need exact free-space
// figures or a filesystem that fills up.
func mountTmpfs(t testing.TB, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+itoa(size)+",mode=0700"); err != nil {
		t.Fatalf("mount a %d-byte tmpfs at %s: %v: this test needs root (CAP_SYS_ADMIN) to create a small "+
			"filesystem it can fill; run it as root, as .ci/run does", size, dir, err)
	}
	t.Cleanup(func() {
		// EBUSY can be passing: a parallel test (crash_test.go) forks a child, which holds
		// every descriptor of this process until its exec closes them. A descriptor the
		// store really left open keeps it busy past the deadline and fails the test.
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := syscall.Unmount(dir, 0)
			if err == nil {
				return
			}
			if err != syscall.EBUSY || time.Now().After(deadline) {
				t.Errorf("unmount %s: %v", dir, err)
				return
			}
			time.Sleep(10 * time.Millisecond) // polling a retry of the cleanup, not synchronisation
		}
	})
	return dir
}

func itoa(n int64) string {
	b := []byte{}
	for n >= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(append([]byte{byte('0' + n)}, b...))
}

// diskUsage is what du reports: allocated blocks of every file below dir.
func diskUsage(t testing.TB, dir string) int64 {
	var total int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			total += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	return total
}

// Evicted blobs give their space back to the filesystem: du of the store and statfs of a
// private tmpfs both drop by the evicted bytes.
func TestEvictionReturnsSpace(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	mnt := mountTmpfs(t, 256<<20)
	cfg := testConfig(filepath.Join(mnt, "store"))
	cfg.MaxSize = 200 << 20
	s := openStore(t, cfg)
	const size = 8 << 20
	var ds []digest.Digest
	for _, b := range blobs(t, 16, size) { // 128 MiB
		ds = append(ds, put(t, s, b))
	}
	duBefore := diskUsage(t, s.blobDir)
	spBefore, _ := statfs(mnt)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	cfg.MaxSize = 32 << 20
	s = openStore(t, cfg)
	res, err := s.GC(ctx)
	if err != nil || res.Evicted != 12 {
		t.Fatalf("GC = %+v, %v; want 12 evictions", res, err)
	}
	duAfter := diskUsage(t, s.blobDir)
	spAfter, _ := statfs(mnt)
	t.Logf("du %d -> %d MiB; tmpfs free %d -> %d MiB", duBefore>>20, duAfter>>20, spBefore.Avail>>20, spAfter.Avail>>20)
	if freed := duBefore - duAfter; freed < 12*size {
		t.Fatalf("du dropped by %d bytes, want at least %d", freed, 12*size)
	}
	if freed := spAfter.Avail - spBefore.Avail; freed < 12*size-(1<<20) {
		t.Fatalf("filesystem free space grew by %d bytes, want about %d", freed, 12*size)
	}
	if left := dirEntries(t, s.tmpDir); len(left) != 0 {
		t.Fatalf("evicted files left in tmp: %v", left)
	}
	// Delete returns space too.
	before, _ := statfs(mnt)
	for _, d := range ds[12:] {
		if err := s.Delete(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	after, _ := statfs(mnt)
	if after.Avail-before.Avail < 4*size-(1<<20) {
		t.Fatalf("Delete returned %d bytes, want about %d", after.Avail-before.Avail, 4*size)
	}
}

// MinFree keeps the filesystem from filling even when MaxSize would allow it.
func TestMinFreeKeepsFilesystemFree(t *testing.T) {
	t.Parallel()
	mnt := mountTmpfs(t, 64<<20)
	cfg := testConfig(filepath.Join(mnt, "store"))
	cfg.MaxSize = 1 << 30
	cfg.MinFree = "50%"
	s := openStore(t, cfg)
	const size = 1 << 20
	for _, b := range blobs(t, 60, size) {
		put(t, s, b)
		if sp, _ := statfs(mnt); sp.Avail < 32<<20-size {
			t.Fatalf("free space %d fell below min_free (32 MiB) by more than one blob", sp.Avail)
		}
	}
	st := s.Stats()
	if st.Evictions[ReasonMinFree] == 0 || st.Blobs == 0 {
		t.Fatalf("Stats = %+v, want min-free evictions and some content kept", st)
	}
	t.Logf("kept %d blobs (%d MiB), %d min-free evictions", st.Blobs, st.BytesUsed>>20, st.Evictions[ReasonMinFree])
}

// A full filesystem: Write fails with an error wrapping ErrNoSpace (and ENOSPC), the partial
// bytes stay readable for followers, eviction runs in the background and frees space, the
// warning is logged once, and afterwards content is cached again.
func TestDiskFull(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	mnt := mountTmpfs(t, 48<<20)
	cfg := testConfig(filepath.Join(mnt, "store"))
	cfg.MaxSize = 1 << 30 // larger than the filesystem: only ENOSPC can stop it
	logs := &countingHandler{}
	s, err := Open(ctx, cfg, slog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	const size = 1 << 20
	var kept []digest.Digest
	var werr error
	for i := 0; i < 100 && werr == nil; i++ {
		b, d := randomBlob(t, size)
		w, err := s.Writer(ctx, d, "")
		if err != nil {
			werr = err
			break
		}
		if _, werr = w.Write(b); werr == nil {
			if err := w.Commit(ctx, size); err != nil {
				werr = err
			} else {
				kept = append(kept, d)
			}
		} else {
			// Followers still read what reached the disk.
			n := w.Written()
			buf := make([]byte, n)
			if k, _ := w.ReadAt(buf, 0); int64(k) != n || !bytes.Equal(buf, b[:n]) {
				t.Fatalf("follower read %d of %d written bytes after ENOSPC", k, n)
			}
			if err := w.Commit(ctx, size); !errors.Is(err, ErrNoSpace) {
				t.Fatalf("Commit after a failed write = %v", err)
			}
		}
		w.Close()
	}
	if !errors.Is(werr, ErrNoSpace) || !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("filling the filesystem ended with %v, want an error wrapping ErrNoSpace and ENOSPC", werr)
	}
	// More failures within the minute add no log lines.
	for range 5 {
		b, d := randomBlob(t, 4<<20)
		if w, err := s.Writer(ctx, d, ""); err == nil {
			w.Write(b)
			w.Close()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Stats().Evictions[ReasonNoSpace] == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no background eviction after ENOSPC")
		}
		time.Sleep(5 * time.Millisecond) // polling the background GC with a deadline
	}
	if n := logs.count("no space to cache"); n != 1 {
		t.Fatalf("logged the full disk %d times, want once per minute", n)
	}
	if left := dirEntries(t, s.tmpDir); len(left) != 0 {
		// The aborted writers removed their temporary files.
		t.Fatalf("tmp holds %v after aborted writes", left)
	}
	// Space came back: new content is cached, and everything still listed verifies.
	put(t, s, mustRandom(t, size))
	res, err := s.Verify(ctx)
	if err != nil || len(res.Corrupt) != 0 || len(res.Missing) != 0 {
		t.Fatalf("Verify after disk full = %+v, %v", res, err)
	}
	t.Logf("cached %d MiB before ENOSPC; evicted %d for space", len(kept), s.Stats().Evictions[ReasonNoSpace])
}

// Content never takes the free space the index needs: Badger writes through memory maps of
// sparse files, and a page a full filesystem cannot back is a SIGBUS, not an error. Concurrent
// writers filling a tmpfs stop with ErrNoSpace while the index's headroom (at least 16 MiB) is
// still free, and while they hold their bytes the index keeps taking records.
func TestContentLeavesIndexHeadroom(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	mnt := mountTmpfs(t, 48<<20)
	s := openStore(t, testConfig(filepath.Join(mnt, "store")))
	const writers, chunk, headroom = 4, 256 << 10, 16 << 20
	var (
		failed, done sync.WaitGroup
		minAvail     atomic.Int64
		release      = make(chan struct{})
		errs         = make([]error, writers)
	)
	minAvail.Store(1 << 62)
	for i := range writers {
		failed.Add(1)
		done.Go(func() {
			data, d := randomBlob(t, 64<<20) // more than the filesystem
			w, err := s.Writer(ctx, d, "")
			if err != nil {
				errs[i] = err
				failed.Done()
				return
			}
			defer w.Close()
			for off := 0; off < len(data); off += chunk {
				if _, err = w.Write(data[off : off+chunk]); err != nil {
					break
				}
				if sp, err := statfs(mnt); err == nil {
					for cur := minAvail.Load(); sp.Avail < cur && !minAvail.CompareAndSwap(cur, sp.Avail); {
						cur = minAvail.Load()
					}
				}
			}
			errs[i] = err
			failed.Done()
			<-release // hold the bytes until the index was written to
		})
	}
	failed.Wait()
	sp, _ := statfs(mnt)
	for i, err := range errs {
		if !errors.Is(err, ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("writer %d ended with %v, want an error wrapping ErrNoSpace and ENOSPC", i, err)
		}
	}
	// The index, with the filesystem as full as content can make it: a few hundred pages of
	// write-ahead log.
	for i := range 2000 {
		if err := s.PutTag(ctx, fmt.Sprintf("r.io/full:%d", i), Tag{Digest: digest.FromString(fmt.Sprint(i))}); err != nil {
			t.Fatalf("tag %d with the filesystem full of content: %v", i, err)
		}
	}
	close(release)
	done.Wait()
	t.Logf("free while writers held their bytes: %d KiB (lowest seen %d KiB); index headroom %d KiB",
		sp.Avail>>10, minAvail.Load()>>10, s.headroom()>>10)
	if low := min(sp.Avail, minAvail.Load()); low < headroom {
		t.Fatalf("content left %d bytes free, want at least %d for the index", low, headroom)
	}
}

// Something else fills the filesystem: within seconds eviction gives the index its headroom
// back. With less than openMinFree left, Open refuses with ErrNoSpace instead of letting Badger
// write through its memory maps into a full filesystem; once space is back it opens again.
func TestOtherWritersFillTheFilesystem(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	mnt := mountTmpfs(t, 40<<20)
	cfg := testConfig(filepath.Join(mnt, "store"))
	s := openStore(t, cfg)
	for _, b := range blobs(t, 12, 1<<20) {
		put(t, s, b)
	}
	ballast, err := os.Create(filepath.Join(mnt, "ballast"))
	if err != nil {
		t.Fatal(err)
	}
	defer ballast.Close()
	fill := func(leave int64) { // grow the ballast until only leave bytes are free
		t.Helper()
		sp, _ := statfs(mnt)
		fi, _ := ballast.Stat()
		if err := syscall.Fallocate(int(ballast.Fd()), 0, 0, fi.Size()+sp.Avail-leave); err != nil {
			t.Fatalf("fill the filesystem: %v", err)
		}
	}
	fill(8 << 20)
	deadline := time.Now().Add(10 * time.Second)
	for {
		sp, _ := statfs(mnt)
		if sp.Avail >= s.headroom() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after another writer left %d bytes free, still %d free, want the index's headroom %d (evictions %v)",
				8<<20, sp.Avail, s.headroom(), s.Stats().Evictions)
		}
		time.Sleep(10 * time.Millisecond) // polling the background eviction with a deadline
	}
	if n := s.Stats().Evictions[ReasonMinFree]; n == 0 {
		t.Fatal("headroom came back without evictions")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	fill(256 << 10)
	if s, err := Open(ctx, cfg, testLogger(t)); !errors.Is(err, ErrNoSpace) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("Open with 256 KiB free = %v, want ErrNoSpace", err)
	}
	if err := ballast.Truncate(0); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, cfg)
	put(t, s, mustRandom(t, 1<<20))
}

// A read-only filesystem degrades the same way: no caching, reads still served.
func TestReadOnlyFilesystem(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	mnt := mountTmpfs(t, 32<<20)
	cfg := testConfig(filepath.Join(mnt, "store"))
	s := openStore(t, cfg)
	data := mustRandom(t, 1<<20)
	d := put(t, s, data)
	// Badger keeps files open for writing, so the whole filesystem cannot be remounted
	// read-only under it; a read-only bind mount over the store's tmp dir and blobs dir gives
	// every content write EROFS, as a disk remounted read-only after errors would.
	for _, p := range []string{s.tmpDir, s.blobDir} {
		if err := syscall.Mount(p, p, "", syscall.MS_BIND, ""); err != nil {
			t.Fatalf("bind mount %s: %v", p, err)
		}
		defer syscall.Unmount(p, 0)
		if err := syscall.Mount("", p, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, ""); err != nil {
			t.Fatalf("remount %s read-only: %v", p, err)
		}
	}
	_, err := s.Writer(ctx, digest.FromString("x"), "")
	if !errors.Is(err, ErrNoSpace) || !errors.Is(err, syscall.EROFS) {
		t.Fatalf("Writer on a read-only filesystem = %v, want ErrNoSpace wrapping EROFS", err)
	}
	if got := readAll(t, s, d); !bytes.Equal(got, data) {
		t.Fatal("read from a read-only store failed")
	}
	if err := s.PutSmall(ctx, digest.FromBytes(data[:InlineMax+1]), "", data[:InlineMax+1]); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("PutSmall (file) on a read-only filesystem = %v, want ErrNoSpace", err)
	}
}

func mustRandom(t testing.TB, n int) []byte {
	b, _ := randomBlob(t, n)
	return b
}

// Tags whose manifest is gone are dropped: at once when the manifest is evicted, and after a
// grace period for tags recorded for a manifest that never arrived.
func TestTagsFollowTheirManifest(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		cfg := testConfig(dir)
		cfg.MaxSize = 3000
		cfg.GCInterval = 10 * time.Minute
		cfg.TTL = 0
		s, err := Open(ctx, cfg, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		man := []byte(`{"schemaVersion":2,"x":"` + string(mustHex(t)) + `"}`)
		md := digest.FromBytes(man)
		if err := s.PutSmall(ctx, md, "application/vnd.oci.image.manifest.v1+json", man); err != nil {
			t.Fatal(err)
		}
		s.PutTag(ctx, "r.io/a:1", Tag{Digest: md})
		s.PutTag(ctx, "r.io/a:also", Tag{Digest: md})
		ghost := digest.FromString("never stored")
		s.PutTag(ctx, "r.io/a:ghost", Tag{Digest: ghost})
		time.Sleep(time.Second)
		put(t, s, mustRandom(t, 1000))
		put(t, s, mustRandom(t, 1000))
		put(t, s, mustRandom(t, 1000)) // evicts the manifest (least recently used)
		if present(t, s, md) {
			t.Fatal("manifest not evicted")
		}
		for _, n := range []string{"r.io/a:1", "r.io/a:also"} {
			if _, err := s.GetTag(ctx, n); !errors.Is(err, ErrNotFound) {
				t.Fatalf("tag %s of an evicted manifest: %v", n, err)
			}
		}
		if res, _ := s.GC(ctx); res.TagsDropped != 0 {
			t.Fatal("a fresh tag for a manifest not yet stored was dropped")
		}
		if _, err := s.GetTag(ctx, "r.io/a:ghost"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(cfg.GCInterval + time.Second)
		synctest.Wait()
		if _, err := s.GetTag(ctx, "r.io/a:ghost"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("tag whose manifest never arrived survived the sweep: %v", err)
		}
	})
}

func mustHex(t testing.TB) string { return digest.FromBytes(mustRandom(t, 16)).Encoded() }
