package fetch

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-mirror/shoal/store"
)

// pausingFront sends the first n bytes of every blob GET (once armed), then pauses until
// resume closes: a source that sends a little and stops, as a slow or stalled upstream does.
func pausingFront(n int, armed *atomic.Bool, resume <-chan struct{}) func(w http.ResponseWriter, r *http.Request, next http.Handler) {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") || !armed.Load() {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r) // the real registry's answer
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		body := rec.Body.Bytes()
		if rec.Code != http.StatusOK || len(body) <= n {
			w.Write(body)
			return
		}
		w.Write(body[:n])
		http.NewResponseController(w).Flush()
		select {
		case <-resume:
		case <-r.Context().Done():
			return
		}
		w.Write(body[n:])
	}
}

// TestPausedSourcePublishesWhatArrived: the upstream sends the first n bytes of a blob (less
// than the 64 KiB a download gathers per write) and pauses. A client of this node and a peer
// following the download both get those n bytes while the upstream pauses; once it goes on,
// the client gets the whole blob and it is stored. (The download used to hold them back until
// 64 KiB had gathered or the stream ended: a ~1 KiB config never reached a follower, whose
// stall bound then cut it.)
func TestPausedSourcePublishesWhatArrived(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1000, 40 << 10} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			var armed atomic.Bool
			resume := make(chan struct{})
			var once sync.Once
			goOn := func() { once.Do(func() { close(resume) }) }
			host, up, d, data := testRegistryWith(t, "test/app", "", pausingFront(n, &armed, resume))
			armed.Store(true)
			st, err := store.Open(t.Context(), storeConfig(t.TempDir()), nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			f := New(Options{Store: st, Upstream: up, Log: slog.New(slog.DiscardHandler)})
			t.Cleanup(func() { f.Shutdown(context.Background()) })
			t.Cleanup(goOn) // before the shutdown, which waits for the download

			ref := Ref{Registry: host, Repo: "test/app"}
			b, err := f.Blob(t.Context(), ref, d, f.Opener(ref, d))
			if err != nil || b.Fill == nil {
				t.Fatalf("starting the download: %+v, %v", b, err)
			}
			defer b.Fill.Release()
			// The upstream pauses for as long as the test wants: 5 s is the deadline for bytes
			// that are already here (a peer's stall bound).
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			size, err := b.Fill.WaitStarted(ctx)
			if err != nil {
				t.Fatal(err)
			}

			client := b.Fill.ClientReader(ctx, 0, size, true, 0)
			got := make([]byte, n)
			if _, err := io.ReadFull(client, got); err != nil {
				t.Fatalf("a client got no %d bytes while the upstream paused after them: %v", n, err)
			}
			if !bytes.Equal(got, data[:n]) {
				t.Fatal("a client got wrong bytes")
			}

			rc, psize, err := f.PeerContent(slog.New(slog.DiscardHandler)).OpenForPeer(ctx, d, 0)
			if err != nil || psize != int64(len(data)) {
				t.Fatalf("a peer following the download: size %d, %v", psize, err)
			}
			defer rc.Close()
			peerGot := make(chan []byte, 1)
			go func() {
				b := make([]byte, n)
				k, _ := io.ReadFull(rc, b)
				peerGot <- b[:k]
			}()
			select {
			case b := <-peerGot:
				if !bytes.Equal(b, data[:n]) {
					t.Fatalf("a peer got %d bytes, want the first %d", len(b), n)
				}
			case <-ctx.Done():
				t.Fatalf("a peer got no %d bytes while the upstream paused after them", n)
			}

			goOn()
			client.SetContext(t.Context())
			rest, err := io.ReadAll(client)
			if err != nil || !bytes.Equal(append(got, rest...), data) {
				t.Fatalf("the whole blob: %d bytes, %v", n+len(rest), err)
			}
			if _, err := f.WaitStored(t.Context(), d, nil); err != nil {
				t.Fatalf("the blob is not stored: %v", err)
			}
		})
	}
}
