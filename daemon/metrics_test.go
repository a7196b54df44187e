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

// TestDirectCountersShown: B fetches an image's blobs from A (the upstream down) on a direct
// connection; what an operator reads — the admin API status and /metrics — shows the dial on
// B, the accepted connection and served requests on A, and no fallback to streams.
func TestDirectCountersShown(t *testing.T) {
	up := newUpstream(t)
	img := pushRandom(t, up, "test/direct", 256<<10, 2)
	a := startNode(t, up, nil, withOps)
	b := startNode(t, up, a.node.Addrs(), withOps)
	if _, err := pullThrough(t, a, "test/direct:latest"); err != nil {
		t.Fatal(err)
	}
	waitProvided(t, b.node, imageBlobs(t, img)...)
	up.down.Store(true)
	if _, err := pullThrough(t, b, "test/direct@"+mustDigest(t, img).String()); err != nil {
		t.Fatalf("pull from A with the upstream down: %v", err)
	}

	status := func(d *Daemon) adminapi.DirectStatus {
		t.Helper()
		s, err := adminFor(t, d).Status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if s.P2P == nil {
			t.Fatal("status: no p2p section")
		}
		return s.P2P.Direct
	}
	sa, sb := status(a), status(b)
	for name, s := range map[string]adminapi.DirectStatus{"A": sa, "B": sb} {
		if s.Port <= 0 {
			t.Errorf("%s: status p2p.direct.port = %d, want the listener's port", name, s.Port)
		}
	}
	if sb.Dials < 1 || sb.Fetched < 1 || sb.DialFailures != 0 || sb.Fallbacks != 0 {
		t.Errorf("B (asker): status p2p.direct = %+v, want ≥ 1 dial, ≥ 1 request fetched, no dial failure, no request over a stream", sb)
	}
	// After the pull, B keeps its connection to A in its pool for the next blob.
	waitFor(t, func() bool { sb = status(b); return sb.Idle >= 1 && sb.Open >= sb.Idle })
	if sa.Accepted < 1 || sa.Served < 1 || sa.Refused != 0 {
		t.Errorf("A (server): status p2p.direct = %+v, want ≥ 1 accepted, ≥ 1 served, none refused", sa)
	}
	if sa.Served != sb.Fetched {
		t.Errorf("A served %d requests on direct connections, B sent %d", sa.Served, sb.Fetched)
	}

	// /metrics: the same figures, counters as counters, gauges as gauges.
	check := func(d *Daemon, name string, want float64, typ dto.MetricType) {
		t.Helper()
		mfs := scrape(t, d.MetricsAddr())
		mf := mfs[name]
		if mf == nil {
			t.Errorf("/metrics has no %s", name)
			return
		}
		if mf.GetType() != typ || mf.GetHelp() == "" {
			t.Errorf("%s: type %v help %q, want %v with help", name, mf.GetType(), mf.GetHelp(), typ)
		}
		if v, _ := metricValue(mfs, name, nil); v != want {
			t.Errorf("%s = %v, want %v (as in the status)", name, v, want)
		}
	}
	check(b, "shoal_p2p_direct_port", float64(sb.Port), dto.MetricType_GAUGE)
	check(b, "shoal_p2p_direct_dials_total", float64(sb.Dials), dto.MetricType_COUNTER)
	check(b, "shoal_p2p_direct_dial_failures_total", 0, dto.MetricType_COUNTER)
	check(b, "shoal_p2p_direct_fetched_total", float64(sb.Fetched), dto.MetricType_COUNTER)
	check(b, "shoal_p2p_direct_fallbacks_total", 0, dto.MetricType_COUNTER)
	check(b, "shoal_p2p_direct_idle_connections", float64(sb.Idle), dto.MetricType_GAUGE)
	check(a, "shoal_p2p_direct_port", float64(sa.Port), dto.MetricType_GAUGE)
	check(a, "shoal_p2p_direct_accepted_total", float64(sa.Accepted), dto.MetricType_COUNTER)
	check(a, "shoal_p2p_direct_refused_total", 0, dto.MetricType_COUNTER)
	check(a, "shoal_p2p_direct_served_total", float64(sa.Served), dto.MetricType_COUNTER)
	check(a, "shoal_p2p_bad_requests_total", 0, dto.MetricType_COUNTER)
	if v, _ := metricValue(scrape(t, b.MetricsAddr()), "shoal_p2p_direct_open_connections", nil); v < 1 {
		t.Errorf("B: shoal_p2p_direct_open_connections = %v, want ≥ 1", v)
	}
}
