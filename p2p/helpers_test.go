package p2p

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/internal/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// ipBlock hands every test its own 127.77.<block>.0/24, so nodes of different tests (and
// other packages' tests, which use 127.0.0.x) never meet.
var ipBlock atomic.Int32

// loopbackIPs returns n fresh loopback addresses for one test.
func loopbackIPs(n int) []string {
	b := ipBlock.Add(1)
	if b > 250 {
		panic("out of loopback blocks")
	}
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("127.77.%d.%d", b, i+1)
	}
	return out
}

// memContent is an in-memory Content.
type memContent struct {
	mu    sync.Mutex
	blobs map[digest.Digest][]byte
	opens atomic.Int64
}

func newMemContent(blobs ...[]byte) *memContent {
	c := &memContent{blobs: map[digest.Digest][]byte{}}
	for _, b := range blobs {
		c.put(b)
	}
	return c
}

func (c *memContent) put(b []byte) digest.Digest {
	d := digest.FromBytes(b)
	c.mu.Lock()
	c.blobs[d] = b
	c.mu.Unlock()
	return d
}

func (c *memContent) OpenForPeer(_ context.Context, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	c.opens.Add(1)
	c.mu.Lock()
	b, ok := c.blobs[d]
	c.mu.Unlock()
	if !ok {
		return nil, 0, fmt.Errorf("%s: %w", d, ErrNotFound)
	}
	if offset > int64(len(b)) {
		return io.NopCloser(bytes.NewReader(nil)), int64(len(b)), nil
	}
	return io.NopCloser(bytes.NewReader(b[offset:])), int64(len(b)), nil
}

func (c *memContent) ShareList(context.Context) ([]digest.Digest, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []digest.Digest
	for d := range c.blobs {
		out = append(out, d)
	}
	return out, nil
}

func randomBlob(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// testLog sends node logs to t.Log while the test runs, and remembers WARN/ERROR lines.
type testLog struct {
	mu    sync.Mutex
	t     testing.TB
	done  bool
	warns []string
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := strings.TrimSpace(string(p))
	if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
		l.warns = append(l.warns, line)
	}
	if !l.done {
		l.t.Log(line)
	}
	return len(p), nil
}

func (l *testLog) warnings() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.warns)
}

func newTestLog(t testing.TB) (*slog.Logger, *testLog) {
	l := &testLog{t: t}
	t.Cleanup(func() { l.mu.Lock(); l.done = true; l.mu.Unlock() })
	level := slog.LevelDebug
	if _, bench := t.(*testing.B); bench || scaleRun.Load() {
		level = slog.LevelInfo // per-lookup debug lines would skew the timings
	}
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: level})), l
}

// testConfig listens on one loopback address with a kernel-chosen port and tight budgets.
func testConfig(ip string) Config {
	c := DefaultConfig()
	c.Listen = []string{"/ip4/" + ip + "/tcp/0"}
	c.StallTimeout = time.Second
	return c
}

type testNode struct {
	*Node
	content *memContent
	log     *testLog
	dataDir string
	dials   *dialLog
}

// dialLog records every address a node dialled; any non-loopback one fails the test.
type dialLog struct {
	mu    sync.Mutex
	all   []string
	wrong []string
}

func (d *dialLog) observe(_ peer.ID, a ma.Multiaddr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.all = append(d.all, a.String())
	if ip, err := manet.ToIP(a); err != nil || !ip.IsLoopback() {
		d.wrong = append(d.wrong, a.String())
	}
}

func (d *dialLog) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.all)
}

type nodeOpt struct {
	dataDir string
	content Content // overrides the memContent
	opts    []option
}

// truncating announces len(data) but its reader ends at cut, like an aborted download.
type truncating struct {
	data []byte
	cut  int
}

func (c truncating) OpenForPeer(_ context.Context, _ digest.Digest, off int64) (io.ReadCloser, int64, error) {
	return io.NopCloser(bytes.NewReader(c.data[off:c.cut])), int64(len(c.data)), nil
}

func (c truncating) ShareList(context.Context) ([]digest.Digest, error) { return nil, nil }

// startNode starts a node and closes it at the end of the test; the node's dials are checked
// to stay on loopback.
func startNode(t testing.TB, cfg Config, content *memContent, o ...nodeOpt) *testNode {
	t.Helper()
	if content == nil {
		content = newMemContent()
	}
	dir := ""
	var opts []option
	var cont Content = content
	for _, x := range o {
		if x.content != nil {
			cont = x.content
		}
		if x.dataDir != "" {
			dir = x.dataDir
		}
		opts = append(opts, x.opts...)
	}
	if dir == "" {
		dir = t.TempDir()
	}
	log, tl := newTestLog(t)
	dl := &dialLog{}
	opts = append(opts, func(o *options) { o.observeDial = dl.observe })
	n, err := newNode(t.Context(), cfg, dir, cont, log, opts...)
	if err != nil {
		t.Fatalf("start node on %v: %v", cfg.Listen, err)
	}
	t.Cleanup(func() {
		n.Close()
		dl.mu.Lock()
		defer dl.mu.Unlock()
		if len(dl.wrong) > 0 {
			t.Errorf("node %s dialled non-loopback addresses: %v", n.ID(), dl.wrong)
		}
	})
	return &testNode{Node: n, content: content, log: tl, dataDir: dir, dials: dl}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, timeout, what, cond)
}

func waitRT(t testing.TB, n *testNode, min int) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("routing table of %s to reach %d", n.ID(), min), func() bool {
		return n.dht.RoutingTable().Size() >= min
	})
}

// bootstrapTo returns cfg with n as the only bootstrap peer.
func bootstrapTo(cfg Config, n ...*testNode) Config {
	for _, x := range n {
		cfg.Bootstrap = append(cfg.Bootstrap, x.Addrs()...)
	}
	return cfg
}

func peerOf(n *testNode) Peer { return Peer{ID: n.ID(), Addrs: n.Addrs()} }

func fetchAll(t testing.TB, from *testNode, p Peer, d digest.Digest, offset int64) ([]byte, int64, error) {
	t.Helper()
	rc, size, err := from.Fetch(t.Context(), p, d, offset)
	if err != nil {
		return nil, 0, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return b, size, err
}

func providerIDs(ps []Peer) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.ID)
	}
	slices.Sort(out)
	return out
}
