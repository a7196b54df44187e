package p2p

import (
	"context"
	"net"
	"os"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/transport"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Why this file exists: crypto/tls writes every record (≤ 16 KiB of plaintext) to the TCP
// socket with its own write(2), so a 1 GiB blob costs 65 536 syscalls and as many small TCP
// segments on the sending side. Measured here (BenchmarkTransfer), that was half of the
// sender's CPU. coalescingConn sits under the security transport and turns the records into
// large writes: Write copies into a buffer and returns, and one flusher goroutine per busy
// connection writes whatever has accumulated while its previous write(2) ran. An idle
// connection holds no buffer and a lone small message (a DHT request) goes out at once, so
// latency does not change; under a bulk transfer, encryption on one core overlaps the
// syscalls on the other.
//
// It behaves like a larger kernel send buffer: Write returns once the bytes are accepted,
// and accepted bytes are sent under the write deadline in force when they were accepted. A
// write error is sticky and returned by every later Write, as TLS and yamux expect (both
// treat it as fatal for the connection). Close first hands what was accepted to the kernel,
// for at most closeFlushTimeout, as closing a plain socket would (the last bytes are often
// TLS's close_notify).

const (
	// coalesceLimit bounds the bytes accepted but not yet written; Write blocks beyond it.
	// 256 KiB is what measured best here between 128 KiB and 2 MiB (smaller buffers stay
	// in cache).
	coalesceLimit = 256 << 10
	// closeFlushTimeout bounds how long Close spends sending what was accepted.
	closeFlushTimeout = 2 * time.Second
)

var coalesceBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, coalesceLimit+32<<10)
	return &b
}}

type coalescingConn struct {
	manet.Conn

	mu       sync.Mutex
	cond     sync.Cond
	pending  *[]byte   // accepted, not yet handed to the flusher; nil when idle
	pendDL   time.Time // write deadline of the newest accepted bytes
	deadline time.Time // write deadline set by the user of the connection
	flushing bool      // the flusher goroutine runs
	closing  time.Time // set by Close: the flusher stops sending at this time
	sockDL   time.Time // the write deadline last set on the socket (it outlives a flusher)
	err      error     // sticky: the first write error, or net.ErrClosed
	onClose  func()    // called by the first Close; nil: nothing to tell
}

func newCoalescingConn(c manet.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c}
	cc.cond.L = &cc.mu
	return cc
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var timer *time.Timer
	for c.err == nil && c.pending != nil && len(*c.pending) > 0 && len(*c.pending)+len(p) > coalesceLimit {
		if !c.deadline.IsZero() {
			if !time.Now().Before(c.deadline) {
				return 0, os.ErrDeadlineExceeded
			}
			if timer == nil {
				timer = time.AfterFunc(time.Until(c.deadline), c.wake)
				defer timer.Stop()
			}
		}
		c.cond.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	if !c.deadline.IsZero() && !time.Now().Before(c.deadline) {
		return 0, os.ErrDeadlineExceeded
	}
	if c.pending == nil {
		c.pending = coalesceBufs.Get().(*[]byte)
	}
	*c.pending = append(*c.pending, p...)
	c.pendDL = c.deadline
	if !c.flushing {
		c.flushing = true
		go c.flush()
	}
	return len(p), nil
}

func (c *coalescingConn) wake() {
	c.mu.Lock()
	c.cond.Broadcast()
	c.mu.Unlock()
}

// flush writes what accumulates until nothing is pending, then gives the buffers back.
func (c *coalescingConn) flush() {
	var spare *[]byte
	c.mu.Lock()
	for c.err == nil && c.pending != nil && len(*c.pending) > 0 {
		buf, dl := c.pending, c.pendDL
		if spare != nil {
			*spare = (*spare)[:0]
		}
		c.pending, spare = spare, nil
		if !c.closing.IsZero() && (dl.IsZero() || c.closing.Before(dl)) {
			dl = c.closing
		}
		setDL := !dl.Equal(c.sockDL)
		c.sockDL = dl
		c.mu.Unlock()
		var err error
		if setDL {
			err = c.Conn.SetWriteDeadline(dl)
		}
		if err == nil {
			_, err = c.Conn.Write(*buf)
		}
		c.mu.Lock()
		spare = buf
		if err != nil && c.err == nil {
			c.err = err
		}
		c.cond.Broadcast()
	}
	putBuf(spare)
	putBuf(c.pending)
	c.pending = nil
	c.flushing = false
	c.cond.Broadcast()
	c.mu.Unlock()
}

func putBuf(b *[]byte) {
	if b != nil && cap(*b) <= coalesceLimit+32<<10 {
		*b = (*b)[:0]
		coalesceBufs.Put(b)
	}
}

// SetWriteDeadline applies to Writes from now on; bytes already accepted keep theirs.
func (c *coalescingConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.cond.Broadcast()
	c.mu.Unlock()
	return nil
}

func (c *coalescingConn) SetDeadline(t time.Time) error {
	c.SetWriteDeadline(t)
	return c.Conn.SetReadDeadline(t)
}

// Close sends what was accepted (for at most closeFlushTimeout) and closes the socket.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	if c.flushing {
		c.closing = time.Now().Add(closeFlushTimeout)
		// Bound the write(2) that may be blocked right now; the flusher keeps the bound.
		c.sockDL = c.closing
		c.Conn.SetWriteDeadline(c.closing)
		for c.flushing {
			c.cond.Wait()
		}
	}
	if c.err == nil {
		c.err = net.ErrClosed
	}
	onClose := c.onClose
	c.onClose = nil
	c.cond.Broadcast()
	c.mu.Unlock()
	if onClose != nil {
		onClose()
	}
	return c.Conn.Close()
}

// coalescingUpgrader puts a coalescingConn under the security transport of every TCP
// connection, dialled or accepted.
type coalescingUpgrader struct {
	transport.Upgrader
	watch *inboundWatch
}

func (u coalescingUpgrader) Upgrade(ctx context.Context, t transport.Transport, c manet.Conn, dir network.Direction, p peer.ID, scope network.ConnManagementScope) (transport.CapableConn, error) {
	return u.Upgrader.Upgrade(ctx, t, newCoalescingConn(c), dir, p, scope)
}

func (u coalescingUpgrader) UpgradeGatedMaListener(t transport.Transport, l transport.GatedMaListener) transport.Listener {
	return u.Upgrader.UpgradeGatedMaListener(t, coalescingListener{l, u.watch})
}

// coalescingListener also notes every accepted connection in watch (nil: no watch).
type coalescingListener struct {
	transport.GatedMaListener
	watch *inboundWatch
}

func (l coalescingListener) Accept() (manet.Conn, network.ConnManagementScope, error) {
	c, s, err := l.GatedMaListener.Accept()
	if err != nil {
		return c, s, err
	}
	cc := newCoalescingConn(c)
	if l.watch != nil {
		remote := c.RemoteMultiaddr().String()
		l.watch.accepted(remote)
		cc.onClose = func() { l.watch.closed(remote) }
	}
	return cc, s, nil
}

// newTCPTransport is libp2p's TCP transport with coalesced writes. Without SO_REUSEPORT,
// outgoing connections use ephemeral ports: two nodes that dial each other at the same moment
// (mDNS, a DNS bootstrap of a fresh cluster) get two connections instead of one TCP
// simultaneous open that both sides try to initiate on, which fails the handshake. Port
// reuse only matters for NAT traversal, which shoal does not do.
//
// A node that listens on named IPs also dials from them (sourceDialer): without that, the
// kernel picks the source address, and a peer sees this node's connection come from an IP
// it does not listen on (127.0.0.1 for a node on 127.0.0.2; the other interface's address on
// a host with two): the peer cannot then reach this node's direct port over that connection.
func newTCPTransport(watch *inboundWatch, listen []string) func(transport.Upgrader, network.ResourceManager) (*tcp.TcpTransport, error) {
	opts := []tcp.Option{tcp.DisableReuseport()}
	if ips := listenIPs(listen); len(ips) > 0 {
		opts = append(opts, tcp.WithDialerForAddr(func(raddr ma.Multiaddr) (tcp.ContextDialer, error) {
			return sourceDialer(ips, raddr), nil
		}))
	}
	return func(up transport.Upgrader, rcmgr network.ResourceManager) (*tcp.TcpTransport, error) {
		return tcp.NewTCPTransport(coalescingUpgrader{up, watch}, rcmgr, nil, opts...)
	}
}

// listenIPs lists the specific IPs of TCP listen addresses (none for 0.0.0.0 or ::).
func listenIPs(listen []string) []net.IP {
	var ips []net.IP
	for _, s := range listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		if _, err := a.ValueForProtocol(ma.P_TCP); err != nil {
			continue
		}
		ip, err := manet.ToIP(a)
		if err != nil || ip.IsUnspecified() {
			continue
		}
		ips = append(ips, ip)
	}
	return ips
}

// sourceDialer dials raddr from the first listen IP of its family and scope (loopback to
// loopback, else not loopback); with none, the kernel picks, as libp2p's own dialer does.
func sourceDialer(ips []net.IP, raddr ma.Multiaddr) *net.Dialer {
	d := &net.Dialer{}
	rip, err := manet.ToIP(raddr)
	if err != nil {
		return d
	}
	for _, ip := range ips {
		if (ip.To4() == nil) == (rip.To4() == nil) && ip.IsLoopback() == rip.IsLoopback() {
			d.LocalAddr = &net.TCPAddr{IP: ip}
			break
		}
	}
	return d
}
