package p2p

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// dnsSwarm starts n nodes on fresh loopback addresses sharing one port, all behind one DNS
// name (a test resolver answering every node's address), each with the given bootstrap
// sample. The name answers the nodes started so far, like a Kubernetes headless Service
// (which lists ready pods only).
func dnsSwarm(t testing.TB, n, sample int, name string, ips []string, mutate func(i int, c *Config, o *nodeOpt)) []*testNode {
	t.Helper()
	ln, err := net.Listen("tcp", ips[0]+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	var started atomic.Int64
	resolver := func(_ context.Context, host string) ([]net.IP, error) {
		if host != name {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		out := make([]net.IP, 0, n)
		for _, ip := range ips[:started.Load()] {
			out = append(out, net.ParseIP(ip))
		}
		return out, nil
	}
	opt := nodeOpt{opts: []option{func(o *options) { o.resolve = resolver }}}
	nodes := make([]*testNode, n)
	for i := range n {
		c := testConfig(ips[i])
		c.Listen = []string{fmt.Sprintf("/ip4/%s/tcp/%d", ips[i], port)}
		c.BootstrapDNS = name
		c.BootstrapSample = sample
		o := nodeOpt{opts: slices.Clone(opt.opts)}
		if mutate != nil {
			mutate(i, &c, &o)
		}
		nodes[i] = startNode(t, c, nil, o)
		started.Add(1)
	}
	return nodes
}

// connStats is the mean and max number of peers each node is connected to.
func connStats(nodes []*testNode) (mean float64, max int) {
	sum := 0
	for _, n := range nodes {
		c := len(n.host.Network().Peers())
		sum += c
		if c > max {
			max = c
		}
	}
	return float64(sum) / float64(len(nodes)), max
}

// With 40 nodes behind one DNS name, each node dials a bounded sample at bootstrap (the old
// code dialled all 39 others), connections stay below "everyone", and every node still joins
// and finds content provided by any other.
func TestBootstrapDNSSample(t *testing.T) {
	const (
		n      = 40
		sample = 4
	)
	ips := loopbackIPs(n)
	nodes := dnsSwarm(t, n, sample, "shoal-40.shoal.test", ips, nil)
	start := time.Now()
	for _, x := range nodes {
		waitRT(t, x, 1)
	}
	joined := time.Since(start)
	// Let the DHT's own walks (run after each bootstrap round) settle.
	waitFor(t, 20*time.Second, "every node to hold at least 10 peers in its routing table", func() bool {
		for _, x := range nodes {
			if x.dht.RoutingTable().Size() < 10 {
				return false
			}
		}
		return true
	})
	var maxDials int64
	for _, x := range nodes {
		maxDials = max(maxDials, x.bootstrapDials.Load())
	}
	mean, most := connStats(nodes)
	t.Logf("N=%d sample=%d: all joined in %v; bootstrap dials per node max %d; connections per node mean %.1f max %d",
		n, sample, joined, maxDials, mean, most)
	// Joining took one round; refresh rounds (every minute) have not run yet.
	if maxDials > sample {
		t.Errorf("a node dialled %d bootstrap sources; want at most the sample, %d", maxDials, sample)
	}

	// Content provided on one node is found from every other.
	blob := randomBlob(40, 1024)
	d := nodes[n-1].content.put(blob)
	if err := nodes[n-1].Provide(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	for i, x := range nodes[:n-1] {
		ps, err := findWithin(t, x, d, 5*time.Second)
		if err != nil || len(ps) == 0 {
			t.Fatalf("node %d did not find the provider: %v %v", i, ps, err)
		}
	}
}

// findWithin retries FindProviders until it finds someone or timeout passes.
func findWithin(t testing.TB, x *testNode, d digest.Digest, timeout time.Duration) ([]Peer, error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ps, err := x.FindProviders(t.Context(), d, 1)
		if len(ps) > 0 || time.Now().After(deadline) {
			return ps, err
		}
	}
}
