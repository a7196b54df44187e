package p2p

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/opencontainers/go-digest"
)

// patternContent serves size bytes of a repeating pattern for any digest without holding
// them in memory (the benchmark measures transport, not hashing or storage).
type patternContent struct{ size int64 }

func (c patternContent) OpenForPeer(_ context.Context, _ digest.Digest, off int64) (io.ReadCloser, int64, error) {
	return io.NopCloser(io.LimitReader(patternReader{}, c.size-off)), c.size, nil
}

func (patternContent) ShareList(context.Context) ([]digest.Digest, error) { return nil, nil }

var pattern = randomBlob(99, 64<<10)

type patternReader struct{}

func (patternReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		n += copy(p[n:], pattern)
	}
	return n, nil
}

// discard hides io.Discard's ReadFrom so both sides copy with the same 1 MiB buffer.
type discard struct{ io.Writer }

func benchSize(b *testing.B) int64 {
	if s := os.Getenv("SHOAL_BENCH_SIZE"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		return v
	}
	return 1 << 30
}

// BenchmarkTransfer: one blob (1 GiB, or SHOAL_BENCH_SIZE bytes) peer to peer over
// /shoal/blob/1.0.0 (TLS 1.3 + yamux over TCP), also between two nodes sharing a swarm key
// (p2p-psk: a libp2p private network adds XSalsa20 under TLS), next to plain HTTP over
// loopback and HTTPS (net/http over Go's crypto/tls 1.3, AES-128-GCM, with the p2p transport's
// coalesced writes, no libp2p): HTTPS tells what encryption alone costs on this machine, so
// p2p/https is what libp2p's stream multiplexing adds. Every iteration runs all four, one
// after the other, so the ratios compare runs that saw the same machine load (this machine
// is shared: absolute figures swing by 30%).
//
//	go test -run '^$' -bench Transfer -benchtime 5x ./p2p/
func BenchmarkTransfer(b *testing.B) {
	size := benchSize(b)
	ips := loopbackIPs(5)
	buf := make([]byte, 1<<20)

	d := digest.FromString("bench")
	fetch := func(cfg func(ip string) Config, srvIP, cliIP string) func() {
		srv := startNode(b, cfg(srvIP), nil, nodeOpt{content: patternContent{size}})
		cli := startNode(b, cfg(cliIP), nil)
		return func() {
			rc, _, err := cli.Fetch(b.Context(), peerOf(srv), d, 0)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.CopyBuffer(discard{io.Discard}, rc, buf)
			rc.Close()
			if err != nil || n != size {
				b.Fatalf("p2p: copied %d: %v", n, err)
			}
		}
	}
	viaP2P := fetch(testConfig, ips[0], ips[1])
	key := writeSwarmKey(b)
	viaPSK := fetch(func(ip string) Config {
		c := testConfig(ip)
		c.SwarmKeyFile = key
		return c
	}, ips[3], ips[4])

	ln, err := net.Listen("tcp", ips[2]+":0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: patternHandler(size)}
	go hs.Serve(ln)
	b.Cleanup(func() { hs.Close() })
	httpsURL, httpsClient := startHTTPS(b, ips[2], size)
	get := func(c *http.Client, url string) func() {
		return func() {
			resp, err := c.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.CopyBuffer(discard{io.Discard}, resp.Body, buf)
			resp.Body.Close()
			if err != nil || n != size {
				b.Fatalf("%s: copied %d: %v", url, n, err)
			}
		}
	}
	viaHTTP := get(http.DefaultClient, "http://"+ln.Addr().String()+"/blob")
	viaHTTPS := get(httpsClient, httpsURL)

	var wall, cpu [4]time.Duration
	timed := func(i int, f func()) {
		c0, t0 := cpuTime(), time.Now()
		f()
		wall[i] += time.Since(t0)
		cpu[i] += cpuTime() - c0
	}
	viaP2P() // connection, handshake and yamux windows warmed up, as between busy peers
	viaPSK()
	viaHTTPS()
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		timed(0, viaP2P)
		timed(1, viaHTTP)
		timed(2, viaHTTPS)
		timed(3, viaPSK)
	}
	mb := float64(size) * float64(b.N) / 1e6
	gib := float64(size) * float64(b.N) / (1 << 30)
	for i, name := range []string{"p2p", "http", "https", "p2p-psk"} {
		b.ReportMetric(mb/wall[i].Seconds(), name+"-MB/s")
		b.ReportMetric(cpu[i].Seconds()/gib, name+"-cpu-s/GiB")
	}
	b.ReportMetric(wall[1].Seconds()/wall[0].Seconds(), "p2p/http")
	b.ReportMetric(wall[2].Seconds()/wall[0].Seconds(), "p2p/https")
	b.ReportMetric(wall[1].Seconds()/wall[2].Seconds(), "https/http")
	b.ReportMetric(wall[0].Seconds()/wall[3].Seconds(), "psk/p2p")
}

// patternHandler answers every request with size pattern bytes.
func patternHandler(size int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		io.CopyBuffer(w, io.LimitReader(patternReader{}, size), make([]byte, 1<<20))
	})
}

type coalescingNetListener struct{ net.Listener }

func (l coalescingNetListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	mc, err := manet.WrapNetConn(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	return newCoalescingConn(mc), nil
}

// startHTTPS serves size pattern bytes over HTTPS (TLS 1.3, a fresh self-signed P-256
// certificate) on ip and returns the URL and a client that trusts the certificate.
func startHTTPS(b *testing.B, ip string, size int64) (string, *http.Client) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "shoal-bench"},
		IPAddresses:  []net.IP{net.ParseIP(ip)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{
		Handler: patternHandler(size),
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		},
		// HTTP/1.1, like the plain HTTP baseline (HTTP/2 would add its own framing).
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	// Under TLS, the same coalescing writer as the p2p transport: crypto/tls writes every
	// 16 KiB record with its own write(2), which would handicap this baseline.
	go hs.Serve(tls.NewListener(coalescingNetListener{ln}, hs.TLSConfig))
	b.Cleanup(func() { hs.Close() })
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	b.Cleanup(c.CloseIdleConnections)
	return "https://" + ln.Addr().String() + "/blob", c
}

// startCluster starts n nodes that join through the first and waits for full routing tables.
func startCluster(b testing.TB, n int) []*testNode {
	ips := loopbackIPs(n)
	nodes := []*testNode{startNode(b, testConfig(ips[0]), nil)}
	for _, ip := range ips[1:] {
		nodes = append(nodes, startNode(b, bootstrapTo(testConfig(ip), nodes[0]), nil))
	}
	for _, x := range nodes {
		waitRT(b, x, n-1)
	}
	return nodes
}

func percentile(s []time.Duration, p int) time.Duration {
	s = slices.Clone(s)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

// BenchmarkLookup10Nodes: lookup latency in a 10-node loopback cluster, each digest provided
// by one node and looked up (max 1 provider) from another.
//
//	go test -run '^$' -bench Lookup10Nodes ./p2p/
func BenchmarkLookup10Nodes(b *testing.B) {
	nodes := startCluster(b, 10)
	const digests = 50
	var ds []digest.Digest
	var owner []int
	for i := range digests {
		d := digest.FromString(fmt.Sprint("lookup bench ", i))
		o := i % len(nodes)
		if err := nodes[o].Provide(b.Context(), d); err != nil {
			b.Fatal(err)
		}
		ds, owner = append(ds, d), append(owner, o)
	}
	var lat []time.Duration
	r := rand.New(rand.NewPCG(1, 2))
	b.ResetTimer()
	for b.Loop() {
		i := r.IntN(digests)
		f := (owner[i] + 1 + r.IntN(len(nodes)-1)) % len(nodes)
		start := time.Now()
		provs, err := nodes[f].FindProviders(b.Context(), ds[i], 1)
		lat = append(lat, time.Since(start))
		if err != nil || len(provs) != 1 || provs[0].ID != nodes[owner[i]].ID() {
			b.Fatalf("lookup %d from node %d: %v %v", i, f, provs, err)
		}
	}
	b.ReportMetric(float64(percentile(lat, 50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(percentile(lat, 99).Microseconds()), "p99-µs")
}

// BenchmarkProvideToFindable10Nodes: time from the start of Provide on one node (as on a
// store commit) until another node's lookup returns it, in a 10-node loopback cluster.
//
//	go test -run '^$' -bench ProvideToFindable10Nodes ./p2p/
func BenchmarkProvideToFindable10Nodes(b *testing.B) {
	nodes := startCluster(b, 10)
	var provide, findable []time.Duration
	i := 0
	b.ResetTimer()
	for b.Loop() {
		i++
		d := digest.FromString(fmt.Sprint("commit bench ", i))
		p, f := nodes[i%len(nodes)], nodes[(i+1+i%7)%len(nodes)]
		start := time.Now()
		if err := p.Provide(b.Context(), d); err != nil {
			b.Fatal(err)
		}
		provide = append(provide, time.Since(start))
		for {
			provs, err := f.FindProviders(b.Context(), d, 1)
			if err != nil {
				b.Fatal(err)
			}
			if len(provs) == 1 {
				break
			}
		}
		findable = append(findable, time.Since(start))
	}
	b.ReportMetric(float64(percentile(provide, 50).Microseconds()), "provide-p50-µs")
	b.ReportMetric(float64(percentile(provide, 99).Microseconds()), "provide-p99-µs")
	b.ReportMetric(float64(percentile(findable, 50).Microseconds()), "findable-p50-µs")
	b.ReportMetric(float64(percentile(findable, 99).Microseconds()), "findable-p99-µs")
}

// cpuTime is the process's user+system CPU time: on a shared machine, CPU seconds per GiB
// compare the two transports better than wall-clock throughput.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
