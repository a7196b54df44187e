package store

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// The TTL sweep runs on the background loop with fake time: content read within the TTL stays,
// content not read for longer goes at the next sweep, pinned content stays regardless.
func TestTTLSweep(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		cfg := testConfig(dir)
		// Short periods keep the fake clock's span small: Badger's compactors tick every 50 ms
		// of fake time too.
		cfg.TTL = time.Hour
		cfg.GCInterval = 5 * time.Minute
		s, err := Open(ctx, cfg, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		evicted := make(chan Event, 10)
		defer s.Subscribe(func(e Event) {
			if e.Kind == EventEvicted {
				evicted <- e
			}
		})()
		a, _ := randomBlob(t, 1000)
		b, _ := randomBlob(t, 1000)
		c, _ := randomBlob(t, 1000)
		da, db, dc := put(t, s, a), put(t, s, b), put(t, s, c)
		if err := s.Pin(ctx, dc); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Minute)
		readAll(t, s, db) // b is read 50 min after its commit, a never
		time.Sleep(16 * time.Minute)
		synctest.Wait()
		// 66 min: the sweep at 65 min removed a (not read for 65 min), kept b (read 15 min ago)
		// and c (pinned).
		if _, err := s.Stat(ctx, da); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a not read for 65 min is still there (err %v)", err)
		}
		if e := <-evicted; e.Digest != da || e.Reason != ReasonTTL {
			t.Fatalf("event %+v, want ttl eviction of a", e)
		}
		if _, err := s.Stat(ctx, db); err != nil {
			t.Fatalf("b read 15 min ago was removed: %v", err)
		}
		time.Sleep(50 * time.Minute) // 116 min: b was last read 66 min ago
		synctest.Wait()
		if _, err := s.Stat(ctx, db); !errors.Is(err, ErrNotFound) {
			t.Fatalf("b not read for 66 min is still there (err %v)", err)
		}
		if _, err := s.Stat(ctx, dc); err != nil {
			t.Fatalf("pinned c was removed by TTL: %v", err)
		}
		if st := s.Stats(); st.Evictions[ReasonTTL] != 2 {
			t.Fatalf("ttl evictions = %d, want 2", st.Evictions[ReasonTTL])
		}
	})
}
