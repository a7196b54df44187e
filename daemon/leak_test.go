package daemon

import (
	"context"
	"net/http"
	"testing"

	"go.uber.org/goleak"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/files/filestest"
	"github.com/shoal-mirror/shoal/upstream"
)

// TestMain fails the package's tests when a goroutine outlives them: a background loop not
// stopped by Close, a request not cancelled, a connection left open.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// A daemon that stopped leaves no goroutine behind while the rest of the process goes on (a
// test binary, or a program that embeds it): in particular no keep-alive connection to an
// upstream or a file host that is still up. TestMain's check cannot see that one in-process, because each
// test's upstream closes its connections when it stops; TestIndexSurvivesFullFilesystem's
// child daemon, whose upstream lives in the parent, showed it.
func TestStoppedDaemonLeavesNoGoroutine(t *testing.T) {
	up := newUpstream(t)
	pushRandom(t, up, "test/leak", 16<<10, 2)
	fx := filestest.New(t)
	asset := randBytes(t, 64<<10)
	fx.AddRelease("acme/tool", "v1", map[string][]byte{"tool.tar.gz": asset}, true)
	hub := newHubSearch(t, map[string][]adminapi.SearchResult{"redis": {{Name: "redis", StarCount: 1, IsOfficial: true}}})
	before := goleak.IgnoreCurrent()

	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.DefaultRegistry = up.host()
	cfg.Upstream.OnlyConfigured = true
	cfg.P2PEnabled = false
	cfg.MetricsListen = "127.0.0.1:0"
	cfg.Console.Listen = "off"
	cfg.Console.HubSearchURL = hub.srv.URL
	cfg.SetRegistry(up.host(), upstream.RegistryConfig{URL: up.srv.URL})
	for h, u := range fx.Hosts() {
		cfg.SetFileHost(h, u)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := New(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	if _, err := pullThrough(t, d, "test/leak:latest"); err != nil {
		t.Fatal(err)
	}
	if resp, body := httpGet(t, "http://"+d.Addr()+"/https://github.com/acme/tool/releases/download/v1/tool.tar.gz"); resp.StatusCode != http.StatusOK || sha256hex(body) != sha256hex(asset) {
		t.Fatalf("release file through the daemon: %s", resp.Status)
	}
	if res, err := adminFor(t, d).Search(t.Context(), "redis", "", 0); err != nil || len(res.Results) != 1 {
		t.Fatalf("search through the daemon: %+v, %v", res, err)
	}
	http.DefaultClient.CloseIdleConnections() // the test's own client, not the daemon's
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := goleak.Find(before); err != nil {
		t.Errorf("after Run returned: %v", err)
	}
}
