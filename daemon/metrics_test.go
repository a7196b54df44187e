package daemon

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/shoal-mirror/shoal/adminapi"
)

// scrape fetches /metrics and parses it with Prometheus' own text parser.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return mfs
}

// metricValue returns the value of the series of family name whose labels include want, and
// whether there is one.
func metricValue(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

func TestMetricsAfterAPull(t *testing.T) {
	// An upstream that reports Docker Hub style rate-limit headers.
	reg := registry.New(registry.Logger(nopLog()))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("RateLimit-Limit", "100;w=21600")
		w.Header().Set("RateLimit-Remaining", "42;w=21600")
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	up := &upstreamLog{srv: srv}
	img := pushRandom(t, up, "test/metrics", 128<<10, 3)
	d := startDaemon(t, up, withOps)
	if d.MetricsAddr() == "" {
		t.Fatal("no metrics listener")
	}
	if _, done := pull(t, adminFor(t, d), adminapi.PullRequest{Images: []string{"test/metrics"}}); done.Errors > 0 {
		t.Fatalf("pull: %+v", done)
	}
	var blobBytes int64
	layers, _ := img.Layers()
	for _, l := range layers {
		blobBytes += mustSize(t, l)
	}
	rawCfg, _ := img.RawConfigFile()
	blobBytes += int64(len(rawCfg))
	manifest, _ := img.RawManifest()

	mfs := scrape(t, d.MetricsAddr())
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"shoal_http_requests_total", map[string]string{"route": "blob", "source": "upstream", "status": "200"}, 4},
		{"shoal_http_requests_total", map[string]string{"route": "manifest", "source": "upstream", "status": "200"}, 1},
		{"shoal_http_response_bytes_total", map[string]string{"route": "blob", "source": "upstream"}, float64(blobBytes)},
		{"shoal_http_request_duration_seconds", map[string]string{"route": "blob"}, 4},
		{"shoal_store_blobs", nil, 5},
		{"shoal_store_bytes", nil, float64(blobBytes + int64(len(manifest)))},
		{"shoal_upstream_ratelimit_remaining", map[string]string{"registry": up.host()}, 42},
		{"shoal_upstream_ratelimit_limit", map[string]string{"registry": up.host()}, 100},
		{"shoal_inflight_fetches", nil, 0},
		{"shoal_p2p_enabled", nil, 0},
		{"shoal_store_evictions_total", map[string]string{"reason": "lru"}, 0},
		{"shoal_build_info", map[string]string{"version": ""}, 1},
	}
	for _, c := range checks {
		got, ok := metricValue(mfs, c.name, c.labels)
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (present: %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if n, ok := metricValue(mfs, "shoal_upstream_requests_total", map[string]string{"registry": up.host(), "status": "200"}); !ok || n < 5 {
		t.Errorf("shoal_upstream_requests_total{status=200} = %v, want ≥ 5 (manifest + 4 blobs)", n)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if mfs[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + d.MetricsAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %s", path, resp.Status)
		}
	}
}

// With P2P on, the node's state is in the metrics, and the mirror's lookups are timed.
func TestMetricsP2P(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/p2pmetrics", 32<<10, 1)
	a := startNode(t, up, nil, withOps)
	b := startNode(t, up, a.node.Addrs(), withOps)
	if _, err := pullThrough(t, a, "test/p2pmetrics:latest"); err != nil {
		t.Fatal(err)
	}
	waitProvided(t, b.node, imageBlobs(t, img)...)
	if _, err := pullThrough(t, b, "test/p2pmetrics:latest"); err != nil {
		t.Fatal(err)
	}
	mfs := scrape(t, b.MetricsAddr())
	if v, _ := metricValue(mfs, "shoal_p2p_enabled", nil); v != 1 {
		t.Errorf("shoal_p2p_enabled = %v, want 1", v)
	}
	if v, _ := metricValue(mfs, "shoal_p2p_peers", nil); v < 1 {
		t.Errorf("shoal_p2p_peers = %v, want ≥ 1", v)
	}
	if v, _ := metricValue(mfs, "shoal_p2p_lookups_total", nil); v < 1 {
		t.Errorf("shoal_p2p_lookups_total = %v, want ≥ 1", v)
	}
	var lookups float64
	for _, result := range []string{"found", "none", "error"} {
		v, _ := metricValue(mfs, "shoal_p2p_lookup_duration_seconds", map[string]string{"result": result})
		lookups += v
	}
	if lookups < 1 {
		t.Errorf("shoal_p2p_lookup_duration_seconds has %v observations, want ≥ 1", lookups)
	}
}
