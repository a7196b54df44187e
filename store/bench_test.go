package store

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Benchmarks compare the store with plain files in the same run, interleaved so that both see
// the same disk and page-cache state. Each reports its own figure, the baseline's, and
// ratio = store / baseline (throughput; for latencies, baseline / store, so > 1 means the store
// is faster). Run:
//
//	go test -run '^$' -bench . -benchtime 2s ./store/

var benchSizes = []struct {
	name string
	size int
}{{"4KiB", 4 << 10}, {"1MiB", 1 << 20}, {"256MiB", 256 << 20}}

func benchStore(b *testing.B) *Store {
	cfg := testConfig(b.TempDir())
	cfg.MaxSize = 1 << 42
	s, err := Open(context.Background(), cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// rawCommit is the baseline for a commit: write a temporary file, fsync, rename. No hashing.
func rawCommit(b *testing.B, dir string, data []byte, name string) {
	f, err := os.CreateTemp(dir, "raw-")
	if err != nil {
		b.Fatal(err)
	}
	for off := 0; off < len(data); off += 1 << 20 {
		if _, err := f.Write(data[off:min(len(data), off+1<<20)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	f.Close()
	if err := os.Rename(f.Name(), filepath.Join(dir, name)); err != nil {
		b.Fatal(err)
	}
}

func storeCommit(b *testing.B, s *Store, d digest.Digest, data []byte) {
	w, err := s.Writer(context.Background(), d, "")
	if err != nil {
		b.Fatal(err)
	}
	for off := 0; off < len(data); off += 1 << 20 {
		if _, err := w.Write(data[off:min(len(data), off+1<<20)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Commit(context.Background(), int64(len(data))); err != nil {
		b.Fatal(err)
	}
	w.Close()
}

func reportRatio(b *testing.B, unit string, store, base float64) {
	b.ReportMetric(store, "store-"+unit)
	b.ReportMetric(base, "raw-"+unit)
	b.ReportMetric(store/base, "ratio")
}

func timed(fn func()) time.Duration {
	t := time.Now()
	fn()
	return time.Since(t)
}

func mbps(bytes int64, d time.Duration) float64 { return float64(bytes) / d.Seconds() / (1 << 20) }

// BenchmarkCommit: Writer + Write + Commit (hash, fsync, rename, index record) against
// write + fsync + rename of a plain file.
func BenchmarkCommit(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			s := benchStore(b)
			rawDir := b.TempDir()
			data := make([]byte, sz.size)
			rand.Read(data)
			d := digest.FromBytes(data)
			var storeT, rawT time.Duration
			b.SetBytes(int64(sz.size))
			b.ResetTimer()
			for i := range b.N {
				// Alternate which goes first: an fsync also flushes the journal entries of
				// the previous round's deletes.
				if i%2 == 0 {
					storeT += timed(func() { storeCommit(b, s, d, data) })
					rawT += timed(func() { rawCommit(b, rawDir, data, "blob") })
				} else {
					rawT += timed(func() { rawCommit(b, rawDir, data, "blob") })
					storeT += timed(func() { storeCommit(b, s, d, data) })
				}
				// Clean up outside the measured spans so that the next round commits again.
				b.StopTimer()
				if err := s.Delete(context.Background(), d); err != nil {
					b.Fatal(err)
				}
				os.Remove(filepath.Join(rawDir, "blob"))
				b.StartTimer()
			}
			n := int64(b.N) * int64(sz.size)
			reportRatio(b, "MB/s", mbps(n, storeT), mbps(n, rawT))
		})
	}
}

// dropCache evicts a file's pages from the page cache, so that the next read goes to disk.
func dropCache(b *testing.B, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRead: Reader + read to the end + Close against open + read + close of a plain file of
// the same size, cold (pages dropped before every read) and warm.
func BenchmarkRead(b *testing.B) {
	for _, sz := range benchSizes {
		for _, cold := range []bool{true, false} {
			name := sz.name + "/warm"
			if cold {
				name = sz.name + "/cold"
			}
			b.Run(name, func(b *testing.B) {
				s := benchStore(b)
				data := make([]byte, sz.size)
				rand.Read(data)
				d := digest.FromBytes(data)
				storeCommit(b, s, d, data)
				raw := filepath.Join(b.TempDir(), "blob")
				if err := os.WriteFile(raw, data, 0o600); err != nil {
					b.Fatal(err)
				}
				f, _ := os.Open(raw)
				f.Sync()
				f.Close()
				buf := make([]byte, 1<<20)
				read := func(r io.Reader) {
					for {
						if _, err := r.Read(buf); err != nil {
							if err == io.EOF {
								return
							}
							b.Fatal(err)
						}
					}
				}
				var storeT, rawT time.Duration
				b.SetBytes(int64(sz.size))
				b.ResetTimer()
				readStore := func() {
					rc, _, err := s.Reader(context.Background(), d)
					if err != nil {
						b.Fatal(err)
					}
					read(rc)
					rc.Close()
				}
				readRaw := func() {
					f, err := os.Open(raw)
					if err != nil {
						b.Fatal(err)
					}
					read(f)
					f.Close()
				}
				for i := range b.N {
					if cold {
						b.StopTimer()
						dropCache(b, s.blobPath(d))
						dropCache(b, raw)
						b.StartTimer()
					}
					if i%2 == 0 {
						storeT += timed(readStore)
						rawT += timed(readRaw)
					} else {
						rawT += timed(readRaw)
						storeT += timed(readStore)
					}
				}
				n := int64(b.N) * int64(sz.size)
				reportRatio(b, "MB/s", mbps(n, storeT), mbps(n, rawT))
			})
		}
	}
}

// populate builds a store of n small blobs quickly (files without fsync, records in one
// batch): the index benchmarks measure lookups and loading, not the commits that led there.
func populate(b *testing.B, n int) (string, []digest.Digest) {
	dir := b.TempDir()
	s, err := Open(context.Background(), testConfig(dir), nil)
	if err != nil {
		b.Fatal(err)
	}
	wb := s.db.NewWriteBatch()
	ds := make([]digest.Digest, n)
	now := time.Now().UnixNano()
	for i := range n {
		data := fmt.Appendf(nil, "blob %d", i)
		d := digest.FromBytes(data)
		ds[i] = d
		p := s.blobPath(d)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			os.MkdirAll(filepath.Dir(p), 0o700)
			if err := os.WriteFile(p, data, 0o600); err != nil {
				b.Fatal(err)
			}
		}
		e := &entry{d: d, size: int64(len(data)), mediaType: "application/octet-stream", created: now}
		e.accessed.Store(now)
		if err := wb.Set(contentKey(d), e.record()); err != nil {
			b.Fatal(err)
		}
	}
	if err := wb.Flush(); err != nil {
		b.Fatal(err)
	}
	s.Close()
	return dir, ds
}

// BenchmarkIndex100k: Stat latency (p50, p99) and rate with 100k blobs against os.Stat of the
// blob's file, and PutTag / inline PutSmall rates (no baseline: the raw-file equivalent of a
// metadata update is a write+fsync+rename, measured by BenchmarkCommit/4KiB).
func BenchmarkIndex100k(b *testing.B) {
	const n = 100_000
	dir, ds := populate(b, n)
	s := openStore(b, testConfig(dir))
	if st := s.Stats(); st.Blobs != n {
		b.Fatalf("store has %d blobs, want %d", st.Blobs, n)
	}
	ctx := context.Background()
	b.Run("Stat", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		rawLat := make([]time.Duration, 0, b.N)
		var storeT, rawT time.Duration
		for i := range b.N {
			d := ds[(i*7919)%n]
			t0 := time.Now()
			if _, err := s.Stat(ctx, d); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if _, err := os.Stat(s.blobPath(d)); err != nil {
				b.Fatal(err)
			}
			t2 := time.Now()
			lat = append(lat, t1.Sub(t0))
			rawLat = append(rawLat, t2.Sub(t1))
			storeT += t1.Sub(t0)
			rawT += t2.Sub(t1)
		}
		slices.Sort(lat)
		slices.Sort(rawLat)
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "store-p50-ns")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "store-p99-ns")
		b.ReportMetric(float64(rawLat[len(rawLat)/2].Nanoseconds()), "raw-p50-ns")
		reportRatio(b, "ops/s", float64(b.N)/storeT.Seconds(), float64(b.N)/rawT.Seconds())
	})
	// A commit into a full store of 100k blobs: each one evicts the least recently used blob
	// (of the same size) and is timed whole; the victim pick is also timed alone.
	b.Run("CommitEvicting", func(b *testing.B) {
		s.mu.Lock()
		s.maxSize = s.used
		s.mu.Unlock()
		var pick time.Duration
		for i := range b.N {
			data := fmt.Appendf(nil, "BLOB %d", i) // same sizes as populate's
			storeCommit(b, s, digest.FromBytes(data), data)
			b.StopTimer()
			s.wmu.Lock()
			t0 := time.Now()
			v, _, _ := s.pickLocked(1, 0, true)
			pick += time.Since(t0)
			for _, e := range v { // put it back: only the pick was measured
				s.mu.Lock()
				s.idx[e.d] = e
				s.used += e.size
				s.lruPushBack(e)
				s.mu.Unlock()
			}
			s.wmu.Unlock()
			b.StartTimer()
		}
		b.ReportMetric(float64(pick.Microseconds())/float64(b.N), "pick-victim-µs")
		s.mu.Lock()
		s.maxSize = 1 << 42 // the benchmarks below must not evict
		s.mu.Unlock()
	})
	b.Run("PutTag", func(b *testing.B) {
		for i := range b.N {
			if err := s.PutTag(ctx, fmt.Sprintf("r.io/x:%d", i), Tag{Digest: ds[i%n], Checked: time.Now()}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	})
	b.Run("PutSmallInline", func(b *testing.B) {
		for i := range b.N {
			m := fmt.Appendf(nil, `{"schemaVersion":2,"n":%d,"pad":"%01000d"}`, i, 0)
			if err := s.PutSmall(ctx, digest.FromBytes(m), "application/json", m); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	})
}

// BenchmarkOpen100k: Open (Badger open, index load, LRU order) of a store of 100k blobs after a
// clean Close, and after a crash (which adds listing every content file and pairing files with
// records), against listing the same directory tree. ratio = list / open-after-crash.
func BenchmarkOpen100k(b *testing.B) {
	dir, _ := populate(b, 100_000)
	var cleanT, crashT, rawT time.Duration
	var heap uint64
	for range b.N {
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		t0 := time.Now()
		s, err := Open(context.Background(), testConfig(dir), nil)
		if err != nil {
			b.Fatal(err)
		}
		cleanT += time.Since(t0)
		runtime.GC()
		runtime.ReadMemStats(&m1)
		heap = m1.HeapAlloc - m0.HeapAlloc
		s.abandon()

		t0 = time.Now()
		s, err = Open(context.Background(), testConfig(dir), nil)
		if err != nil {
			b.Fatal(err)
		}
		crashT += time.Since(t0)
		s.Close()

		t0 = time.Now()
		if _, _, err := listBlobs(filepath.Join(dir, "blobs")); err != nil {
			b.Fatal(err)
		}
		rawT += time.Since(t0)
	}
	n := float64(b.N)
	b.ReportMetric(float64(cleanT.Milliseconds())/n, "open-clean-ms")
	b.ReportMetric(float64(crashT.Milliseconds())/n, "open-after-crash-ms")
	b.ReportMetric(float64(rawT.Milliseconds())/n, "raw-list-ms")
	b.ReportMetric(rawT.Seconds()/crashT.Seconds(), "ratio")
	b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
}
