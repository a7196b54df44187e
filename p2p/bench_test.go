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
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
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

// benchSize is SHOAL_BENCH_SIZE bytes, or def.
func benchSize(b *testing.B, def int64) int64 {
	if s := os.Getenv("SHOAL_BENCH_SIZE"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		return v
	}
	return def
}

// BenchmarkTransfer: blobs peer to peer over /shoal/blob/1.x next to the same bytes over
// plain HTTP and HTTPS on loopback (net/http over Go's crypto/tls 1.3, AES-128-GCM, with the
// p2p transport's coalesced writes, no libp2p): HTTPS tells what encryption alone costs on
// this machine. Two shapes:
//
//   - single: one 256 MiB blob (SHOAL_BENCH_SIZE bytes);
//   - 8x64MiB: 8 blobs of 64 MiB at once: as a node fetching an image's layers from one peer
//     does, against 8 HTTP(S) connections.
//
// Peer paths: "direct" is how shoal runs (the blob protocol on a direct TLS connection,
// direct.go; 8 blobs at once use up to 8 connections from the pool), "direct-psk" the same
// with a swarm key (the key guards the libp2p connection; the direct one is TLS only). "p2p"
// is the blob protocol on libp2p streams (TLS 1.3 + yamux over TCP; 8 streams on one
// connection), as before direct connections and as a peer without one is still asked;
// "p2p-noise" the same with Noise instead of TLS, "p2p-psk" with a swarm key (libp2p's
// private network adds XSalsa20 under TLS). Every iteration is one round that runs all paths,
// one after the other, in an order rotated from round to round, so each ratio compares runs
// that saw the same machine load (this machine is shared: absolute figures swing by 30%).
// Reported: each path's MB/s and CPU-s/GiB over all rounds, and the median (with min and max)
// of the per-round ratios direct/https, direct-psk/https, p2p/https, noise/tls and psk/p2p.
//
//	go test -run '^$' -bench Transfer -benchtime 5x ./p2p/
func BenchmarkTransfer(b *testing.B) {
	b.Run("single", func(b *testing.B) { benchTransfer(b, 1, benchSize(b, 256<<20)) })
	b.Run("8x64MiB", func(b *testing.B) { benchTransfer(b, 8, 64<<20) })
}

// transferRounds are the per-round wall and CPU times of each path of BenchmarkTransfer.
type transferRounds struct {
	names     []string
	wall, cpu map[string][]time.Duration
}

// ratio is the median, min and max over the rounds of a's throughput over b's.
func (r transferRounds) ratio(a, b string) (med, lo, hi float64) {
	var v []float64
	if len(r.wall[a]) != len(r.wall[b]) {
		return 0, 0, 0
	}
	for i := range r.wall[a] {
		v = append(v, r.wall[b][i].Seconds()/r.wall[a][i].Seconds())
	}
	if len(v) == 0 {
		return 0, 0, 0
	}
	slices.Sort(v)
	return v[len(v)/2], v[0], v[len(v)-1]
}

// benchTransfer runs BenchmarkTransfer's rounds for streams concurrent blobs of size bytes each.
func benchTransfer(b *testing.B, streams int, size int64) {
	r := runTransferRounds(b, streams, size)
	total := float64(size) * float64(streams) * float64(b.N)
	for _, name := range r.names {
		var wall, cpu time.Duration
		for i := range r.wall[name] {
			wall += r.wall[name][i]
			cpu += r.cpu[name][i]
		}
		b.ReportMetric(total/1e6/wall.Seconds(), name+"-MB/s")
		b.ReportMetric(cpu.Seconds()/(total/(1<<30)), name+"-cpu-s/GiB")
	}
	for _, c := range [][3]string{{"direct", "https", "direct/https"}, {"direct-psk", "https", "direct-psk/https"},
		{"direct", "p2p", "direct/p2p"}, {"p2p", "https", "p2p/https"}, {"p2p", "http", "p2p/http"},
		{"p2p-noise", "p2p", "noise/tls"}, {"p2p-psk", "p2p", "psk/p2p"}} {
		med, lo, hi := r.ratio(c[0], c[1])
		b.ReportMetric(med, c[2])
		b.ReportMetric(lo, c[2]+"-min")
		b.ReportMetric(hi, c[2]+"-max")
	}
}

// runTransferRounds sets up the five paths and runs b.N interleaved rounds of them.
func runTransferRounds(b *testing.B, streams int, size int64) transferRounds {
	ips := loopbackIPs(11)
	d := digest.FromString("bench")
	// Each copy reads with its own 1 MiB buffer, on both sides of every path.
	copyAll := func(what string, r io.Reader) {
		n, err := io.CopyBuffer(discard{io.Discard}, r, make([]byte, 1<<20))
		if err != nil || n != size {
			b.Fatalf("%s: copied %d of %d: %v", what, n, size, err)
		}
	}
	parallel := func(f func()) {
		var wg sync.WaitGroup
		for range streams {
			wg.Go(f)
		}
		wg.Wait()
	}
	fetch := func(cfg func(ip string) Config, opts []option, srvIP, cliIP string) func() {
		srv := startNode(b, cfg(srvIP), nil, nodeOpt{content: patternContent{size}, opts: opts})
		cli := startNode(b, cfg(cliIP), nil, nodeOpt{opts: opts})
		return func() {
			parallel(func() {
				rc, _, err := cli.Fetch(b.Context(), peerOf(srv), d, 0)
				if err != nil {
					b.Error(err)
					return
				}
				defer rc.Close()
				copyAll("p2p", rc)
			})
		}
	}
	key := writeSwarmKey(b)
	withKey := func(ip string) Config {
		c := testConfig(ip)
		c.SwarmKeyFile = key
		return c
	}
	// The stream paths: no direct connection (the asker then uses libp2p streams).
	viaStreams := func(cfg func(ip string) Config) func(ip string) Config {
		return func(ip string) Config {
			c := cfg(ip)
			c.DirectPort = DirectOff
			return c
		}
	}
	noiseOnly := []option{func(o *options) { o.security = securityNoise }}

	ln, err := net.Listen("tcp", ips[2]+":0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: patternHandler(size)}
	b.Cleanup(func() { hs.Close() })
	httpClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: streams}}
	b.Cleanup(httpClient.CloseIdleConnections)
	get := func(c *http.Client, url string) func() {
		return func() {
			parallel(func() {
				resp, err := c.Get(url)
				if err != nil {
					b.Error(err)
					return
				}
				defer resp.Body.Close()
				copyAll(url, resp.Body)
			})
		}
	}
	// Every goroutine of a path (nodes, connections, servers, clients) carries the pprof label
	// path=<name>, so one CPU profile splits by path: -cpuprofile, then
	// `go tool pprof -tagfocus path=p2p`.
	labelled := func(name string, f func() func()) func() {
		var run func()
		pprof.Do(b.Context(), pprof.Labels("path", name), func(context.Context) { run = f() })
		return func() { pprof.Do(b.Context(), pprof.Labels("path", name), func(context.Context) { run() }) }
	}
	paths := map[string]func(){
		"direct":     labelled("direct", func() func() { return fetch(testConfig, nil, ips[7], ips[8]) }),
		"direct-psk": labelled("direct-psk", func() func() { return fetch(withKey, nil, ips[9], ips[10]) }),
		"p2p":        labelled("p2p", func() func() { return fetch(viaStreams(testConfig), nil, ips[0], ips[1]) }),
		"p2p-noise":  labelled("p2p-noise", func() func() { return fetch(viaStreams(testConfig), noiseOnly, ips[5], ips[6]) }),
		"p2p-psk":    labelled("p2p-psk", func() func() { return fetch(viaStreams(withKey), nil, ips[3], ips[4]) }),
		"http": labelled("http", func() func() {
			go hs.Serve(ln)
			return get(httpClient, "http://"+ln.Addr().String()+"/blob")
		}),
		"https": labelled("https", func() func() {
			url, c := startHTTPS(b, ips[2], size)
			return get(c, url)
		}),
	}
	r := transferRounds{
		names: []string{"direct", "direct-psk", "p2p", "p2p-noise", "p2p-psk", "http", "https"},
		wall:  map[string][]time.Duration{},
		cpu:   map[string][]time.Duration{},
	}
	// Connections, handshakes, pools and yamux windows warmed up, as between busy peers.
	for _, name := range r.names {
		paths[name]()
	}
	if b.Failed() {
		b.FailNow()
	}
	b.SetBytes(size * int64(streams))
	b.ResetTimer()
	round := 0
	for b.Loop() {
		for i := range r.names {
			name := r.names[(round+i)%len(r.names)]
			c0, t0 := cpuTime(), time.Now()
			paths[name]()
			r.wall[name] = append(r.wall[name], time.Since(t0))
			r.cpu[name] = append(r.cpu[name], cpuTime()-c0)
		}
		if b.Failed() {
			b.FailNow()
		}
		round++
	}
	return r
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
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8, TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
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
