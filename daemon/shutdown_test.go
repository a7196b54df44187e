package daemon

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-mirror/shoal/upstream"
)

// shutdown_timeout bounds a stop with a download stuck upstream: the daemon gives up on the
// client's request and on the download after it, instead of 2 × 30 s.
func TestShutdownTimeoutBoundsTheStop(t *testing.T) {
	blob := []byte(strings.Repeat("shoal", 1<<16))
	dg := fmt.Sprintf("sha256:%x", sha256.Sum256(blob))
	started, release := make(chan struct{}, 1), make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.Header().Set("Docker-Content-Digest", dg)
		if r.Method == http.MethodHead {
			return
		}
		w.Write(blob[:1024])
		w.(http.Flusher).Flush()
		select {
		case started <- struct{}{}:
		default:
		}
		select { // a stuck upstream: the rest never comes while the daemon stops
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer up.Close()
	defer close(release)
	host := strings.TrimPrefix(up.URL, "http://")

	cfg := DefaultConfig()
	cfg.Listen, cfg.DataDir, cfg.DefaultRegistry = "127.0.0.1:0", t.TempDir(), host
	cfg.Upstream.OnlyConfigured, cfg.P2PEnabled = true, false
	cfg.AdminListen, cfg.MetricsListen = "off", "off"
	cfg.SetRegistry(host, upstream.RegistryConfig{URL: up.URL})
	cfg.ShutdownTimeout = 300 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := New(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()

	go func() {
		resp, err := http.Get("http://" + d.Addr() + "/v2/library/x/blobs/" + dg)
		if err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the download never reached the upstream")
	}
	stop := time.Now()
	cancel()
	select {
	case err := <-done:
		t.Logf("stopped %s after SIGTERM (shutdown_timeout 300ms): %v", time.Since(stop).Round(time.Millisecond), err)
	case <-time.After(5 * time.Second):
		t.Fatal("the daemon took more than 5 s to stop with shutdown_timeout 300ms")
	}
}
