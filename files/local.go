package files

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// ErrMismatch is returned when a file's bytes do not match the digest its upstream states.
var ErrMismatch = errors.New("file content does not match its digest")

// ErrTooLarge is returned for a node-local file larger than Config.MaxLocalSize.
var ErrTooLarge = errors.New("file too large to keep on the node")

// localCache keeps files that cannot be shared with peers: small Hugging Face files verified
// by their git blob sha1, and files without any digest (keyed by URL; their validators kept
// for revalidation). Files appear only by rename, whole and checked.
type localCache struct {
	dir    string
	max    int64 // one file
	total  int64 // all files; least recently served go first (0: no bound)
	flight singleflight.Group
	mu     sync.Mutex // trim
}

func newLocalCache(dir string, max, total int64) (*localCache, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &localCache{dir: dir, max: max, total: total}, nil
}

// touch marks a file as just served (its mtime orders eviction).
func (l *localCache) touch(f *os.File) {
	now := time.Now()
	_ = os.Chtimes(f.Name(), now, now)
}

// trim removes the least recently served files until the cache fits its total bound.
func (l *localCache) trim() {
	if l.total <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ents, err := os.ReadDir(l.dir)
	if err != nil {
		return
	}
	type kept struct {
		path string
		size int64
		mt   time.Time
	}
	var all []kept
	var sum int64
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue // a fill in progress
		}
		if fi, err := e.Info(); err == nil {
			all = append(all, kept{filepath.Join(l.dir, e.Name()), fi.Size(), fi.ModTime()})
			sum += fi.Size()
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mt.Before(all[j].mt) })
	for _, k := range all {
		if sum <= l.total {
			return
		}
		if os.Remove(k.path) == nil { // an open reader keeps its bytes until it closes
			sum -= k.size
		}
	}
}

func (l *localCache) path(key string) string {
	s := sha256.Sum256([]byte(key))
	return filepath.Join(l.dir, hex.EncodeToString(s[:]))
}

// open returns the kept file for key, if there is one.
func (l *localCache) open(key string) (*os.File, error) { return os.Open(l.path(key)) }

// gitBlobSHA1 starts the hash git names a blob by: sha1("blob <len>\0" + content).
func gitBlobSHA1(size int64) hash.Hash {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", size)
	return h
}

// fill downloads body (of size bytes, -1 unknown) into the cache under key, once for all
// concurrent callers. check, when set, must accept the content's hash before the file is kept.
func (l *localCache) fill(ctx context.Context, key string, open func(ctx context.Context) (io.ReadCloser, int64, error), wantSHA1 string) error {
	_, err, _ := l.flight.Do(key, func() (any, error) {
		if _, err := os.Stat(l.path(key)); err == nil {
			return nil, nil
		}
		rc, size, err := open(context.WithoutCancel(ctx))
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		if l.max > 0 && size > l.max {
			return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, size)
		}
		tmp, err := os.CreateTemp(l.dir, ".fill-*")
		if err != nil {
			return nil, err
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		var h hash.Hash
		w := io.Writer(tmp)
		if wantSHA1 != "" {
			if size < 0 {
				return nil, errors.New("a file checked by its git sha1 needs its size")
			}
			h = gitBlobSHA1(size)
			w = io.MultiWriter(tmp, h)
		}
		lim := l.max
		if lim <= 0 {
			lim = 1 << 62
		}
		n, err := io.Copy(w, io.LimitReader(rc, lim+1))
		switch {
		case err != nil:
			return nil, err
		case n > lim:
			return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, lim)
		case size >= 0 && n != size:
			return nil, fmt.Errorf("%w: got %d bytes, expected %d", ErrMismatch, n, size)
		case h != nil && hex.EncodeToString(h.Sum(nil)) != wantSHA1:
			return nil, fmt.Errorf("%w: git sha1 %s expected", ErrMismatch, wantSHA1)
		}
		if err := tmp.Sync(); err != nil {
			return nil, err
		}
		if err := os.Rename(tmp.Name(), l.path(key)); err != nil {
			return nil, err
		}
		l.trim()
		return nil, nil
	})
	return err
}

// serve answers a request from a kept file, with Range support.
func serveFile(w http.ResponseWriter, r *http.Request, f *os.File) {
	st, err := f.Stat()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/octet-stream")
	}
	w.Header().Set("Accept-Ranges", "bytes")
	http.ServeContent(w, r, "", st.ModTime(), f)
}
