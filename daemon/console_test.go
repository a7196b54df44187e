package daemon

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/upstream"
)

// hubSearch is a fixture for Docker Hub's search API, which cannot be reached from here. It
// answers GET /v1/search?q=TERM&n=N with what index.docker.io answers: 200,
// application/json, {"num_pages", "num_results", "results": [{"star_count", "is_official",
// "name", "is_automated", "description"}], "page_size", "query", "page"}. Checked against
// moby's api/types/registry (SearchResults, SearchResult) and registry/search.go (the
// client `docker search` uses: GET <index>/v1/search?q=&n=), and the v1 search example in
// DockerFinder's README (the paging fields).
type hubSearch struct {
	srv     *httptest.Server
	queries atomic.Int64
	results map[string][]adminapi.SearchResult
}

func newHubSearch(t *testing.T, results map[string][]adminapi.SearchResult) *hubSearch {
	t.Helper()
	h := &hubSearch{results: results}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/search" {
			http.NotFound(w, r)
			return
		}
		h.queries.Add(1)
		q := r.URL.Query().Get("q")
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		if n <= 0 {
			n = 25
		}
		res := h.results[q]
		if res == nil {
			res = []adminapi.SearchResult{}
		}
		all := len(res)
		if len(res) > n {
			res = res[:n]
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"num_pages": (all + n - 1) / n, "num_results": all, "results": res,
			"page_size": n, "query": q, "page": 1})
	}))
	t.Cleanup(h.srv.Close)
	return h
}

// xss is what the upstreams send where a name or a description goes: each would run script
// or load an image if it reached the page as markup.
const xss = `<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>`

// browserFor starts headless Chromium (Debian's chromium, .ci/install-deps) and returns a
// context for its first tab, with every JavaScript error and exception collected.
func browserFor(t *testing.T) (context.Context, func() []string) {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found (.ci/install-deps installs Debian's chromium): %v", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true), chromedp.WindowSize(1280, 900),
		// The console must work offline: no request may leave loopback.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	var mu sync.Mutex
	var errs []string
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleException || m.Type == "error" {
				mu.Lock()
				errs = append(errs, m.String())
				mu.Unlock()
			}
		}
	}()
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := errs
		errs = nil
		return out
	}
}

func withConsole(hub string) func(*Config) {
	return func(c *Config) {
		c.Console.Listen = "127.0.0.1:0"
		c.Console.HubSearchURL = hub
	}
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

// eval runs a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// waitJS polls a JavaScript condition until it holds, across navigations (chromedp's Poll
// ends with the document it started in), until ctx ends.
func waitJS(t *testing.T, ctx context.Context, cond string) {
	t.Helper()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](cond))
		if err == nil && ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last error: %v)", cond, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// click clicks the element and waits for the page it leads to (after a form POST: the
// redirect back) to show the notice.
func clickThenNotice(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// Mark this document, so that the notice looked for is the next page's.
	if _, err := chromedp.Run(tctx, chromedp.Evaluate[bool](`window.__before = true`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(tctx, chromedp.Click(chromedp.CSS(sel))); err != nil {
		t.Fatalf("click %s: %v", sel, err)
	}
	waitJS(t, tctx, `window.__before === undefined && document.readyState === "complete" && document.querySelector("#msg, #err") !== null`)
	return text(t, ctx, "main > p.msg, main > p.err")
}

func visit(t *testing.T, ctx context.Context, u, ready string) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(tctx, chromedp.Navigate(u), chromedp.WaitVisible(chromedp.CSS(ready))); err != nil {
		t.Fatalf("load %s (waiting for %s): %v", u, ready, err)
	}
}

// screenshot keeps a picture of the page for docs/console when SHOAL_CONSOLE_SCREENSHOTS
// names a directory.
func screenshot(t *testing.T, ctx context.Context, name string) {
	dir := os.Getenv("SHOAL_CONSOLE_SCREENSHOTS")
	if dir == "" {
		return
	}
	b, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The console in a real browser, against a node with real content and a peer: every page
// shows what the admin API says, the chart is drawn, pin / unpin / remove / search / pull /
// export work by clicking, names from upstreams are shown as text, and no page has a
// JavaScript error.
func TestConsoleInBrowser(t *testing.T) {
	up := newUpstream(t)
	// Docker Hub is reached through the mapping: docker.io's registry is the test upstream.
	dockerIO := func(c *Config) { c.SetRegistry("docker.io", upstream.RegistryConfig{URL: up.srv.URL}) }
	hub := newHubSearch(t, map[string][]adminapi.SearchResult{
		"shoal": {
			{Name: "library/consoletest", Description: "The image the console test pulls", StarCount: 1234, IsOfficial: true},
			{Name: "evil/" + "x", Description: xss, StarCount: 7},
		},
	})
	img := pushRandom(t, up, "library/consoletest", 256<<10, 2)
	pushRandom(t, up, "library/consoletest:1.0", 128<<10, 1)
	shared := pushRandom(t, up, "team/shared", 512<<10, 3)
	pushRandom(t, up, "team/solo", 64<<10, 1)
	pushLabelled(t, up, "team/labelled", map[string]string{"org.opencontainers.image.title": xss, "maintainer": "ops@example.com"})

	a := startNode(t, up, nil, withOps, withConsole(hub.srv.URL), dockerIO)
	b := startNode(t, up, a.node.Addrs(), withOps, dockerIO)
	// B pulls first; A then gets the layers from its peer B: the chart has peer bytes.
	if _, err := pullThrough(t, b, "team/shared:latest"); err != nil {
		t.Fatal(err)
	}
	waitProvided(t, a.node, layerDigests(t, shared)...)
	if _, err := pullThrough(t, a, "team/shared:latest"); err != nil {
		t.Fatal(err)
	}
	if _, err := pullThrough(t, a, "team/shared:latest"); err != nil { // from the store
		t.Fatal(err)
	}
	if _, err := pullThrough(t, a, "team/solo:latest"); err != nil { // from the upstream
		t.Fatal(err)
	}
	if _, err := pullThrough(t, a, "team/labelled:latest"); err != nil {
		t.Fatal(err)
	}
	cl := adminFor(t, a)
	base := "http://" + a.ConsoleAddr()
	ctx, jsErrors := browserFor(t)

	t.Run("overview", func(t *testing.T) {
		visit(t, ctx, base+"/", "#version")
		st, err := cl.Status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if got := text(t, ctx, "#store-items"); got != strconv.FormatInt(st.Store.Items, 10) {
			t.Errorf("store items shown %q, status says %d", got, st.Store.Items)
		}
		if got, want := text(t, ctx, "#hit-ratio"), fmt.Sprintf("%.1f%%", st.HitRatio*100); got != want {
			t.Errorf("hit ratio shown %q, status says %s", got, want)
		}
		if got := text(t, ctx, "#swarm-peers"); got != strconv.Itoa(st.P2P.Peers) || st.P2P.Peers < 1 {
			t.Errorf("peers shown %q, status says %d (want ≥ 1)", got, st.P2P.Peers)
		}
		bars := eval[int](t, ctx, `document.querySelectorAll("#chart-requests rect.bar").length`)
		max := eval[string](t, ctx, `document.querySelector("#chart-requests svg").dataset.max`)
		if bars == 0 || max == "0" {
			t.Errorf("the chart has %d bars (max %s): nothing drawn", bars, max)
		}
		for _, src := range []string{"store", "peer", "upstream"} {
			if n := eval[int](t, ctx, fmt.Sprintf(`document.querySelectorAll("#chart-requests rect.src-%s").length`, src)); n == 0 {
				t.Errorf("no %s bar in the chart", src)
			}
			if n := eval[int](t, ctx, fmt.Sprintf(`document.querySelectorAll("#sources tr[data-source=%s]").length`, src)); n != 1 {
				t.Errorf("source %s not in the table", src)
			}
		}
		screenshot(t, ctx, "overview")
	})

	t.Run("peers", func(t *testing.T) {
		visit(t, ctx, base+"/peers", "#peers")
		ps, err := cl.Peers(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if rows := eval[int](t, ctx, `document.querySelectorAll("#peers tr[data-peer]").length`); rows != len(ps.Peers) || rows == 0 {
			t.Errorf("%d peer rows, the admin API lists %d", rows, len(ps.Peers))
		}
		if n := eval[int](t, ctx, fmt.Sprintf(`document.querySelectorAll('#peers tr[data-peer="%s"]').length`, b.node.ID())); n != 1 {
			t.Errorf("peer B (%s) not listed", b.node.ID())
		}
		screenshot(t, ctx, "peers")
	})

	t.Run("pulls", func(t *testing.T) {
		visit(t, ctx, base+"/pulls", "#history")
		h := text(t, ctx, "#history")
		for _, want := range []string{"team/shared", "team/solo", "peer", "upstream"} {
			if !strings.Contains(h, want) {
				t.Errorf("recent answers lack %q:\n%s", want, h)
			}
		}
		screenshot(t, ctx, "pulls")
	})

	t.Run("explain", func(t *testing.T) {
		visit(t, ctx, base+"/explain?target="+url.QueryEscape("team/shared:latest"), "#explain")
		if rows := eval[int](t, ctx, `document.querySelectorAll("#explain tbody tr").length`); rows != 5 { // manifest, config, 3 layers
			t.Errorf("explain lists %d pieces, want 5", rows)
		}
		if got := text(t, ctx, "#explain tr.kind-layer td.next"); got != "store" {
			t.Errorf("a stored layer's next answer is shown as %q, want store", got)
		}
		screenshot(t, ctx, "explain")

		// An image's labels are its author's text: shown as text.
		visit(t, ctx, base+"/explain?target="+url.QueryEscape("team/labelled:latest"), "#explain dl.labels")
		if got := text(t, ctx, "#explain dl.labels"); !strings.Contains(got, xss) || !strings.Contains(got, "ops@example.com") {
			t.Errorf("labels shown as %q", got)
		}
		if n, flag := eval[int](t, ctx, `document.querySelectorAll("main img, main script").length`), eval[string](t, ctx, `String(window.__xss)`); n != 0 || flag != "undefined" {
			t.Errorf("a label became markup: %d elements, window.__xss=%s", n, flag)
		}
		screenshot(t, ctx, "explain-labels")
	})

	t.Run("cache pin unpin remove", func(t *testing.T) {
		l, err := cl.CacheList(t.Context(), "size")
		if err != nil {
			t.Fatal(err)
		}
		visit(t, ctx, base+"/cache", "#cache")
		if got := text(t, ctx, "#cache-total"); got != strconv.Itoa(len(l.Entries)) {
			t.Errorf("cache shows %s items, the admin API lists %d", got, len(l.Entries))
		}
		screenshot(t, ctx, "cache")
		top := l.Entries[0].Digest
		row := fmt.Sprintf(`#cache tr[data-digest="%s"]`, top)
		if m := clickThenNotice(t, ctx, row+" button"); m != "pinned "+top {
			t.Errorf("after Pin the page says %q", m)
		}
		if got := text(t, ctx, row+" td.pinned"); got != "pinned" {
			t.Errorf("pinned column says %q", got)
		}
		if !cachePinned(t, cl, top) {
			t.Error("the store does not have it pinned")
		}
		if part, err := cl.CacheListPart(t.Context(), "size", 5, true); err != nil || len(part.Entries) != 1 || part.Entries[0].Digest != top || part.Total != len(l.Entries) {
			t.Errorf("cache list of the pinned entries: %+v, %v", part, err)
		}
		if part, err := cl.CacheListPart(t.Context(), "size", 2, false); err != nil || len(part.Entries) != 2 || part.Entries[1].Digest != l.Entries[1].Digest {
			t.Errorf("cache list limited to 2: %+v, %v", part, err)
		}
		if m := clickThenNotice(t, ctx, row+" button"); m != "unpinned "+top || cachePinned(t, cl, top) {
			t.Errorf("after Unpin the page says %q (pinned in the store: %v)", m, cachePinned(t, cl, top))
		}
		if m := clickThenNotice(t, ctx, row+" button.danger"); !strings.HasPrefix(m, "removed "+top) {
			t.Errorf("after Remove the page says %q", m)
		}
		if _, err := a.store.Stat(t.Context(), digest.Digest(top)); err == nil {
			t.Error("removed content is still in the store")
		}
		if n := eval[int](t, ctx, fmt.Sprintf(`document.querySelectorAll('%s').length`, row)); n != 0 {
			t.Error("the removed row is still listed")
		}
	})

	// Images pushed into the local namespace: the node card counts them apart, the cache page
	// marks their manifest, config and layers (and nothing pulled from an upstream).
	t.Run("local images", func(t *testing.T) {
		local, _ := random.Image(48<<10, 2)
		for _, tag := range []string{"v1", "stable"} {
			ref, _ := name.ParseReference(a.Addr()+"/shoal.local/team/app:"+tag, name.Insecure)
			if err := remote.Write(ref, local); err != nil {
				t.Fatal(err)
			}
		}
		st, err := cl.Status(t.Context())
		if err != nil || st.Local == nil || st.Local.Images != 1 || st.Local.Tags != 2 {
			t.Fatalf("status local_images: %+v %v", st.Local, err)
		}
		visit(t, ctx, base+"/", "#store-local")
		want := fmt.Sprintf("1 in shoal.local (2 tags, %s, 1 pinned)", text(t, ctx, "#local-bytes"))
		if got := text(t, ctx, "#store-local"); got != want {
			t.Errorf("local images shown as %q, want %q", got, want)
		}
		if got := eval[string](t, ctx, `document.querySelector("#local-bytes").textContent`); got == "" || got == "0 B" {
			t.Errorf("local bytes shown as %q", got)
		}
		if st.Local.Bytes <= 48<<10 {
			t.Errorf("status counts %d local bytes for 96 KiB of layers", st.Local.Bytes)
		}
		screenshot(t, ctx, "overview-local")
		visit(t, ctx, base+"/cache", "#cache")
		ds := append(layerDigests(t, local), digest.Digest(mustDigest(t, local).String()))
		for _, d := range ds {
			if got := text(t, ctx, fmt.Sprintf(`#cache tr[data-digest="%s"] td.local`, d)); got != "local" {
				t.Errorf("cache row of %s: local column %q", d, got)
			}
		}
		// Exactly those: content pulled from the upstream is not marked.
		marked := eval[int](t, ctx, `[...document.querySelectorAll("#cache td.local")].filter(td => td.textContent === "local").length`)
		if marked != len(ds) {
			t.Errorf("%d rows marked local, the image has %d pieces", marked, len(ds))
		}
		if rows := eval[int](t, ctx, `document.querySelectorAll("#cache tr[data-digest]").length`); rows <= len(ds) {
			t.Errorf("the cache page lists %d rows: the upstream content is missing", rows)
		}
		if n := eval[int](t, ctx, `document.querySelectorAll("main img, main script").length`); n != 0 {
			t.Errorf("%d elements of markup in the page", n)
		}
		screenshot(t, ctx, "cache-local")
	})

	t.Run("search shows upstream text as text", func(t *testing.T) {
		visit(t, ctx, base+"/search?q=shoal", "#results")
		if got := text(t, ctx, "#result-count"); !strings.HasPrefix(got, "2 results") {
			t.Errorf("result count says %q", got)
		}
		injected := eval[int](t, ctx, `document.querySelectorAll("main img, main script").length`)
		flag := eval[string](t, ctx, `String(window.__xss)`)
		if injected != 0 || flag != "undefined" {
			t.Errorf("a search result became markup: %d elements, window.__xss=%s", injected, flag)
		}
		if got := text(t, ctx, "#results tbody tr:nth-child(2) td.desc"); got != xss {
			t.Errorf("the description is shown as %q, want the text %q", got, xss)
		}
		// A notice carries text from the URL: it is text too.
		visit(t, ctx, base+"/cache?msg="+url.QueryEscape(xss), "#msg")
		if got := text(t, ctx, "#msg"); got != xss || eval[string](t, ctx, `String(window.__xss)`) != "undefined" {
			t.Errorf("notice shows %q", got)
		}
		visit(t, ctx, base+"/search?q=shoal", "#results")
		screenshot(t, ctx, "search")
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#results a.result`)), chromedp.WaitVisible(chromedp.CSS("#tags"))); err != nil {
			t.Fatal(err)
		}
		if got := text(t, ctx, "#image-name"); got != "docker.io/library/consoletest" {
			t.Errorf("result leads to %q", got)
		}
	})

	t.Run("tags pull export", func(t *testing.T) {
		visit(t, ctx, base+"/image?name=docker.io/library/consoletest", "#tags")
		tags := text(t, ctx, "#tags")
		if !strings.Contains(tags, "latest") || !strings.Contains(tags, "1.0") {
			t.Errorf("tags listed: %q", tags)
		}
		screenshot(t, ctx, "image")
		row := `#tags tr[data-tag="latest"]`
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(row+" .pull-btn"))); err != nil {
			t.Fatal(err)
		}
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("pull-text").textContent.startsWith("Pulled ")`,
			chromedp.WithPollingTimeout(50*time.Second))); err != nil {
			t.Fatalf("pull did not finish: %v (%s)", err, text(t, ctx, "#pull-status"))
		}
		if got := text(t, ctx, "#pull-text"); !strings.Contains(got, "3 blobs") {
			t.Errorf("pull says %q, want 3 blobs (config + 2 layers)", got)
		}
		for _, d := range imageBlobs(t, img) {
			if _, err := a.store.Stat(t.Context(), d); err != nil {
				t.Errorf("blob %s not in the store after the pull", d)
			}
		}
		screenshot(t, ctx, "image-pulled")

		dir := t.TempDir()
		if _, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
			Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: dir}); err != nil {
			t.Fatal(err)
		}
		if err := chromedp.Do(ctx, chromedp.SetValue(chromedp.CSS(row+` input[name="platform"]`), "linux/amd64"),
			chromedp.Click(chromedp.CSS(row+" .export-btn"))); err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, "library_consoletest_latest_linux-amd64.tar")
		waitFor(t, func() bool { _, err := os.Stat(file); return err == nil })
		names := tarNames(t, file)
		if !names["manifest.json"] || !names["index.json"] {
			t.Errorf("the downloaded tar lacks manifest.json or index.json: %v", names)
		}
	})

	t.Run("a hidden tab does not refresh", func(t *testing.T) {
		// Count the page's fetches; in one tab the page is made to look hidden (as a
		// background tab or a minimised window is).
		const count = `window.__fetches = 0; { const f = window.fetch; window.fetch = (...a) => { window.__fetches++; return f(...a); }; }`
		hidden, cancel := chromedp.NewContext(ctx)
		defer cancel()
		if _, err := chromedp.Call(hidden, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{
			Source: count + ` Object.defineProperty(document, "visibilityState", {get: () => "hidden"});`}); err != nil {
			t.Fatal(err)
		}
		visit(t, hidden, base+"/", "#version")
		visible, cancel2 := chromedp.NewContext(ctx)
		defer cancel2()
		if _, err := chromedp.Call(visible, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: count}); err != nil {
			t.Fatal(err)
		}
		visit(t, visible, base+"/", "#version")
		// The visible tab refreshes after 5 s; the hidden one, loaded first, had its turn.
		wctx, cancel3 := context.WithTimeout(visible, 20*time.Second)
		defer cancel3()
		waitJS(t, wctx, `window.__fetches >= 1`)
		if n := eval[int](t, hidden, `window.__fetches`); n != 0 {
			t.Errorf("the hidden tab fetched %d times", n)
		}
	})

	if errs := jsErrors(); len(errs) > 0 {
		t.Errorf("JavaScript errors on the console's pages:\n%s", strings.Join(errs, "\n"))
	}

	t.Run("another site cannot act", func(t *testing.T) {
		l, err := cl.CacheList(t.Context(), "size")
		if err != nil || len(l.Entries) == 0 {
			t.Fatal(err)
		}
		target := l.Entries[0].Digest
		// A page on another origin posts a form to the console (CSRF).
		evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprintf(w, `<form id="f" method="post" action="%s/act/rm"><input name="target" value="%s"></form><script>document.getElementById("f").submit()</script>`, base, target)
		}))
		defer evil.Close()
		evilURL := strings.Replace(evil.URL, "127.0.0.1", "localhost", 1) // another origin
		tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := chromedp.Do(tctx, chromedp.Navigate(evilURL)); err != nil {
			t.Fatal(err)
		}
		waitJS(t, tctx, fmt.Sprintf(`location.host === %q && document.readyState === "complete"`, a.ConsoleAddr()))
		if body := text(t, tctx, "body"); !strings.Contains(body, "only the console's own pages may act") {
			t.Errorf("the cross-site form got %q", body)
		}
		if _, err := a.store.Stat(t.Context(), digest.Digest(target)); err != nil {
			t.Errorf("a cross-site form removed %s", target)
		}
		// Without a browser's proof at all, or with a foreign one: refused too.
		for name, h := range map[string]http.Header{
			"no proof":               {},
			"foreign Origin":         {"Origin": {"http://evil.example"}},
			"cross-site fetch":       {"Sec-Fetch-Site": {"cross-site"}, "Origin": {base}},
			"same-site (other port)": {"Sec-Fetch-Site": {"same-site"}},
		} {
			req, _ := http.NewRequest(http.MethodPost, base+"/act/rm", strings.NewReader("target="+url.QueryEscape(target)))
			req.Header = h.Clone()
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s: POST answered %s, want 403", name, resp.Status)
			}
		}
		if _, err := a.store.Stat(t.Context(), digest.Digest(target)); err != nil {
			t.Errorf("a POST without the proof removed %s", target)
		}
		// A rebound name (DNS rebinding) is refused even for reading.
		req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
		req.Host = "attacker.example:80"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("GET with a foreign Host answered %s, want 421", resp.Status)
		}
	})
}

// pushLabelled pushes a one-layer image whose config carries labels.
func pushLabelled(t *testing.T, up *upstreamLog, repo string, labels map[string]string) {
	t.Helper()
	img, err := random.Image(1<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.Config(img, v1.Config{Labels: labels}); err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(up.host()+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
}

func cachePinned(t *testing.T, cl *adminapi.Client, d string) bool {
	t.Helper()
	l, err := cl.CacheList(t.Context(), "size")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range l.Entries {
		if e.Digest == d {
			return e.Pinned
		}
	}
	return false
}

func tarNames(t *testing.T, file string) map[string]bool {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		names[h.Name] = true
	}
}

// Off loopback the console needs users: without an htpasswd file the daemon does not start
// (the address is refused before anything listens); with one, every request must log in.
func TestConsoleLogin(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Console.Listen = "0.0.0.0:9097"
	err := cfg.Validate()
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Key != "console.listen" || !strings.Contains(err.Error(), "htpasswd") {
		t.Fatalf("non-loopback console without htpasswd: %v, want a console.listen error naming htpasswd", err)
	}
	if _, err := New(t.Context(), cfg, testLogger(t)); err == nil {
		t.Fatal("daemon.New started a non-loopback console without login")
	}

	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(pw, []byte("ops:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Console.Htpasswd = pw
	if err := cfg.Validate(); err != nil {
		t.Fatalf("non-loopback console with htpasswd refused: %v", err)
	}

	up := newUpstream(t)
	d := startDaemon(t, up, withOps, withConsole("http://127.0.0.1:1"), func(c *Config) { c.Console.Htpasswd = pw })
	base := "http://" + d.ConsoleAddr()
	for _, tc := range []struct {
		name, user, pass string
		want             int
	}{
		{"no login", "", "", http.StatusUnauthorized},
		{"wrong password", "ops", "guess", http.StatusUnauthorized},
		{"unknown user", "root", "s3cret", http.StatusUnauthorized},
		{"logged in", "ops", "s3cret", http.StatusOK},
	} {
		req, _ := http.NewRequest(http.MethodGet, base+"/cache", nil)
		if tc.user != "" {
			req.SetBasicAuth(tc.user, tc.pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %s, want %d", tc.name, resp.Status, tc.want)
		}
		if tc.want == http.StatusUnauthorized && !strings.Contains(resp.Header.Get("WWW-Authenticate"), "Basic") {
			t.Errorf("%s: no Basic challenge", tc.name)
		}
		if strings.Contains(string(b), string(hash)) || strings.Contains(string(b), "s3cret") {
			t.Errorf("%s: a secret is in the page", tc.name)
		}
	}
}

// /v1/search: Docker Hub's answers are cached; each client may search search_per_minute times
// a minute (after a burst of 10), cached answers cost nothing; a registry's catalog is
// searched by name; /v1/tags lists tags.
func TestAdminSearchAndTags(t *testing.T) {
	up := newUpstream(t)
	pushRandom(t, up, "team/alpha:1", 1<<10, 1)
	pushRandom(t, up, "team/alpha:2", 1<<10, 1)
	pushRandom(t, up, "other/beta", 1<<10, 1)
	hub := newHubSearch(t, map[string][]adminapi.SearchResult{"redis": {{Name: "redis", Description: "Redis", StarCount: 13000, IsOfficial: true}}})
	d := startDaemon(t, up, withOps, func(c *Config) {
		c.Console.Listen = "off"
		c.Console.HubSearchURL = hub.srv.URL
		c.Console.SearchPerMinute = 1
	})
	cl := adminFor(t, d)
	ctx := t.Context()

	for i := range 3 {
		res, err := cl.Search(ctx, "redis", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if res.NumResults != 1 || res.Results[0].Name != "redis" || res.Registry != "docker.io" || res.Cached != (i > 0) {
			t.Errorf("search %d: %+v", i, res)
		}
	}
	if n := hub.queries.Load(); n != 1 {
		t.Errorf("Docker Hub asked %d times, want 1", n)
	}
	res, err := cl.Search(ctx, "ALPHA", up.host(), 0)
	if err != nil || len(res.Results) != 1 || res.Results[0].Name != up.host()+"/team/alpha" {
		t.Errorf("catalog search: %+v, %v", res, err)
	}
	// 8 more distinct searches use up the burst of 10; the 11th is refused with 429.
	for i := range 8 {
		if _, err := cl.Search(ctx, fmt.Sprint("term", i), "docker.io", 5); err != nil {
			t.Fatalf("search %d within the burst: %v", i, err)
		}
	}
	_, err = cl.Search(ctx, "one-too-many", "", 0)
	var ae *adminapi.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusTooManyRequests || ae.Code != adminapi.CodeRateLimited {
		t.Errorf("search over the limit: %v, want 429 rate_limited", err)
	}
	if _, err := cl.Search(ctx, "redis", "", 0); err != nil {
		t.Errorf("a cached answer over the limit: %v", err)
	}

	tags, err := cl.Tags(ctx, "team/alpha")
	if err != nil || strings.Join(tags.Tags, ",") != "1,2" || tags.Repo != "team/alpha" {
		t.Errorf("tags: %+v, %v", tags, err)
	}
	if _, err := cl.Tags(ctx, "team/nothing"); !isAPICode(err, adminapi.CodeNotFound) {
		t.Errorf("tags of an unknown repository: %v, want not_found", err)
	}
	if _, err := cl.Search(ctx, "", "", 0); !isAPICode(err, adminapi.CodeBadRequest) {
		t.Errorf("empty search: %v", err)
	}
}
