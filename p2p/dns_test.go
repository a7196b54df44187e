package p2p

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Nodes that only know a DNS name (a Kubernetes headless Service, here a test resolver that
// answers loopback addresses; no real DNS is queried) find each other, learning peer IDs from
// the handshake. Among the answers are the node itself, an address where nothing listens and
// one that accepts TCP and never answers.
func TestBootstrapDNS(t *testing.T) {
	ips := loopbackIPs(7)
	ln, err := net.Listen("tcp", ips[0]+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	hole, err := net.Listen("tcp", net.JoinHostPort(ips[3], strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hole.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()

	const name = "shoal-peers.shoal.test"
	var lookups atomic.Int64
	resolver := func(_ context.Context, host string) ([]net.IP, error) {
		if host != name {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		lookups.Add(1)
		var out []net.IP
		for _, ip := range ips[:6] { // ips[4]: nothing listens; ips[6] is not in the record
			out = append(out, net.ParseIP(ip))
		}
		return out, nil
	}
	opt := nodeOpt{opts: []option{func(o *options) { o.resolve = resolver }}}
	cfg := func(ip string) Config {
		c := testConfig(ip)
		c.Listen = []string{fmt.Sprintf("/ip4/%s/tcp/%d", ip, port)}
		c.BootstrapDNS = name // port taken from Listen
		return c
	}
	var nodes []*testNode
	for _, ip := range []string{ips[0], ips[1], ips[2], ips[5]} {
		nodes = append(nodes, startNode(t, cfg(ip), nil, opt))
	}
	start := time.Now()
	for _, n := range nodes {
		waitRT(t, n, len(nodes)-1)
	}
	t.Logf("4 nodes joined through DNS in %v (%d lookups)", time.Since(start), lookups.Load())
	var want []string
	for _, n := range nodes[:3] {
		want = append(want, n.ID())
	}
	slices.Sort(want)
	var got []string
	for _, p := range nodes[3].dht.RoutingTable().ListPeers() {
		got = append(got, p.String())
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("routing table of the last node = %v, want %v", got, want)
	}

	t.Run("learn peer ID", func(t *testing.T) {
		a, d := nodes[0], nodes[3]
		id, err := d.learnPeerID(t.Context(), a.host.Addrs()[0])
		if err != nil || id != a.host.ID() {
			t.Fatalf("learnt %s, %v; want %s", id, err, a.ID())
		}
		known := map[peer.ID]bool{}
		for _, n := range nodes {
			known[n.host.ID()] = true
		}
		// The black hole's handshake is still pending for up to dialTimeout.
		waitFor(t, dialTimeout+2*time.Second, "placeholder peer IDs to leave the peerstore", func() bool {
			for _, p := range d.host.Peerstore().PeersWithAddrs() {
				if !known[p] {
					return false
				}
			}
			return true
		})
	})

	t.Run("NAME:PORT on another port", func(t *testing.T) {
		c := testConfig(ips[6])
		c.BootstrapDNS = fmt.Sprintf("%s:%d", name, port)
		e := startNode(t, c, nil, opt)
		waitRT(t, e, len(nodes))
	})
}
