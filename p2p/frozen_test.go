package p2p

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/opencontainers/go-digest"
)

// slack absorbs scheduling noise on a loaded 2-core machine; the budgets under test are
// what matters (a frozen peer costs ~20 s without them).
const slack = 700 * time.Millisecond

func within(t *testing.T, what string, budget time.Duration, f func()) time.Duration {
	t.Helper()
	start := time.Now()
	f()
	took := time.Since(start)
	t.Logf("%s took %v (budget %v)", what, took, budget)
	if took > budget+slack {
		t.Fatalf("%s took %v, over its budget %v", what, took, budget)
	}
	return took
}

// A peer frozen with SIGSTOP (in the routing table, holding records, holding a provided
// blob) stalls neither lookups beyond LookupTimeout, nor provides beyond ProvideTimeout, nor
// fetches beyond StallTimeout; healthy peers keep serving.
func TestFrozenPeerSIGSTOP(t *testing.T) {
	ips := loopbackIPs(3)
	cfg := testConfig(ips[0])
	cfg.ProvideTimeout = time.Second
	a := startNode(t, cfg, nil)
	blob := randomBlob(7, 256<<10)
	z := digest.FromBytes(blob)
	b := startNode(t, bootstrapTo(testConfig(ips[1]), a), newMemContent(blob))
	child := startChild(t, ips[2], a.Addrs()[0], 7, 256<<10)
	if child.digest != z {
		t.Fatalf("child holds %s, want %s", child.digest, z)
	}
	waitRT(t, b, 2)
	if err := b.Provide(t.Context(), z); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "A to see both providers of Z", func() bool {
		provs, _ := a.FindProviders(t.Context(), z, 5)
		return slices.Equal(providerIDs(provs), providerIDs([]Peer{{ID: b.ID()}, {ID: child.id}}))
	})

	if err := child.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}

	for i := range 3 {
		miss := digest.FromString("miss " + string(rune('a'+i)))
		within(t, "lookup of an absent digest", cfg.LookupTimeout, func() {
			provs, err := a.FindProviders(t.Context(), miss, 3)
			if err != nil || len(provs) != 0 {
				t.Fatalf("lookup miss: %v %v", provs, err)
			}
		})
	}
	within(t, "lookup of Z (B answers, the frozen child never does)", cfg.LookupTimeout/10, func() {
		provs, err := a.FindProviders(t.Context(), z, 5)
		if err != nil || !slices.Contains(providerIDs(provs), b.ID()) {
			t.Fatalf("lookup of Z: %v %v, want B among them", provs, err)
		}
	})
	w := a.content.put(randomBlob(8, 1000))
	within(t, "provide", cfg.ProvideTimeout, func() {
		if err := a.Provide(t.Context(), w); err != nil {
			t.Fatalf("provide with a frozen peer: %v (a deadline is partial success)", err)
		}
	})
	waitFor(t, 5*time.Second, "B to find what A provided", func() bool {
		provs, _ := b.FindProviders(t.Context(), w, 3)
		return slices.Contains(providerIDs(provs), a.ID())
	})
	within(t, "fetch from the frozen peer", cfg.StallTimeout, func() {
		rc, _, err := a.Fetch(t.Context(), Peer{ID: child.id}, z, 0)
		if err == nil {
			_, err = io.ReadAll(rc)
			rc.Close()
		}
		if !errors.Is(err, ErrStalled) {
			t.Fatalf("fetch from a frozen peer: %v, want ErrStalled", err)
		}
	})
	got, _, err := fetchAll(t, a, peerOf(b), z, 0)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("fetch from the healthy peer: %d bytes, %v", len(got), err)
	}
	for _, p := range a.Status().Peers {
		if p.ID == child.id && p.Failures == 0 {
			t.Fatalf("the frozen peer's failures were not counted")
		}
	}
}

// A peer that sends part of a blob and then goes silent, or drops the stream, costs the
// fetcher StallTimeout at most; it keeps the bytes it got and resumes from another peer
// with a Range request.
func TestMidTransferStallAndResume(t *testing.T) {
	ips := loopbackIPs(3)
	blob := randomBlob(9, 2<<20)
	x := digest.FromBytes(blob)
	// bad misbehaves in its stream handler: no direct connection (direct_test.go has this
	// test's twin over one).
	cfgBad := testConfig(ips[0])
	cfgBad.DirectPort = DirectOff
	bad := startNode(t, cfgBad, newMemContent(blob))
	good := startNode(t, testConfig(ips[1]), newMemContent(blob))
	cli := startNode(t, testConfig(ips[2]), nil)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })

	for _, tc := range []struct {
		name    string
		partial int
		after   func(s network.Stream)
		want    error
	}{
		{"silent", 512 << 10, func(s network.Stream) { <-release; s.Reset() }, ErrStalled},
		{"dropped connection", 300 << 10, func(s network.Stream) { s.Conn().Close() }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad.host.SetStreamHandler(blobProtocol, func(s network.Stream) {
				br := bufio.NewReader(s)
				line, err := br.ReadSlice('\n')
				if err != nil {
					s.Reset()
					return
				}
				req, err := parseRequest(line)
				if err != nil {
					s.Reset()
					return
				}
				s.Write([]byte("OK " + itoa(int64(len(blob))) + "\n"))
				s.Write(blob[req.Offset : req.Offset+int64(tc.partial)])
				tc.after(s)
			})
			var got []byte
			within(t, "fetch from a misbehaving peer", cli.cfg.StallTimeout, func() {
				rc, _, err := cli.Fetch(t.Context(), peerOf(bad), x, 0)
				if err != nil {
					t.Fatal(err)
				}
				got, err = io.ReadAll(rc)
				rc.Close()
				if err == nil {
					t.Fatalf("read %d bytes without an error", len(got))
				}
				if tc.want != nil && !errors.Is(err, tc.want) {
					t.Fatalf("err %v, want %v", err, tc.want)
				}
				t.Logf("got %d bytes, then: %v", len(got), err)
			})
			if !bytes.Equal(got, blob[:len(got)]) {
				t.Fatalf("the bytes received are not a prefix of the blob")
			}
			rest, size, err := fetchAll(t, cli, peerOf(good), x, int64(len(got)))
			if err != nil {
				t.Fatalf("resume at %d: %v", len(got), err)
			}
			if size != int64(len(blob)) || !bytes.Equal(append(got, rest...), blob) {
				t.Fatalf("resumed transfer does not reassemble the blob")
			}
		})
	}
}

// A peer killed (SIGKILL) mid-transfer: the fetcher gets an error, not a short blob, and
// resumes from another peer.
func TestKilledPeerMidTransfer(t *testing.T) {
	ips := loopbackIPs(3)
	const size = 32 << 20
	blob := randomBlob(11, size)
	x := digest.FromBytes(blob)
	good := startNode(t, testConfig(ips[0]), newMemContent(blob))
	cli := startNode(t, testConfig(ips[1]), nil)
	child := startChild(t, ips[2], good.Addrs()[0], 11, size)
	rc, _, err := cli.Fetch(t.Context(), Peer{ID: child.id, Addrs: []string{child.addr}}, x, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	first := make([]byte, 64<<10)
	if _, err := io.ReadFull(rc, first); err != nil {
		t.Fatal(err)
	}
	if err := child.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(rc)
	got := append(first, rest...)
	if err == nil {
		t.Fatalf("read all %d bytes from a killed peer without an error", len(got))
	}
	t.Logf("killed after %d of %d bytes: %v", len(got), size, err)
	if !bytes.Equal(got, blob[:len(got)]) {
		t.Fatalf("the bytes received are not a prefix of the blob")
	}
	tail, _, err := fetchAll(t, cli, peerOf(good), x, int64(len(got)))
	if err != nil || !bytes.Equal(append(got, tail...), blob) {
		t.Fatalf("resume from the good peer: %v", err)
	}
}

// An address where something accepts TCP and never answers (not even the handshake) costs a
// fetch at most StallTimeout, and as a bootstrap entry it does not keep a node from joining.
func TestUnresponsiveAddress(t *testing.T) {
	ips := loopbackIPs(3)
	ln, err := net.Listen("tcp", ips[0]+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	sk, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	fakeID, _ := peer.IDFromPrivateKey(sk)
	blackhole := "/ip4/" + ips[0] + "/tcp/" + itoa(int64(port))

	a := startNode(t, testConfig(ips[1]), nil)
	within(t, "fetch from a black hole", a.cfg.StallTimeout, func() {
		_, _, err := a.Fetch(t.Context(), Peer{ID: fakeID.String(), Addrs: []string{blackhole}}, digest.FromString("x"), 0)
		if !errors.Is(err, ErrStalled) {
			t.Fatalf("fetch from a black hole: %v, want ErrStalled", err)
		}
	})
	cfg := testConfig(ips[2])
	cfg.Bootstrap = []string{blackhole + "/p2p/" + fakeID.String(), a.Addrs()[0]}
	within(t, "joining with a black hole among the bootstrap peers", time.Second, func() {
		n := startNode(t, cfg, nil)
		waitRT(t, n, 1)
	})
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
