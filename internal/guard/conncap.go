package guard

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// DefaultMaxConnsPerClient bounds the mirror connections one client (IPv4 address, IPv6 /64)
// holds open. Every client on a node is 127.0.0.1, so it must cover containerd and dockerd
// pulling many layers at once plus kubelet and crictl churn: it is 4× the requests in progress
// a client may have (max_concurrent_per_client, 128), leaving room for their idle keep-alive
// connections, and half of the smallest common fd limit (1024), so that one address never
// takes every descriptor the process has for its store, peers and metrics.
const DefaultMaxConnsPerClient = 512

// connCap counts the mirror's open connections per client. A connection beyond the policy's
// max_conns_per_client is closed as soon as it is accepted, before any byte is read.
type connCap struct {
	g        *Guard
	sendFrom func(net.Conn, io.Reader) (int64, bool, error) // Options.SendFrom; nil: none
	mu       sync.Mutex
	open     map[netip.Prefix]int
	refused  atomic.Int64
	warn     rate.Sometimes
}

func newConnCap(g *Guard, sendFrom func(net.Conn, io.Reader) (int64, bool, error)) *connCap {
	return &connCap{g: g, sendFrom: sendFrom, open: map[netip.Prefix]int{}, warn: rate.Sometimes{Interval: time.Minute}}
}

// Conns is the number of open mirror connections (shoal_http_open_connections).
func (g *Guard) Conns() int { return g.conns.total() }

// ConnsRefused counts the connections closed as soon as accepted because their client held
// max_conns_per_client already (shoal_guard_connections_refused_total).
func (g *Guard) ConnsRefused() int64 { return g.conns.refused.Load() }

// listener counts ln's connections and closes those over the cap.
func (cc *connCap) listener(ln net.Listener) net.Listener { return &capListener{Listener: ln, cc: cc} }

type capListener struct {
	net.Listener
	cc *connCap
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ac, ok := l.cc.admit(c); ok {
			return ac, nil
		}
	}
}

// admit counts c against its client, or closes it when the client is at the cap.
func (cc *connCap) admit(c net.Conn) (net.Conn, bool) {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil { // not TCP (tests on pipes): not counted
		return c, true
	}
	key := clientKey(ap.Addr().Unmap())
	limit := cc.g.policy.Load().maxConns
	cc.mu.Lock()
	n := cc.open[key]
	if limit > 0 && n >= limit {
		cc.mu.Unlock()
		_ = c.Close()
		total := cc.refused.Add(1)
		cc.warn.Do(func() {
			cc.g.log.Warn("mirror connection refused: the client holds security.max_conns_per_client connections already (logged once a minute)",
				"client", key.String(), "open", n, "max", limit, "refused_total", total)
		})
		return nil, false
	}
	cc.open[key] = n + 1
	cc.mu.Unlock()
	return &countedConn{Conn: c, send: cc.sendFrom, release: func() { cc.release(key) }}, true
}

func (cc *connCap) release(key netip.Prefix) {
	cc.mu.Lock()
	if cc.open[key] <= 1 {
		delete(cc.open, key)
	} else {
		cc.open[key]--
	}
	cc.mu.Unlock()
}

// total is the number of open mirror connections.
func (cc *connCap) total() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	n := 0
	for _, v := range cc.open {
		n += v
	}
	return n
}

// countedConn gives its slot back when closed. It passes ReadFrom (to Options.SendFrom first)
// and CloseWrite through, so that net/http still sends files with sendfile and closes
// connections gracefully.
type countedConn struct {
	net.Conn
	send    func(net.Conn, io.Reader) (int64, bool, error)
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

func (c *countedConn) ReadFrom(r io.Reader) (int64, error) {
	if c.send != nil {
		if n, handled, err := c.send(c.Conn, r); handled {
			return n, err
		}
	}
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
