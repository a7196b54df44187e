package p2p

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Why this file exists: a blob over a libp2p stream crosses yamux (a copy into every frame,
// a receive buffer, window updates) and, with a swarm key, a second cipher (XSalsa20 under
// TLS). Measured in BenchmarkTransfer: 0.73-0.84x plain HTTPS without a key, 0.24-0.30x of
// that with one. So the blob protocol's bytes also run on a direct TCP connection of their
// own, secured by libp2p's TLS handshake (mutual: each side's certificate proves its peer ID),
// with nothing in between: one cipher, no muxer.
//
// Who may use it: the server accepts a direct connection only from a peer that (verified by
// TLS) holds a libp2p connection to it from the same IP and is not banned, and checks that
// again before every request. With a swarm key, that libp2p connection needed the key, so
// membership is proven once and the bytes are encrypted once. The asker learns the port over
// libp2p (directProtocol) and dials only the IP of its libp2p connection to that peer, from
// the local IP of that connection: never an address it did not already use. Whatever fails
// (no port, refused, timeout, wrong peer ID) sends the request over a libp2p stream, and the
// peer is not dialled directly again for directRetryAfter.
//
// On the connection: the request and response lines of the blob protocol, unchanged; the
// body in frames (a 4-byte big-endian length, then that many bytes), so that the end of a
// body cut short and a retraction (which a stream says with a close or a reset code) arrive
// in band and a connection can carry the next request once a body is complete; after a whole
// body the asker answers "DONE\n", so the server counts the upload until the asker has the
// bytes (not until they are in socket buffers), as a stream's flow control does. Idle
// connections are pooled per peer (directIdlePerPeer, directIdleTotal in all): a 4-layer
// pull pays one handshake, not four.

const (
	// directProtocol answers the port of the node's direct listener ("<port>\n").
	directProtocol = protocol.ID("/shoal/direct/1.0.0")
	// directALPN is the TLS application protocol of a direct connection.
	directALPN = "shoal-blob/1"
	// directDone is what the asker sends once it has read a whole body.
	directDone = "DONE\n"
	// frameHeader is the size of a body frame's header.
	frameHeader = 4
	// Frame headers above maxFrame are markers.
	maxFrame     = 16 << 20
	frameShort   = 0xFFFFFFFE // the body ends here, before its size (cutShort)
	frameRetract = 0xFFFFFFFF // discard the body (retract)
	// directDialTimeout bounds asking the port, dial and handshake of a direct connection (a
	// LAN peer answers in well under a millisecond); half the stall timeout bounds them when
	// shorter, so that the stream asked instead still has its own stall timeout.
	directDialTimeout = time.Second
	// directRetryAfter is how long a peer whose direct connection failed is asked over streams.
	directRetryAfter = time.Minute
	// directIdleClient closes a pooled connection idle for longer; the server waits
	// directIdleServer for the next request, so it rarely closes a connection first.
	directIdleClient = 30 * time.Second
	directIdleServer = 2 * time.Minute
	// Pool bounds: idle connections kept per peer and in all.
	directIdlePerPeer = 4
	directIdleTotal   = 64
	// maxDirectConns bounds the direct connections a node serves at once; more are closed at
	// accept (the askers use streams).
	maxDirectConns = 256
)

// errFrameRetract is what a body read returns when the sender retracted the body.
var errFrameRetract = errors.New("p2p: body retracted by the sender")

// DirectStatus counts the direct connections of a node.
type DirectStatus struct {
	// Port is the direct listener's port (0: none).
	Port int
	// Accepted counts direct connections accepted from peers; Refused those closed before a
	// request (no valid libp2p certificate, a peer not connected over libp2p or banned, over
	// the limit, a handshake too slow).
	Accepted, Refused int64
	// Served counts requests answered on direct connections; Fetched requests sent on them.
	Served, Fetched int64
	// Dials counts direct connections this node opened; DialFailures those that failed (the
	// request then went over a libp2p stream).
	Dials, DialFailures int64
	// Open is how many direct connections are open now (served and pooled/in use); Idle how
	// many of them this node keeps in its pool for the next request.
	Open, Idle int64
	// Streamed counts requests this node sent over a libp2p stream although direct
	// connections are on here: the peer has no direct port, its dial failed (now or within
	// the last minute).
	Streamed int64
}

// directState is the node's direct listeners, the connections it serves and its pool.
type directState struct {
	id *libp2ptls.Identity // nil: direct connections are off

	mu        sync.Mutex
	listeners []directListener
	serving   map[*directConn]struct{}
	idle      map[peer.ID][]*directConn
	nidle     int
	ports     map[peer.ID]int       // learnt from directProtocol, while connected
	failed    map[peer.ID]time.Time // no direct dial before this time
	closed    bool
	wg        sync.WaitGroup

	accepted, refused, served, fetched, dials, dialFails, open, streamed atomic.Int64
}

type directListener struct {
	ln   net.Listener
	ip   net.IP
	port int
}

// startDirect opens a direct listener next to each TCP listen address of the host (same IP;
// port Config.DirectPort, or the libp2p port + 1) and answers directProtocol.
func (n *Node) startDirect(life context.Context, key crypto.PrivKey) error {
	d := &n.direct
	d.serving = map[*directConn]struct{}{}
	d.idle = map[peer.ID][]*directConn{}
	d.ports = map[peer.ID]int{}
	d.failed = map[peer.ID]time.Time{}
	if n.cfg.DirectPort == DirectOff || n.opts.makeHost != nil { // a simulated host has no sockets
		return nil
	}
	var lns []directListener
	for _, a := range n.host.Network().ListenAddresses() {
		na, err := manet.ToNetAddr(a)
		if err != nil {
			continue
		}
		tcp, ok := na.(*net.TCPAddr)
		if !ok {
			continue
		}
		port, auto := n.cfg.DirectPort, n.cfg.DirectPort == 0
		if auto {
			port = tcp.Port + 1
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(tcp.IP.String(), strconv.Itoa(port)))
		if err != nil && auto {
			n.log.Warn("direct port (libp2p port + 1) taken: using a port the kernel picks; peers learn it over libp2p", "port", port, "err", err)
			ln, err = net.Listen("tcp", net.JoinHostPort(tcp.IP.String(), "0"))
		}
		if err != nil {
			for _, l := range lns {
				l.ln.Close()
			}
			return fmt.Errorf("p2p.direct_port: listen next to %s: %w", a, err)
		}
		lns = append(lns, directListener{ln: ln, ip: tcp.IP, port: ln.Addr().(*net.TCPAddr).Port})
	}
	if len(lns) == 0 {
		return nil
	}
	id, err := libp2ptls.NewIdentity(key)
	if err != nil {
		for _, l := range lns {
			l.ln.Close()
		}
		return fmt.Errorf("p2p: direct TLS identity: %w", err)
	}
	d.id = id
	d.listeners = lns
	for _, l := range lns {
		d.wg.Add(1)
		go func() { defer d.wg.Done(); n.acceptDirect(life, l.ln) }()
	}
	n.host.SetStreamHandler(directProtocol, n.serveDirectPort)
	n.host.Network().Notify(&network.NotifyBundle{DisconnectedF: func(_ network.Network, c network.Conn) {
		p := c.RemotePeer()
		if n.host.Network().Connectedness(p) == network.Connected {
			return
		}
		d.mu.Lock()
		delete(d.ports, p)
		idle := d.idle[p]
		delete(d.idle, p)
		d.nidle -= len(idle)
		d.mu.Unlock()
		for _, c := range idle {
			c.closeNow()
		}
	}})
	n.log.Info("direct blob connections", "addrs", directAddrs(lns))
	return nil
}

func directAddrs(lns []directListener) []string {
	var out []string
	for _, l := range lns {
		out = append(out, l.ln.Addr().String())
	}
	return out
}

// closeDirect closes the listeners and every direct connection, and waits for the accept
// loops (not for the goroutines serving connections: see acceptDirect).
func (n *Node) closeDirect() {
	d := &n.direct
	d.mu.Lock()
	d.closed = true
	for _, l := range d.listeners {
		l.ln.Close()
	}
	var all []*directConn
	for c := range d.serving {
		all = append(all, c)
	}
	for _, cs := range d.idle {
		all = append(all, cs...)
	}
	d.idle, d.nidle = map[peer.ID][]*directConn{}, 0
	d.mu.Unlock()
	for _, c := range all {
		c.closeNow()
	}
	d.wg.Wait()
}

// dropDirect closes every direct connection to and from p (p was banned).
func (n *Node) dropDirect(p peer.ID) {
	d := &n.direct
	d.mu.Lock()
	var drop []*directConn
	for c := range d.serving {
		if c.peer == p {
			drop = append(drop, c)
		}
	}
	drop = append(drop, d.idle[p]...)
	d.nidle -= len(d.idle[p])
	delete(d.idle, p)
	delete(d.ports, p)
	d.mu.Unlock()
	for _, c := range drop {
		c.closeNow()
	}
}

// directPort is the port of the direct listener on local IP ip (or on the unspecified
// address of its family); 0 when there is none.
func (n *Node) directPort(ip net.IP) int {
	var wildcard int
	for _, l := range n.direct.listeners {
		switch {
		case l.ip.Equal(ip):
			return l.port
		case l.ip.IsUnspecified() && (l.ip.To4() != nil) == (ip.To4() != nil):
			wildcard = l.port
		}
	}
	return wildcard
}

// serveDirectPort answers directProtocol: the port of the direct listener on the IP this
// libp2p connection arrived on.
func (n *Node) serveDirectPort(s network.Stream) {
	defer s.Close()
	ip, err := manet.ToIP(s.Conn().LocalMultiaddr())
	port := 0
	if err == nil {
		port = n.directPort(ip)
	}
	_ = s.SetWriteDeadline(time.Now().Add(n.cfg.StallTimeout))
	if port == 0 {
		_ = s.Reset()
		return
	}
	_, _ = io.WriteString(s, strconv.Itoa(port)+"\n")
}

// acceptDirect accepts direct connections until ln closes.
func (n *Node) acceptDirect(life context.Context, ln net.Listener) {
	d := &n.direct
	for {
		raw, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || life.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and the like: back off a little rather than spin.
			select {
			case <-life.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		c := &directConn{raw: raw, node: n}
		d.mu.Lock()
		if d.closed || len(d.serving) >= maxDirectConns {
			d.mu.Unlock()
			d.refused.Add(1)
			raw.Close()
			continue
		}
		d.serving[c] = struct{}{}
		d.mu.Unlock()
		d.open.Add(1)
		// Not waited for by Close, as libp2p does not wait for stream handlers: Close closes
		// the connection, but a reader of a download in flight (it ignores cancellation, so
		// a peer's follow outlives its request) may hold the goroutine until the download
		// moves; waiting made a node's Close hang as long as its own upstream did.
		go func() {
			defer func() {
				d.mu.Lock()
				delete(d.serving, c)
				d.mu.Unlock()
				c.closeNow()
			}()
			n.serveDirect(life, c)
		}()
	}
}

// directAllowed reports whether p may use a direct connection from remote IP ip: it holds a
// libp2p connection to this node from that IP and is not banned.
func (n *Node) directAllowed(p peer.ID, ip net.IP) bool {
	if n.peers.isBanned(p) {
		return false
	}
	for _, c := range n.host.Network().ConnsToPeer(p) {
		if cip, err := manet.ToIP(c.RemoteMultiaddr()); err == nil && cip.Equal(ip) {
			return true
		}
	}
	return false
}

// serveDirect runs the handshake and then answers requests until the connection ends.
func (n *Node) serveDirect(life context.Context, c *directConn) {
	d := &n.direct
	refuse := func(why string, err error) {
		d.refused.Add(1)
		n.log.Debug("direct connection refused", "remote", c.raw.RemoteAddr().String(), "why", why, "err", err)
	}
	remoteIP := c.raw.RemoteAddr().(*net.TCPAddr).IP
	conf, keyCh := d.id.ConfigForPeer("")
	conf.NextProtos = []string{directALPN}
	if err := c.secure(life, conf, false, n.cfg.StallTimeout); err != nil {
		refuse("handshake", err)
		return
	}
	pub, ok := <-keyCh
	if !ok {
		refuse("no peer key", nil)
		return
	}
	p, err := peer.IDFromPublicKey(pub)
	if err != nil {
		refuse("peer key", err)
		return
	}
	d.mu.Lock()
	c.peer = p // under the lock: dropDirect reads it
	d.mu.Unlock()
	if !n.directAllowed(p, remoteIP) {
		refuse("peer not connected over libp2p from this IP, or banned", nil)
		return
	}
	d.accepted.Add(1)
	for {
		// The next request may come much later (a pooled connection): wait for its first byte
		// within directIdleServer, then serveBlob reads the line within the stall timeout.
		_ = c.tc.SetReadDeadline(time.Now().Add(directIdleServer))
		if _, err := c.br.Peek(1); err != nil {
			return
		}
		if !n.directAllowed(p, remoteIP) {
			refuse("peer no longer connected over libp2p, or banned", nil)
			return
		}
		c.keep = false
		d.served.Add(1)
		release := n.holdConn(p)
		n.serveBlob(life, c)
		release()
		if !c.keep {
			return
		}
	}
}

// directFor returns a direct connection to p for one request (reused is true when it came
// from the pool), or nil when the request should go over a libp2p stream: direct connections
// are off here, the peer has none, or one failed lately. pooled false skips the pool.
func (n *Node) directFor(ctx context.Context, p peer.ID, pooled bool) (c *directConn, reused bool) {
	d := &n.direct
	if d.id == nil {
		return nil, false
	}
	now := time.Now()
	d.mu.Lock()
	if pooled {
		for cs := d.idle[p]; len(cs) > 0; cs = d.idle[p] {
			c := cs[len(cs)-1]
			d.idle[p] = cs[:len(cs)-1]
			d.nidle--
			if len(d.idle[p]) == 0 {
				delete(d.idle, p)
			}
			if now.Sub(c.idleSince) < directIdleClient {
				d.mu.Unlock()
				d.fetched.Add(1)
				return c, true
			}
			d.mu.Unlock()
			c.closeNow()
			d.mu.Lock()
		}
	}
	if until, ok := d.failed[p]; ok && now.Before(until) {
		d.mu.Unlock()
		return nil, false
	}
	port := d.ports[p]
	d.mu.Unlock()
	if n.host.Network().Connectedness(p) != network.Connected {
		return nil, false // openBlobConn connects first; without a connection, no address to dial
	}
	c, err := n.dialDirect(ctx, p, port)
	if err != nil {
		if ctx.Err() == nil {
			d.dialFails.Add(1)
			d.mu.Lock()
			for q, until := range d.failed { // expired entries: the map holds recent failures only
				if now.After(until) {
					delete(d.failed, q)
				}
			}
			d.failed[p] = time.Now().Add(directRetryAfter)
			delete(d.ports, p)
			d.mu.Unlock()
			n.log.Debug("no direct connection to peer: using libp2p streams", "peer", p.String(), "err", err)
		}
		return nil, false
	}
	d.fetched.Add(1)
	return c, false
}

// errNoDirect says the peer offers no direct connection.
var errNoDirect = errors.New("peer offers no direct connection")

// dialDirect opens a direct connection to p on the IP of its libp2p connection; port 0 asks
// the peer for it first.
func (n *Node) dialDirect(ctx context.Context, p peer.ID, port int) (*directConn, error) {
	d := &n.direct
	// Everything here (the port, dial, handshake) within the direct budget: a silent port must leave the stream fallback its stall timeout.
	timeout := min(directDialTimeout, n.cfg.StallTimeout/2)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if protos, err := n.host.Peerstore().GetProtocols(p); err == nil && len(protos) > 0 {
		if ok, _ := n.host.Peerstore().SupportsProtocols(p, directProtocol); len(ok) == 0 {
			return nil, errNoDirect // identify says so: no round trip
		}
	}
	var remote, local net.IP
	for _, c := range n.host.Network().ConnsToPeer(p) {
		r, err1 := manet.ToIP(c.RemoteMultiaddr())
		l, err2 := manet.ToIP(c.LocalMultiaddr())
		if err1 == nil && err2 == nil {
			remote, local = r, l
			break
		}
	}
	if remote == nil {
		return nil, errors.New("no TCP connection to the peer")
	}
	if port == 0 {
		var err error
		if port, err = n.askDirectPort(ctx, p); err != nil {
			return nil, err
		}
		d.mu.Lock()
		d.ports[p] = port
		d.mu.Unlock()
	}
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: local}}
	d.dials.Add(1)
	raw, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort(remote.String(), strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	c := &directConn{raw: raw, node: n, peer: p, asker: true}
	d.open.Add(1)
	conf, _ := d.id.ConfigForPeer(p)
	conf.NextProtos = []string{directALPN}
	dl, _ := ctx.Deadline()
	if err := c.secure(ctx, conf, true, time.Until(dl)); err != nil {
		c.closeNow()
		return nil, err
	}
	return c, nil
}

// askDirectPort asks p for the port of its direct listener over directProtocol.
func (n *Node) askDirectPort(ctx context.Context, p peer.ID) (int, error) {
	s, err := n.host.NewStream(network.WithNoDial(ctx, "direct port"), p, directProtocol)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	_ = s.CloseWrite()
	line, err := readLine(bufio.NewReaderSize(s, 16), 8)
	if err != nil {
		return 0, err
	}
	port, err := parseUint(line[:len(line)-1], 65535)
	if err != nil || port == 0 {
		return 0, fmt.Errorf("direct port %q: %v", line, err)
	}
	return int(port), nil
}

// directConn is a direct TLS connection between two nodes. On the serving side it is the
// blobConn of each exchange it carries; on the asking side the blobClient.
type directConn struct {
	node *Node
	raw  net.Conn
	tc   *tls.Conn
	br   *bufio.Reader // over tc: lines, frame headers, small reads
	peer peer.ID

	asker     bool      // this side dialled: it asks, the other side serves
	keep      bool      // serving: the exchange ended with the connection reusable
	broken    bool      // asking: a write failed, never reuse
	left      int       // asking: body bytes left in the current frame
	idleSince time.Time // asking: when it went back to the pool
	closeOnce sync.Once
}

var (
	_ blobConn   = (*directConn)(nil)
	_ blobClient = (*directConn)(nil)
)

// secure runs the TLS handshake within timeout; the config verifies the other side.
func (c *directConn) secure(ctx context.Context, conf *tls.Config, client bool, timeout time.Duration) error {
	mc, err := manet.WrapNetConn(c.raw)
	if err != nil {
		return err
	}
	cc := newCoalescingConn(mc) // TLS records in large writes, as on libp2p connections
	if client {
		c.tc = tls.Client(cc, conf)
	} else {
		c.tc = tls.Server(cc, conf)
	}
	_ = c.tc.SetDeadline(time.Now().Add(timeout))
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.tc.HandshakeContext(hctx); err != nil {
		return err
	}
	if c.tc.ConnectionState().NegotiatedProtocol != directALPN {
		return errors.New("direct connection: wrong application protocol")
	}
	_ = c.tc.SetDeadline(time.Time{})
	c.br = bufio.NewReaderSize(c.tc, 4<<10)
	return nil
}

// closeNow closes the socket at once (safe from any goroutine, more than once).
func (c *directConn) closeNow() {
	c.closeOnce.Do(func() {
		c.raw.Close()
		c.node.direct.open.Add(-1)
	})
}

// closeGracefully sends what is queued and TLS's close_notify, then closes.
func (c *directConn) closeGracefully() {
	_ = c.tc.SetWriteDeadline(time.Now().Add(c.node.cfg.StallTimeout))
	_ = c.tc.Close()
	c.closeNow()
}

func (c *directConn) Read(p []byte) (int, error)         { return c.br.Read(p) }
func (c *directConn) Write(p []byte) (int, error)        { return c.tc.Write(p) }
func (c *directConn) SetReadDeadline(t time.Time) error  { return c.tc.SetReadDeadline(t) }
func (c *directConn) SetWriteDeadline(t time.Time) error { return c.tc.SetWriteDeadline(t) }
func (c *directConn) remotePeer() peer.ID                { return c.peer }

// protocol is the blob protocol version both sides speak, as on a stream: a node that serves
// 1.1.0 answers GRANTED on a direct connection, and an asker expects it from such a peer only.
func (c *directConn) protocol() protocol.ID {
	if c.asker {
		if c.node.SpeaksGrant(c.peer.String()) {
			return blobProtocolGrant
		}
		return blobProtocol
	}
	if slices.Contains(c.node.host.Mux().Protocols(), blobProtocolGrant) {
		return blobProtocolGrant
	}
	return blobProtocol
}

func (c *directConn) writeBody(f []byte) (int, error) {
	binary.BigEndian.PutUint32(f, uint32(len(f)-frameHeader))
	nw, err := c.tc.Write(f)
	return max(nw-frameHeader, 0), err
}

func (c *directConn) end(keep bool) {
	if keep {
		c.keep = true
		return
	}
	c.closeGracefully()
}

// complete waits (within the stall timeout) for the asker's DONE line, which it sends once it
// has read the whole body: until then the bytes may sit in socket buffers, and the upload (and
// its serve slot) still counts.
func (c *directConn) complete() bool {
	_ = c.tc.SetReadDeadline(time.Now().Add(c.node.cfg.StallTimeout))
	line, err := readLine(c.br, len(directDone))
	done := err == nil && string(line) == directDone
	c.end(done)
	return done
}

// received sends DONE: the whole body arrived.
func (c *directConn) received() {
	_ = c.tc.SetWriteDeadline(time.Now().Add(c.node.cfg.StallTimeout))
	if _, err := io.WriteString(c.tc, directDone); err != nil {
		c.broken = true
	}
}

func (c *directConn) marker(m uint32) {
	var h [frameHeader]byte
	binary.BigEndian.PutUint32(h[:], m)
	_ = c.tc.SetWriteDeadline(time.Now().Add(c.node.cfg.StallTimeout))
	if _, err := c.tc.Write(h[:]); err != nil {
		c.closeNow()
		return
	}
	c.closeGracefully()
}

func (c *directConn) cutShort() { c.marker(frameShort) }
func (c *directConn) retract()  { c.marker(frameRetract) }
func (c *directConn) reset()    { c.closeNow() }

func (c *directConn) requestSent() {}

func (c *directConn) lineReader() *bufio.Reader { return c.br }

func (c *directConn) bodyReader() io.Reader { c.left = 0; return frameReader{c} }

// release puts a connection whose exchange completed back into the pool (bounded), or
// closes it.
func (c *directConn) release(ok bool) error {
	d := &c.node.direct
	if !ok || c.broken || c.br.Buffered() > 0 { // bytes beyond the answer: out of step, never reuse
		c.closeNow()
		return nil
	}
	c.idleSince = time.Now()
	d.mu.Lock()
	if d.closed || d.nidle >= directIdleTotal || len(d.idle[c.peer]) >= directIdlePerPeer {
		d.mu.Unlock()
		c.closeNow()
		return nil
	}
	d.idle[c.peer] = append(d.idle[c.peer], c)
	d.nidle++
	d.mu.Unlock()
	return nil
}

// frameReader reads a framed body off a direct connection.
type frameReader struct{ c *directConn }

func (f frameReader) Read(p []byte) (int, error) {
	c := f.c
	if c.left == 0 {
		var h [frameHeader]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			return 0, err
		}
		switch v := binary.BigEndian.Uint32(h[:]); {
		case v == frameShort:
			return 0, io.EOF
		case v == frameRetract:
			return 0, errFrameRetract
		case v == 0 || v > maxFrame:
			return 0, fmt.Errorf("direct connection: bad frame header %#x", v)
		default:
			c.left = int(v)
		}
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.br.Read(p)
	c.left -= n
	return n, err
}

// directStatus snapshots the counters.
func (n *Node) directStatus() DirectStatus {
	d := &n.direct
	st := DirectStatus{
		Accepted: d.accepted.Load(), Refused: d.refused.Load(),
		Served: d.served.Load(), Fetched: d.fetched.Load(),
		Dials: d.dials.Load(), DialFailures: d.dialFails.Load(),
		Open: d.open.Load(), Streamed: d.streamed.Load(),
	}
	d.mu.Lock()
	st.Idle = int64(d.nidle)
	if len(d.listeners) > 0 {
		st.Port = d.listeners[0].port
	}
	d.mu.Unlock()
	return st
}
