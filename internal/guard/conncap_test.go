package guard

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-mirror/shoal/internal/testutil"
)

// A file a handler copies to the client reaches Options.SendFrom through the guard's counted
// connection (that is how stored blobs and downloads in flight go out with sendfile), and the
// connection copies by itself when SendFrom declines; the client gets the same bytes either way
// and the connection is counted while open.
func TestListenerHandsFilesToSendFrom(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("shoal guard "), 100<<10) // 1.2 MB
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, take := range []bool{true, false} {
		var calls, files atomic.Int32
		send := func(c net.Conn, src io.Reader) (int64, bool, error) {
			calls.Add(1)
			if lr, ok := src.(*io.LimitedReader); ok {
				src = lr.R
			}
			if _, ok := src.(*os.File); ok {
				files.Add(1)
			}
			if !take {
				return 0, false, nil
			}
			n, err := io.Copy(c, src)
			return n, true, err
		}
		g, err := New(DefaultConfig(), slog.New(slog.DiscardHandler), Options{Listen: "127.0.0.1:0", SendFrom: send})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: g.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f, err := os.Open(path)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			defer f.Close()
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			io.CopyN(w, f, int64(len(data))) // as the mirror serves stored blobs
		}))}
		g.Configure(srv)
		go srv.Serve(g.Listener(ln))
		t.Cleanup(func() { srv.Close() })

		hc := &http.Client{Transport: &http.Transport{}}
		resp, err := hc.Get("http://" + ln.Addr().String() + "/v2/x/blobs/y")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(body, data) {
			t.Fatalf("SendFrom takes=%v: read %d bytes (%v), want the file's %d", take, len(body), err, len(data))
		}
		if calls.Load() != 1 || files.Load() != 1 {
			t.Errorf("SendFrom takes=%v: called %d times with %d files, want once with the file", take, calls.Load(), files.Load())
		}
		if n := g.Conns(); n != 1 {
			t.Errorf("open connections while the client keeps its connection: %d, want 1", n)
		}
		hc.CloseIdleConnections()
		testutil.WaitFor(t, 5*time.Second, "the closed connection to be released", func() bool { return g.Conns() == 0 })
	}
}
