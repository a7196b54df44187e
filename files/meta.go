package files

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// metaEntry is one cached metadata answer (API JSON, a resolve's headers).
type metaEntry struct {
	Status  int               `json:"status"`
	Header  map[string]string `json:"header,omitempty"`
	Body    []byte            `json:"body,omitempty"`
	Fetched time.Time         `json:"fetched"`
	// Immutable entries (commit-pinned) never expire.
	Immutable bool `json:"immutable,omitempty"`
	// Private: fetched with a token; never shared (metadata is never shared anyway, but the
	// files it names inherit the flag).
	Private bool `json:"private,omitempty"`
}

// metaCache keeps metadata answers in memory and in a directory, so that a restarted node
// still has stale answers to serve while the upstream is down.
type metaCache struct {
	dir    string
	ttl    time.Duration
	now    func() time.Time
	mu     sync.Mutex
	mem    map[string]*metaEntry
	flight singleflight.Group
}

func newMetaCache(dir string, ttl time.Duration) (*metaCache, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &metaCache{dir: dir, ttl: ttl, now: time.Now, mem: map[string]*metaEntry{}}, nil
}

func metaFile(dir, key string) string {
	s := sha256.Sum256([]byte(key))
	return filepath.Join(dir, hex.EncodeToString(s[:])+".json")
}

func (c *metaCache) peek(key string) *metaEntry {
	c.mu.Lock()
	e := c.mem[key]
	c.mu.Unlock()
	if e != nil {
		return e
	}
	b, err := os.ReadFile(metaFile(c.dir, key))
	if err != nil {
		return nil
	}
	e = &metaEntry{}
	if json.Unmarshal(b, e) != nil {
		return nil
	}
	c.mu.Lock()
	if len(c.mem) < maxMemEntries {
		c.mem[key] = e
	}
	c.mu.Unlock()
	return e
}

// maxMemEntries bounds the in-memory copy; the directory keeps every answer.
const maxMemEntries = 8192

func (c *metaCache) put(key string, e *metaEntry) {
	c.mu.Lock()
	if len(c.mem) >= maxMemEntries {
		clear(c.mem)
	}
	c.mem[key] = e
	c.mu.Unlock()
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	f := metaFile(c.dir, key)
	tmp := f + ".tmp"
	if os.WriteFile(tmp, b, 0o644) == nil {
		_ = os.Rename(tmp, f)
	}
}

// get returns the cached answer for key while it is fresh, else asks fetch (once for all
// concurrent callers). When fetch fails with the upstream unavailable and an answer is
// cached, that answer is returned with stale set. Only 200 answers are cached.
func (c *metaCache) get(ctx context.Context, key string, fetch func(ctx context.Context) (*metaEntry, error)) (e *metaEntry, stale bool, err error) {
	old := c.peek(key)
	if old != nil && (old.Immutable || c.now().Sub(old.Fetched) < c.ttl) {
		return old, false, nil
	}
	v, err, _ := c.flight.Do(key, func() (any, error) {
		e, err := fetch(context.WithoutCancel(ctx))
		if err == nil && e.Status == 200 {
			e.Fetched = c.now()
			c.put(key, e)
		}
		return e, err
	})
	if err != nil {
		if old != nil && unavailable(err) {
			return old, true, nil
		}
		return nil, false, err
	}
	return v.(*metaEntry), false, nil
}
