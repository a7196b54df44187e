package p2p

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/opencontainers/go-digest"
)

// directPair starts a server holding blobs and a client joined to it (cfg sets both up).
func directPair(t *testing.T, cfg func(ip string) Config, content Content) (srv, cli *testNode) {
	t.Helper()
	ips := loopbackIPs(2)
	srv = startNode(t, cfg(ips[0]), nil, nodeOpt{content: content})
	cli = startNode(t, bootstrapTo(cfg(ips[1]), srv), nil)
	waitRT(t, cli, 1)
	return srv, cli
}

// directAddr is the address of srv's direct listener.
func directAddr(t *testing.T, srv *testNode) string {
	t.Helper()
	l := srv.direct.listeners
	if len(l) != 1 {
		t.Fatalf("%d direct listeners, want 1", len(l))
	}
	return l[0].ln.Addr().String()
}

// Blob bytes go over the direct connection, with and without a swarm key; a 4-blob pull pays
// one dial; peer stats count the bytes as on streams.
func TestDirectFetch(t *testing.T) {
	for _, keyed := range []bool{false, true} {
		t.Run(map[bool]string{false: "no key", true: "swarm key"}[keyed], func(t *testing.T) {
			key := writeSwarmKey(t)
			cfg := func(ip string) Config {
				c := testConfig(ip)
				if keyed {
					c.SwarmKeyFile = key
				}
				return c
			}
			var blobs [][]byte
			for i := range 4 {
				blobs = append(blobs, randomBlob(uint64(40+i), (1<<20)+i*4097))
			}
			srv, cli := directPair(t, cfg, newMemContent(blobs...))
			var total int64
			for _, b := range blobs {
				got, size, err := fetchAll(t, cli, peerOf(srv), digest.FromBytes(b), 0)
				if err != nil || size != int64(len(b)) || !bytes.Equal(got, b) {
					t.Fatalf("fetch: %d of %d bytes, %v", len(got), len(b), err)
				}
				total += size
			}
			// A Range request (offset) too.
			got, _, err := fetchAll(t, cli, peerOf(srv), digest.FromBytes(blobs[0]), 1000)
			if err != nil || !bytes.Equal(got, blobs[0][1000:]) {
				t.Fatalf("fetch from offset 1000: %d bytes, %v", len(got), err)
			}
			total += int64(len(blobs[0]) - 1000)
			ss, cs := srv.Status().Direct, cli.Status().Direct
			t.Logf("server %+v, client %+v", ss, cs)
			if ss.Served != 5 || cs.Fetched != 5 {
				t.Fatalf("direct requests: served %d, fetched %d; want 5 and 5 (every blob over the direct connection)", ss.Served, cs.Fetched)
			}
			if cs.Dials != 1 || ss.Accepted != 1 {
				t.Fatalf("5 sequential fetches dialled %d direct connections (server accepted %d), want 1: the idle one is reused", cs.Dials, ss.Accepted)
			}
			if cs.Streamed != 0 {
				t.Fatalf("client sent %d requests over streams, want none", cs.Streamed)
			}
			// The client's connection goes back to its pool once the body is read.
			waitFor(t, 5*time.Second, "the client's direct connection idle in its pool", func() bool { return cli.Status().Direct.Idle == 1 })
			for _, p := range cli.Status().Peers {
				if p.ID == srv.ID() && p.BytesIn != total {
					t.Fatalf("client counted %d bytes in from the server, want %d", p.BytesIn, total)
				}
			}
			for _, p := range srv.Status().Peers {
				if p.ID == cli.ID() && p.BytesOut != total {
					t.Fatalf("server counted %d bytes out to the client, want %d", p.BytesOut, total)
				}
			}
		})
	}
}

// A peer without a direct listener, or whose direct port refuses, still serves the blob over a
// libp2p stream; a refused port is not dialled again for every blob.
func TestDirectFallback(t *testing.T) {
	blob := randomBlob(51, 300<<10)
	d := digest.FromBytes(blob)
	t.Run("off on the server", func(t *testing.T) {
		srv, cli := directPair(t, func(ip string) Config {
			c := testConfig(ip)
			if ip[len(ip)-2:] == ".1" {
				c.DirectPort = DirectOff
			}
			return c
		}, newMemContent(blob))
		if len(srv.direct.listeners) != 0 {
			t.Fatal("direct_port -1 still listens")
		}
		for range 2 {
			if got, _, err := fetchAll(t, cli, peerOf(srv), d, 0); err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("fetch: %d bytes, %v", len(got), err)
			}
		}
		if cs := cli.Status().Direct; cs.Fetched != 0 || cs.Dials != 0 || cs.Streamed != 2 {
			t.Fatalf("client direct counters %+v: want no direct request, 2 over streams", cs)
		}
	})
	t.Run("port closed", func(t *testing.T) {
		srv, cli := directPair(t, testConfig, newMemContent(blob))
		srv.direct.listeners[0].ln.Close() // the port answers RST from now on
		for range 3 {
			if got, _, err := fetchAll(t, cli, peerOf(srv), d, 0); err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("fetch: %d bytes, %v", len(got), err)
			}
		}
		cs := cli.Status().Direct
		if cs.Dials != 1 || cs.DialFailures != 1 || cs.Fetched != 0 || cs.Streamed != 3 {
			t.Fatalf("client direct counters %+v: want one failed dial, then streams without dialling again (3 requests)", cs)
		}
	})
	t.Run("port answers nothing", func(t *testing.T) {
		// As behind a firewall that drops what it does not like, or a frozen listener: the
		// TCP connection opens, the handshake never completes; the asker gives up within the
		// dial timeout, fetches over a stream, and does not try again for every blob.
		srv, cli := directPair(t, testConfig, newMemContent(blob))
		addr := directAddr(t, srv)
		srv.direct.listeners[0].ln.Close()
		hole, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		defer func() { hole.Close(); <-done }()
		go func() {
			defer close(done)
			var held []net.Conn
			for {
				c, err := hole.Accept()
				if err != nil {
					for _, c := range held {
						c.Close()
					}
					return
				}
				held = append(held, c)
			}
		}()
		within(t, "fetch past a silent direct port", directDialTimeout, func() {
			if got, _, err := fetchAll(t, cli, peerOf(srv), d, 0); err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("fetch: %d bytes, %v", len(got), err)
			}
		})
		within(t, "the next fetch", 200*time.Millisecond, func() {
			if got, _, err := fetchAll(t, cli, peerOf(srv), d, 0); err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("fetch: %d bytes, %v", len(got), err)
			}
		})
		if cs := cli.Status().Direct; cs.Dials != 1 || cs.DialFailures != 1 || cs.Fetched != 0 {
			t.Fatalf("client direct counters %+v: want one failed dial, then streams", cs)
		}
	})
}

// dialTLS opens a TLS connection to addr (from local IP from, if set) as the holder of key,
// expecting server to be the peer.
func dialTLS(t *testing.T, addr string, key crypto.PrivKey, server peer.ID, from string) (*tls.Conn, error) {
	t.Helper()
	id, err := libp2ptls.NewIdentity(key)
	if err != nil {
		t.Fatal(err)
	}
	conf, _ := id.ConfigForPeer(server)
	conf.NextProtos = []string{directALPN}
	dialer := net.Dialer{Timeout: time.Second}
	if from != "" {
		dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	raw, err := dialer.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	tc := tls.Client(raw, conf)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	return tc, tc.Handshake()
}

// closedQuickly reads from c until it fails and says how long that took; no response line
// may come.
func closedQuickly(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(within + 2*time.Second))
	b, err := io.ReadAll(c)
	took := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || took > within+500*time.Millisecond {
		t.Fatalf("connection still open after %v (read %q, %v)", took, b, err)
	}
	if bytes.Contains(b, []byte("OK")) {
		t.Fatalf("an outsider got an answer: %q", b)
	}
}

// On the direct port, only a peer connected over libp2p gets an answer: a connection without a
// libp2p certificate, with a valid certificate of a peer not connected (as a node of another
// swarm has), or that says nothing, is closed within the stall timeout and counted.
func TestDirectOutsiders(t *testing.T) {
	blob := randomBlob(52, 64<<10)
	d := digest.FromBytes(blob)
	key := writeSwarmKey(t)
	srv, cli := directPair(t, func(ip string) Config { c := testConfig(ip); c.SwarmKeyFile = key; return c }, newMemContent(blob))
	addr := directAddr(t, srv)
	stall := srv.cfg.StallTimeout
	refused := func() int64 { return srv.Status().Direct.Refused }

	t.Run("not TLS", func(t *testing.T) {
		before := refused()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, string(d)+" 0 local\n")
		closedQuickly(t, c, stall)
		waitFor(t, 2*time.Second, "the refusal to be counted", func() bool { return refused() == before+1 })
	})
	t.Run("silent", func(t *testing.T) {
		before := refused()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		closedQuickly(t, c, stall)
		waitFor(t, 2*time.Second, "the refusal to be counted", func() bool { return refused() == before+1 })
	})
	t.Run("valid certificate, not connected", func(t *testing.T) {
		// A node of another swarm: its own libp2p identity, no libp2p connection (the key
		// kept it out).
		k, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			t.Fatal(err)
		}
		before := refused()
		tc, err := dialTLS(t, addr, k, srv.host.ID(), "")
		if err == nil { // TLS 1.3: the client may finish before the server checked it
			io.WriteString(tc, string(d)+" 0 local\n")
			closedQuickly(t, tc, stall)
		}
		waitFor(t, 2*time.Second, "the refusal to be counted", func() bool { return refused() == before+1 })
	})
	t.Run("a member's certificate from a non-member", func(t *testing.T) {
		// Who dials with cli's key but is not cli's libp2p connection (another IP) is refused.
		k := cli.host.Peerstore().PrivKey(cli.host.ID())
		before := refused()
		tc, err := dialTLS(t, addr, k, srv.host.ID(), loopbackIPs(1)[0])
		if err == nil {
			io.WriteString(tc, string(d)+" 0 local\n")
			closedQuickly(t, tc, stall)
		}
		waitFor(t, 2*time.Second, "the refusal to be counted", func() bool { return refused() == before+1 })
	})
	t.Run("slow request line", func(t *testing.T) {
		// A connected peer that opens a direct connection and then dribbles: closed after the
		// stall timeout, no slot held.
		c, _ := cli.directFor(t.Context(), srv.host.ID(), false)
		if c == nil {
			t.Fatal("no direct connection")
		}
		defer c.closeNow()
		before := srv.Status().BadRequests
		io.WriteString(c, "sha256:")
		closedQuickly(t, c.raw, stall)
		waitFor(t, 2*time.Second, "the slow request to be counted", func() bool { return srv.Status().BadRequests == before+1 })
	})
	t.Run("bad request line", func(t *testing.T) {
		c, _ := cli.directFor(t.Context(), srv.host.ID(), false)
		if c == nil {
			t.Fatal("no direct connection")
		}
		defer c.closeNow()
		before := srv.Status().BadRequests
		io.WriteString(c, "GET / HTTP/1.1\n")
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if line != statusBadRequest+"\n" {
			t.Fatalf("bad request answered %q, %v", line, err)
		}
		closedQuickly(t, c.raw, stall)
		if n := srv.Status().BadRequests; n != before+1 {
			t.Fatalf("%d bad requests counted, want %d", n, before+1)
		}
	})
	// The member itself still fetches.
	if got, _, err := fetchAll(t, cli, peerOf(srv), d, 0); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("member fetch: %d bytes, %v", len(got), err)
	}
	if srv.Status().Direct.Served == 0 {
		t.Fatal("the member's fetch did not go direct")
	}
}

// retracting sends the first cut bytes of data and then fails with ErrRetracted.
type retracting struct {
	data []byte
	cut  int
}

func (c retracting) OpenForPeer(_ context.Context, _ digest.Digest, off int64) (io.ReadCloser, int64, error) {
	return io.NopCloser(io.MultiReader(bytes.NewReader(c.data[off:c.cut]), errReader{ErrRetracted})), int64(len(c.data)), nil
}

func (retracting) ShareList(context.Context) ([]digest.Digest, error) { return nil, nil }

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// stalling sends the first cut bytes of data and then nothing until the test ends.
type stalling struct {
	data    []byte
	cut     int
	release chan struct{}
}

func (c stalling) OpenForPeer(_ context.Context, _ digest.Digest, off int64) (io.ReadCloser, int64, error) {
	return io.NopCloser(io.MultiReader(bytes.NewReader(c.data[off:c.cut]), blockReader(c.release))), int64(len(c.data)), nil
}

func (stalling) ShareList(context.Context) ([]digest.Digest, error) { return nil, nil }

type blockReader chan struct{}

func (r blockReader) Read([]byte) (int, error) { <-r; return 0, io.ErrUnexpectedEOF }

// What a stream says with a reset code or a half-close, a direct connection says in band:
// a retraction, a body cut short (the bytes kept, resumable), a stall, an offset beyond the
// size; and the connection that carried a complete answer without a body is reused.
func TestDirectEndings(t *testing.T) {
	blob := randomBlob(53, 2<<20)
	d := digest.FromBytes(blob)
	release := make(chan struct{}) // closed before the stalling server closes
	for _, tc := range []struct {
		name    string
		content Content
		offset  int64
		check   func(t *testing.T, got []byte, err error)
	}{
		{"retract", retracting{blob, 700 << 10}, 0, func(t *testing.T, got []byte, err error) {
			if !errors.Is(err, ErrRetracted) {
				t.Fatalf("got %d bytes, then %v; want ErrRetracted", len(got), err)
			}
		}},
		{"cut short", truncating{blob, 900 << 10}, 0, func(t *testing.T, got []byte, err error) {
			if !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != 900<<10 || !bytes.Equal(got, blob[:len(got)]) {
				t.Fatalf("got %d bytes, then %v; want the first %d and io.ErrUnexpectedEOF", len(got), err, 900<<10)
			}
		}},
		{"stall", stalling{blob, 300 << 10, release}, 0, func(t *testing.T, got []byte, err error) {
			if !errors.Is(err, ErrStalled) || !bytes.Equal(got, blob[:len(got)]) {
				t.Fatalf("got %d bytes, then %v; want ErrStalled", len(got), err)
			}
		}},
		{"offset beyond the size", newMemContent(blob), int64(len(blob)) + 1, func(t *testing.T, got []byte, err error) {
			if err == nil || errors.Is(err, ErrNotFound) {
				t.Fatalf("fetch beyond the size: %v", err)
			}
		}},
		{"not found", newMemContent(), 0, func(t *testing.T, got []byte, err error) {
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("fetch of an absent blob: %v, want ErrNotFound", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, cli := directPair(t, testConfig, tc.content)
			if _, ok := tc.content.(stalling); ok {
				t.Cleanup(func() { close(release) }) // runs before the nodes close
			}
			// Twice: the second request goes on the pooled connection, or a fresh one.
			for i := 1; i <= 2; i++ {
				var got []byte
				var err error
				within(t, tc.name, 2*cli.cfg.StallTimeout, func() {
					got, _, err = fetchAll(t, cli, peerOf(srv), d, tc.offset)
				})
				tc.check(t, got, err)
				if s := srv.Status().Direct.Served; s != int64(i) {
					t.Fatalf("server answered %d direct requests, want %d", s, i)
				}
			}
		})
	}
}

// The redirect and grant answers of the blob protocol (redirect_test.go, designated_test.go)
// arrive over a direct connection too: those tests' nodes have direct ports; here, the proof
// that the answers did travel on one.
func TestDirectCarriesRedirectAndGrant(t *testing.T) {
	blob := randomBlob(54, 64<<10)
	d, _, fetcher, first, second := grantingTrio(t, blob)
	if _, _, err := first.FetchVia(t.Context(), peerOf(fetcher), d, 0, "docker.io", "library/alpine"); !errors.Is(err, ErrGranted) {
		t.Fatalf("the first asker: %v, want ErrGranted", err)
	}
	if f := first.Status().Direct.Fetched; f != 1 {
		t.Fatalf("the grant came on %d direct requests, want 1", f)
	}
	rc, _, err := second.FetchVia(t.Context(), peerOf(fetcher), d, 0, "docker.io", "library/alpine")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("the second asker: %d bytes, %v", len(got), err)
	}
	if f := second.Status().Direct.Fetched; f != 1 {
		t.Fatalf("the swarm fetch came on %d direct requests, want 1", f)
	}
}

// The port a node answers over /shoal/direct/1.0.0 is its direct listener's, on the IP the
// asker reached it on; the default is the libp2p port + 1.
func TestDirectPortDefault(t *testing.T) {
	ip := loopbackIPs(1)[0]
	ln, err := net.Listen("tcp", ip+":0") // find a free port pair
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	c := testConfig(ip)
	c.Listen = []string{"/ip4/" + ip + "/tcp/" + strconv.Itoa(port)}
	n := startNode(t, c, nil)
	if got := n.Status().Direct.Port; got != port+1 {
		t.Fatalf("direct port %d, want the libp2p port %d + 1", got, port)
	}
	if got := n.directPort(net.ParseIP(ip)); got != port+1 {
		t.Fatalf("port answered for %s: %d", ip, got)
	}
}

// A banned peer loses its direct connections with its libp2p ones and gets nothing more.
func TestDirectBanned(t *testing.T) {
	blob := randomBlob(55, 64<<10)
	d := digest.FromBytes(blob)
	srv, cli := directPair(t, testConfig, newMemContent(blob))
	if got, _, err := fetchAll(t, cli, peerOf(srv), d, 0); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("fetch: %d bytes, %v", len(got), err)
	}
	if srv.Status().Direct.Open != 1 {
		t.Fatalf("server holds %d direct connections after a fetch, want 1 (kept for the next)", srv.Status().Direct.Open)
	}
	srv.Ban(cli.ID(), "test")
	waitFor(t, 2*time.Second, "the banned peer's direct connection to close", func() bool { return srv.Status().Direct.Open == 0 })
	served := srv.Status().Direct.Served
	if got, _, err := fetchAll(t, cli, peerOf(srv), d, 0); err == nil {
		t.Fatalf("a banned peer fetched %d bytes", len(got))
	}
	if s := srv.Status().Direct.Served; s != served {
		t.Fatalf("server answered %d more direct requests of a banned peer", s-served)
	}
}
