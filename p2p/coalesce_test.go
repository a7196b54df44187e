package p2p

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"

	manet "github.com/multiformats/go-multiaddr/net"
)

// tcpPair returns a coalescingConn over a real loopback TCP connection and the plain other
// end.
func tcpPair(t *testing.T) (*coalescingConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", loopbackIPs(1)[0]+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	mc, err := manet.WrapNetConn(raw)
	if err != nil {
		t.Fatal(err)
	}
	peer, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	c := newCoalescingConn(mc)
	t.Cleanup(func() { c.Close(); peer.Close() })
	return c, peer
}

func TestCoalescingConnDeliversEveryByteInOrder(t *testing.T) {
	c, peer := tcpPair(t)
	rng := rand.New(rand.NewPCG(1, 2))
	want := sha256.New()
	got := make(chan []byte, 1)
	go func() {
		h := sha256.New()
		io.Copy(h, peer)
		got <- h.Sum(nil)
	}()
	// Writes the sizes TLS records, yamux headers and DHT messages have, 48 MiB in all.
	buf := make([]byte, 70<<10)
	for total := 0; total < 48<<20; {
		n := rng.IntN(len(buf)) + 1
		if rng.IntN(4) == 0 {
			n = rng.IntN(64) + 1
		}
		for i := range buf[:n] {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := c.Write(buf[:n]); err != nil {
			t.Fatal(err)
		}
		want.Write(buf[:n])
		total += n
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if h := <-got; !bytes.Equal(h, want.Sum(nil)) {
		t.Fatal("the reader got other bytes than were written")
	}
}

func TestCoalescingConnCloseSendsWhatItAccepted(t *testing.T) {
	c, peer := tcpPair(t)
	msg := randomBlob(7, 3<<20)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	for off := 0; off < len(msg); off += 16 << 10 {
		if _, err := c.Write(msg[off:min(off+16<<10, len(msg))]); err != nil {
			t.Fatal(err)
		}
	}
	// What TLS's Close does: the close_notify alert is written, then the deadline is set to
	// now so later writes fail, then the connection is closed.
	if _, err := c.Write([]byte("close_notify")); err != nil {
		t.Fatal(err)
	}
	c.SetWriteDeadline(time.Now())
	if _, err := c.Write([]byte("late")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a write after the deadline: %v, want a deadline error", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	b := <-got
	if want := append(msg, "close_notify"...); !bytes.Equal(b, want) {
		t.Fatalf("the peer got %d bytes, want the %d accepted before Close", len(b), len(want))
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("a write after Close: %v, want net.ErrClosed", err)
	}
}

func TestCoalescingConnWriteDeadlineWhenPeerStopsReading(t *testing.T) {
	c, _ := tcpPair(t) // the peer never reads: the kernel buffers fill, then ours
	if err := c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	done := make(chan error, 1)
	var accepted int
	go func() {
		for {
			n, err := c.Write(chunk)
			accepted += n
			if err != nil {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("blocked write ended with %v, want a deadline error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a write blocked on a full buffer ignored its deadline")
	}
	if accepted <= coalesceLimit {
		t.Fatalf("only %d bytes accepted: the kernel's buffer should have taken more", accepted)
	}
}

func TestCoalescingConnErrorIsSticky(t *testing.T) {
	c, peer := tcpPair(t)
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close() // a reset: the flusher's writes fail
	chunk := make([]byte, 64<<10)
	var err error
	for i := 0; i < 10000 && err == nil; i++ {
		_, err = c.Write(chunk)
	}
	if err == nil {
		t.Fatal("writes to a reset connection kept succeeding")
	}
	if _, err2 := c.Write([]byte("x")); err2 == nil {
		t.Fatalf("after %v, a later write succeeded", err)
	}
}

func TestCoalescingConnIdleHoldsNoBuffer(t *testing.T) {
	c, peer := tcpPair(t)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(peer, b); err != nil || string(b) != "ping" {
		t.Fatalf("read %q, %v", b, err)
	}
	// The flusher exits right after its write; wait for it through the condition it signals.
	c.mu.Lock()
	for c.flushing {
		c.cond.Wait()
	}
	idle := c.pending == nil
	c.mu.Unlock()
	if !idle {
		t.Fatal("an idle connection still holds its write buffer")
	}
}

// A deadline the socket got for earlier bytes must not fail later bytes written without one
// (the upgrader sets a handshake deadline, then clears it).
func TestCoalescingConnClearedDeadlineStaysCleared(t *testing.T) {
	c, peer := tcpPair(t)
	dl := time.Now().Add(200 * time.Millisecond)
	c.SetWriteDeadline(dl)
	if _, err := c.Write([]byte("first")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(peer, b); err != nil {
		t.Fatal(err)
	}
	c.SetWriteDeadline(time.Time{})
	<-time.After(time.Until(dl) + 50*time.Millisecond) // the old deadline must have passed
	if _, err := c.Write([]byte("second")); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	b = make([]byte, 6)
	if _, err := io.ReadFull(peer, b); err != nil || string(b) != "second" {
		t.Fatalf("after clearing the deadline, the peer read %q, %v", b, err)
	}
}
