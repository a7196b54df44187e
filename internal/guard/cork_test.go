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
	"testing"

	"golang.org/x/sys/unix"
)

// tcpCork reads TCP_CORK of the connection a request came in on.
func tcpCork(t *testing.T, r *http.Request) int {
	c := r.Context().Value(connKey{}).(*countedConn).Conn.(*net.TCPConn)
	rc, err := c.SyscallConn()
	if err != nil {
		t.Error(err)
		return -1
	}
	v := -1
	_ = rc.Control(func(fd uintptr) { v, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK) })
	return v
}

// A handler that corks its connection around a file it sends (as the mirror does for a stored
// blob) holds the socket corked only while it sends, and the client gets every byte; a context
// that does not come from the guard's server corks nothing.
func TestCorkAroundAFile(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("corked "), 150<<10) // ~1 MB
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	g, err := New(DefaultConfig(), slog.New(slog.DiscardHandler), Options{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	states := make(chan [3]int, 1)
	srv := &http.Server{Handler: g.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		before := tcpCork(t, r)
		uncork := Cork(r.Context())
		during := tcpCork(t, r)
		_ = http.NewResponseController(w).Flush()
		io.CopyN(w, f, int64(len(data)))
		uncork()
		states <- [3]int{before, during, tcpCork(t, r)}
	}))}
	g.Configure(srv)
	go srv.Serve(g.Listener(ln))
	t.Cleanup(func() { srv.Close() })

	resp, err := http.Get("http://" + ln.Addr().String() + "/v2/x/blobs/y")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(body, data) {
		t.Fatalf("read %d bytes (%v), want the file's %d", len(body), err, len(data))
	}
	if got := <-states; got != [3]int{0, 1, 0} {
		t.Fatalf("TCP_CORK before, during, after = %v, want [0 1 0]", got)
	}
	Cork(t.Context())() // not a guarded connection: nothing to do, no panic
}
