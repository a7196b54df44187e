package daemon

import (
	"context"
	"encoding/binary"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/p2p"
)

// firstPaintJS waits for the page's first contentful paint, as the browser timed it from the
// start of the navigation (-1 if it reports none within 5 s).
const firstPaintJS = `new Promise(done => {
	const seen = performance.getEntriesByName("first-contentful-paint")[0];
	if (seen) return done(seen.startTime);
	new PerformanceObserver(l => { for (const e of l.getEntries()) if (e.name === "first-contentful-paint") done(e.startTime); }).observe({type: "paint", buffered: true});
	setTimeout(() => done(-1), 5000);
})`

// emptyContent is a peer that holds nothing (the scale test needs connected peers, not
// their content).
type emptyContent struct{}

func (emptyContent) OpenForPeer(context.Context, digest.Digest, int64) (io.ReadCloser, int64, error) {
	return nil, 0, p2p.ErrNotFound
}
func (emptyContent) ShareList(context.Context) ([]digest.Digest, error) { return nil, nil }

// consoleScale reads SHOAL_CONSOLE_SCALE=ITEMS,PEERS (default 500,5: quick enough for every
// run; the figure is 10000,100) and SHOAL_CONSOLE_PAINT_MS, the first paint allowed
// (default 1000 ms: the shared test machine is often loaded far beyond its 2 cores; the
// issue's target, measured under flock /tmp/shoal-heavy.lock, is 200).
func consoleScale(t *testing.T) (items, peers int, limit float64) {
	items, peers, limit = 500, 5, 1000
	if v := os.Getenv("SHOAL_CONSOLE_PAINT_MS"); v != "" {
		var err error
		if limit, err = strconv.ParseFloat(v, 64); err != nil {
			t.Fatalf("SHOAL_CONSOLE_PAINT_MS=%q: want milliseconds", v)
		}
	}
	if v := os.Getenv("SHOAL_CONSOLE_SCALE"); v != "" {
		a, b, _ := strings.Cut(v, ",")
		var err1, err2 error
		items, err1 = strconv.Atoi(a)
		peers, err2 = strconv.Atoi(b)
		if err1 != nil || err2 != nil {
			t.Fatalf("SHOAL_CONSOLE_SCALE=%q: want ITEMS,PEERS", v)
		}
	}
	return items, peers, limit
}

// Each console page paints quickly (Chromium's first-contentful-paint, median of 5 loads) on
// a node with many cached items and peers. The figure:
//
//	SHOAL_CONSOLE_SCALE=10000,100 SHOAL_CONSOLE_PAINT_MS=200 flock /tmp/shoal-heavy.lock \
//	  go test -vet=off -count=1 -v -run TestConsoleFirstPaintAtScale ./daemon/
func TestConsoleFirstPaintAtScale(t *testing.T) {
	items, npeers, limit := consoleScale(t)
	up := newUpstream(t)
	a := startNode(t, up, nil, withOps, withConsole("http://127.0.0.1:1"), func(c *Config) { c.P2P.BootstrapSample = 1 })
	ctx := t.Context()

	start := time.Now()
	buf := make([]byte, 256)
	for i := range items {
		binary.BigEndian.PutUint64(buf, uint64(i))
		d := digest.FromBytes(buf)
		w, err := a.store.Writer(ctx, d, "application/vnd.oci.image.layer.v1.tar+gzip")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(buf); err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(ctx, int64(len(buf))); err != nil {
			t.Fatal(err)
		}
		_ = w.Close()
	}
	t.Logf("stored %d items in %v", items, time.Since(start).Round(time.Millisecond))

	start = time.Now()
	for range npeers {
		ip := nextIP()
		cfg := p2p.DefaultConfig()
		cfg.Listen = []string{"/ip4/" + ip + "/tcp/0"}
		cfg.Bootstrap = a.node.Addrs()
		n, err := p2p.New(ctx, cfg, t.TempDir(), emptyContent{}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
	}
	connected := func() int {
		n := 0
		for _, p := range a.node.Status().Peers {
			if !p.Banned && len(p.Addrs) > 0 {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(60 * time.Second); connected() < npeers; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d peers connected after 60 s", connected(), npeers)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Logf("%d peers connected in %v; routing table %d", connected(), time.Since(start).Round(time.Millisecond), a.node.Status().RoutingTableSize)
	cl := adminFor(t, a)
	st, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Store.Items < int64(items) {
		t.Fatalf("store holds %d items, want %d", st.Store.Items, items)
	}

	for name, call := range map[string]func() error{
		"status":   func() error { _, err := cl.Status(ctx); return err },
		"peers":    func() error { _, err := cl.Peers(ctx); return err },
		"timeline": func() error { _, err := cl.Timeline(ctx); return err },
		"inflight": func() error { _, err := cl.InFlight(ctx); return err },
		"cache":    func() error { _, err := cl.CacheList(ctx, "size"); return err },
		"history":  func() error { _, err := cl.History(ctx, "", 200); return err },
	} {
		start := time.Now()
		if err := call(); err != nil {
			t.Fatalf("admin %s: %v", name, err)
		}
		t.Logf("admin API %-8s %v", name, time.Since(start).Round(100*time.Microsecond))
	}

	bctx, jsErrors := browserFor(t)
	base := "http://" + a.ConsoleAddr()
	for _, p := range []struct{ path, ready string }{
		{"/", "#version"}, {"/peers", "#peers"}, {"/pulls", "#history"}, {"/cache", "#cache"},
		{"/cache?sort=atime", "#cache"}, {"/explain", "main form"}, {"/search", "#search-form"},
	} {
		var paints, serves []float64
		for range 5 {
			visit(t, bctx, base+p.path, p.ready)
			paint, err := chromedp.Run(bctx, chromedp.Evaluate[float64](firstPaintJS, chromedp.EvalAwaitPromise))
			if err != nil {
				t.Fatal(err)
			}
			serve := eval[float64](t, bctx, `(e => e.responseEnd - e.requestStart)(performance.getEntriesByType("navigation")[0])`)
			if paint < 0 {
				t.Fatalf("%s: the browser reported no first paint", p.path)
			}
			paints, serves = append(paints, paint), append(serves, serve)
		}
		sort.Float64s(paints)
		sort.Float64s(serves)
		med, served := paints[len(paints)/2], serves[len(serves)/2]
		t.Logf("%-18s first paint %6.1f ms (median of 5; min %.1f, max %.1f), page served in %.1f ms", p.path, med, paints[0], paints[len(paints)-1], served)
		if med >= limit {
			t.Errorf("%s: first paint %.1f ms with %d items and %d peers, want < %.0f ms", p.path, med, items, npeers, limit)
		}
	}
	visit(t, bctx, base+"/peers", "#peers")
	if rows := eval[int](t, bctx, `document.querySelectorAll("#peers tr[data-peer]").length`); rows < npeers*9/10 {
		t.Errorf("peers page lists %d peers, want about %d", rows, npeers)
	}
	if errs := jsErrors(); len(errs) > 0 {
		t.Errorf("JavaScript errors:\n%s", strings.Join(errs, "\n"))
	}
}
