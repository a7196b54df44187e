package mirror

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// tcpPair returns the two ends of a real loopback TCP connection.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

func randomFile(t *testing.T, size int) (*os.File, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{7}).Read(data)
	p := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, data
}

// TestSendFileSendsTheSpanAsked: the bytes from the file's offset, exactly n of them, through
// a socket buffer that fills many times over (the short-send path), and the file offset moves on.
func TestSendFileSendsTheSpanAsked(t *testing.T) {
	t.Parallel()
	f, data := randomFile(t, 24<<20)
	srv, cli := tcpPair(t)
	const off, n = 12345, 20 << 20
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(cli, n+1))
		got <- b
	}()
	sent, handled, err := sendFile(srv, f, n)
	if !handled || err != nil || sent != n {
		t.Fatalf("sendFile: sent %d, handled %v, err %v; want %d, true, nil", sent, handled, err, n)
	}
	srv.Close()
	b := <-got
	if sha256.Sum256(b) != sha256.Sum256(data[off:off+n]) {
		t.Fatalf("received %d bytes that are not the file's [%d, %d)", len(b), off, off+n)
	}
	if pos, _ := f.Seek(0, io.SeekCurrent); pos != off+n {
		t.Fatalf("file offset %d after the send, want %d", pos, off+n)
	}
}

// TestSendFileShortFile: a file that ends before the span is an error, never a silent short body.
func TestSendFileShortFile(t *testing.T) {
	t.Parallel()
	f, data := randomFile(t, 1<<20)
	srv, cli := tcpPair(t)
	go io.Copy(io.Discard, cli)
	sent, handled, err := sendFile(srv, f, 2<<20)
	if !handled || !errors.Is(err, io.ErrUnexpectedEOF) || sent != int64(len(data)) {
		t.Fatalf("sendFile past the end: sent %d, handled %v, err %v; want %d, true, ErrUnexpectedEOF", sent, handled, err, len(data))
	}
}

// TestSendFileHonoursWriteDeadline: a client that reads nothing is cut at the connection's
// write deadline (security.write_timeout relies on it), not served for ever.
func TestSendFileHonoursWriteDeadline(t *testing.T) {
	t.Parallel()
	f, _ := randomFile(t, 64<<20)
	srv, _ := tcpPair(t)
	start := time.Now()
	if err := srv.SetWriteDeadline(start.Add(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	sent, handled, err := sendFile(srv, f, 64<<20)
	if !handled || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stalled client: sent %d, handled %v, err %v; want the deadline error", sent, handled, err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the deadline (300ms) cut the send only after %s", took)
	}
}

// TestSendFileNotASocket: a connection that is not a socket is left to the caller's copy.
func TestSendFileNotASocket(t *testing.T) {
	t.Parallel()
	f, _ := randomFile(t, 1<<10)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, handled, _ := sendFile(a, f, 1<<10); handled {
		t.Fatal("sendFile claimed a net.Pipe")
	}
}

// TestSendFileManyAtOnce: concurrent sends under scheduler pressure (preemption signals cut
// sends short) all complete; none waits for a wake-up that never comes. A stalled one would
// run into its 20 s write deadline.
func TestSendFileManyAtOnce(t *testing.T) {
	t.Parallel()
	f0, data := randomFile(t, 32<<20)
	name := f0.Name()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // keeps the scheduler preempting
		x := 0
		for {
			select {
			case <-stop:
				return
			default:
				x++
			}
		}
	}()
	const n = 16
	errs := make(chan error, n)
	for range n {
		go func() {
			f, err := os.Open(name)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			srv, cli := tcpPair(t)
			srv.SetWriteDeadline(time.Now().Add(20 * time.Second))
			got := make(chan [32]byte, 1)
			go func() {
				h := sha256.New()
				io.Copy(h, cli)
				var sum [32]byte
				copy(sum[:], h.Sum(nil))
				got <- sum
			}()
			sent, _, err := sendFile(srv, f, int64(len(data)))
			srv.Close()
			if err != nil || sent != int64(len(data)) {
				errs <- fmt.Errorf("sent %d of %d: %v", sent, len(data), err)
				return
			}
			if <-got != sha256.Sum256(data) {
				errs <- errors.New("received bytes differ")
				return
			}
			errs <- nil
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
