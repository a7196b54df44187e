package admin

import (
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/files"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// Metrics is shoal's Prometheus registry (its own, never the global one, so that two daemons
// in one process, as in tests, do not collide). Request counters are recorded by the access
// log (ObserveRequest); everything the store, the upstream client, the downloads, the guard
// and the P2P node already count is read at scrape time from State.
type Metrics struct {
	reg *prometheus.Registry

	requests *prometheus.CounterVec   // route, source, status
	bytes    *prometheus.CounterVec   // route, source
	duration *prometheus.HistogramVec // route
	lookups  *prometheus.HistogramVec // result
	provides *prometheus.CounterVec   // result

	// observers holds the request series already resolved, by obsKey: WithLabelValues hashes
	// and looks up every label set on every call, three times per request.
	observers sync.Map

	mu       sync.Mutex
	bySource map[string]*adminapi.SourceCount // manifest and blob answers, for `shoal status`
	timeline timeline                         // the same per minute, last hour (timeline.go)
}

// State is what the metrics read at scrape time from the daemon's parts.
type State struct {
	Store     *store.Store
	Upstream  *upstream.Client
	Node      Node // nil: P2P disabled
	Downloads Downloads
	Guard     func() GuardCounts // nil: no guard counters
}

// BoundReasons are the reasons a download breaks its size bound (Downloads.BoundExceeded),
// each exported even at zero.
var BoundReasons = []string{"descriptor", "content_length", "max_blob_size"}

// NewMetrics builds the registry; version labels shoal_build_info.
func NewMetrics(version string, st State) *Metrics {
	state := &stateCollector{st}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_http_requests_total",
			Help: "Mirror API requests by route (manifest, blob, tags, referrers, base, health, other), source of the answer (store, inflight, peer, designated, upstream, passthrough, none) and HTTP status.",
		}, []string{"route", "source", "status"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_http_response_bytes_total",
			Help: "Response body bytes sent by the mirror API, by route and source.",
		}, []string{"route", "source"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "shoal_http_request_duration_seconds",
			Help:    "Time from request to the last byte of the answer, by route.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"route"}),
		lookups: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "shoal_p2p_lookup_duration_seconds",
			Help:    "Provider lookups made on a cache miss, by result (found, none, error).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .2, .3, .5, 1, 2.5},
		}, []string{"result"}),
		provides: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_p2p_provides_total",
			Help: "Provider records announced after a commit, by result (ok, error).",
		}, []string{"result"}),
		bySource: map[string]*adminapi.SourceCount{},
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "shoal_build_info", Help: "Always 1; the version label says which shoal runs.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	info.Set(1)
	m.reg.MustRegister(m.requests, m.bytes, m.duration, m.lookups, m.provides, info, state,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// routeOf names a mirror path's route without parsing it fully (the label set must stay small
// whatever clients send).
func routeOf(path string) string {
	switch {
	case path == "/v2/" || path == "/v2":
		return "base"
	case !strings.HasPrefix(path, "/v2/"):
		if path == "/healthz" || path == "/readyz" {
			return "health"
		}
		if strings.HasPrefix(path, "/hf/api/") {
			return "file_meta" // the daemon's files endpoint
		}
		if files.IsFilePath(path) {
			return "file"
		}
		return "other"
	case strings.HasSuffix(path, "/tags/list"):
		return "tags"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case strings.Contains(path, "/referrers/"):
		return "referrers"
	}
	return "other"
}

var knownSources = map[string]bool{"store": true, "inflight": true, "peer": true, "designated": true, "upstream": true, "passthrough": true}

// Request is a finished mirror request as the access log saw it.
type Request struct {
	Path     string
	Status   int
	Bytes    int64
	Source   string // the X-Shoal-Source the mirror answered with
	Duration time.Duration
}

// ObserveRequest records one finished mirror request.
func (m *Metrics) ObserveRequest(rd Request) {
	route := routeOf(rd.Path)
	source := rd.Source
	if !knownSources[source] {
		source = "none"
	}
	k := obsKey{route, source, rd.Status}
	o, ok := m.observers.Load(k)
	if !ok { // the label sets are few (routes × sources × statuses): each is resolved once
		o, _ = m.observers.LoadOrStore(k, &requestObservers{
			requests: m.requests.WithLabelValues(route, source, strconv.Itoa(rd.Status)),
			bytes:    m.bytes.WithLabelValues(route, source),
			duration: m.duration.WithLabelValues(route),
		})
	}
	ob := o.(*requestObservers)
	ob.requests.Inc()
	ob.bytes.Add(float64(rd.Bytes))
	ob.duration.Observe(rd.Duration.Seconds())
	if (route == "manifest" || route == "blob" || route == "file") && rd.Status < 300 && source != "none" {
		m.mu.Lock()
		sc := m.bySource[source]
		if sc == nil {
			sc = &adminapi.SourceCount{Source: source}
			m.bySource[source] = sc
		}
		sc.Requests++
		sc.Bytes += rd.Bytes
		m.timeline.add(time.Now(), source, rd.Bytes)
		m.mu.Unlock()
	}
}

// obsKey names one request series: route, source and status.
type obsKey struct {
	route, source string
	status        int
}

// requestObservers are one obsKey's series, resolved.
type requestObservers struct {
	requests, bytes prometheus.Counter
	duration        prometheus.Observer
}

// sources returns the answers by source, largest first.
func (m *Metrics) sources() []adminapi.SourceCount {
	m.mu.Lock()
	out := make([]adminapi.SourceCount, 0, len(m.bySource))
	for _, sc := range m.bySource {
		out = append(out, *sc)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Requests != out[j].Requests {
			return out[i].Requests > out[j].Requests
		}
		return out[i].Source < out[j].Source
	})
	return out
}

// lastHour returns the answers by source per minute over the last hour.
func (m *Metrics) lastHour() adminapi.Timeline {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.timeline.minutes(time.Now())
}

// routes serves /metrics and the probes. /healthz answers while the process serves HTTP at
// all; /readyz only while the mirror and admin listeners serve and the store is open.
func (m *Metrics) routes(ready func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready() {
			http.Error(w, "not ready: starting or shutting down", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// MustRegister adds collectors of the daemon's own (the doctor's) to the registry.
func (m *Metrics) MustRegister(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// stateCollector reads counters the daemon's parts keep themselves, at scrape time.
type stateCollector struct{ State }

var (
	descStoreBytes       = prometheus.NewDesc("shoal_store_bytes", "Bytes of content in the store.", nil, nil)
	descStoreMax         = prometheus.NewDesc("shoal_store_max_bytes", "The store's budget in bytes.", nil, nil)
	descStoreBlobs       = prometheus.NewDesc("shoal_store_blobs", "Pieces of content (blobs and manifests) in the store.", nil, nil)
	descStoreEvict       = prometheus.NewDesc("shoal_store_evictions_total", "Content removed from the store, by reason (lru, min-free, no-space, ttl, corrupt, missing, deleted).", []string{"reason"}, nil)
	descStoreHits        = prometheus.NewDesc("shoal_store_hits_total", "Store reads that found the content.", nil, nil)
	descStoreMisses      = prometheus.NewDesc("shoal_store_misses_total", "Store reads that did not find the content.", nil, nil)
	descStoreVerify      = prometheus.NewDesc("shoal_store_verify_failures_total", "Content found corrupt by verification.", nil, nil)
	descUpRequests       = prometheus.NewDesc("shoal_upstream_requests_total", "Upstream registry responses by registry and HTTP status (\"error\": no response).", []string{"registry", "status"}, nil)
	descUpTokens         = prometheus.NewDesc("shoal_upstream_tokens_fetched_total", "Tokens fetched from upstream token servers, by registry.", []string{"registry"}, nil)
	descUpTokenErrors    = prometheus.NewDesc("shoal_upstream_token_errors_total", "Failed token fetches, by registry.", []string{"registry"}, nil)
	descUpRemaining      = prometheus.NewDesc("shoal_upstream_ratelimit_remaining", "Pulls left in the registry's rate-limit window, as it last reported.", []string{"registry"}, nil)
	descUpLimit          = prometheus.NewDesc("shoal_upstream_ratelimit_limit", "The registry's rate limit per window, as it last reported.", []string{"registry"}, nil)
	descInflight         = prometheus.NewDesc("shoal_inflight_fetches", "Blob downloads in flight (each shared by every client that wants the blob).", nil, nil)
	descP2PEnabled       = prometheus.NewDesc("shoal_p2p_enabled", "1 when the P2P node runs.", nil, nil)
	descP2PPeers         = prometheus.NewDesc("shoal_p2p_peers", "Connected peers.", nil, nil)
	descP2PBanned        = prometheus.NewDesc("shoal_p2p_banned_peers", "Peers banned right now.", nil, nil)
	descP2PRouting       = prometheus.NewDesc("shoal_p2p_routing_table_peers", "Peers in the DHT routing table.", nil, nil)
	descP2PProvided      = prometheus.NewDesc("shoal_p2p_provided_digests", "Digests this node advertises.", nil, nil)
	descP2PLookups       = prometheus.NewDesc("shoal_p2p_lookups_total", "Provider lookups (all callers).", nil, nil)
	descP2PHits          = prometheus.NewDesc("shoal_p2p_lookup_hits_total", "Provider lookups that found a provider.", nil, nil)
	descP2PBans          = prometheus.NewDesc("shoal_p2p_bans_total", "Peers banned (for sending bytes that do not match their digest).", nil, nil)
	descGuardRefused     = prometheus.NewDesc("shoal_guard_refused_total", "Mirror API requests refused by the access controls, by reason (address, uri_too_long, rate, auth, repository, concurrency).", []string{"reason"}, nil)
	descGuardConnRefused = prometheus.NewDesc("shoal_guard_connections_refused_total", "Mirror connections closed as soon as accepted: the client held security.max_conns_per_client already.", nil, nil)
	descMirrorConns      = prometheus.NewDesc("shoal_http_open_connections", "Open connections to the mirror API.", nil, nil)
	descP2PRedirected    = prometheus.NewDesc("shoal_p2p_redirected_total", "Peer requests redirected to the peers following a download (the node was at p2p.max_uploads_per_blob for that blob).", nil, nil)
	descP2PInboundFailed = prometheus.NewDesc("shoal_p2p_inbound_handshake_failures_total", "Inbound connections closed before their secure handshake completed (a node with another swarm key or none; port scans count too).", nil, nil)
	descBlobBound        = prometheus.NewDesc("shoal_blob_bound_exceeded_total", "Blob downloads stopped because they broke their size bound, by reason (descriptor, content_length, max_blob_size).", []string{"reason"}, nil)
	descP2PBytesIn       = prometheus.NewDesc("shoal_p2p_peer_received_bytes", "Blob bytes received from each connected peer.", []string{"peer"}, nil)
	descP2PBytesOut      = prometheus.NewDesc("shoal_p2p_peer_sent_bytes", "Blob bytes served to each connected peer.", []string{"peer"}, nil)
	descP2PBadRequests   = prometheus.NewDesc("shoal_p2p_bad_requests_total", "Peers' blob requests (streams or direct connections) too long, malformed, cut off or too slow: each closed the exchange.", nil, nil)
	descDirectPort       = prometheus.NewDesc("shoal_p2p_direct_port", "The port of the direct listener for peers' blob bytes (0: direct connections off).", nil, nil)
	descDirectOpen       = prometheus.NewDesc("shoal_p2p_direct_open_connections", "Direct connections open now (served and dialled).", nil, nil)
	descDirectIdle       = prometheus.NewDesc("shoal_p2p_direct_idle_connections", "Direct connections this node keeps in its pool for its next request to that peer.", nil, nil)
	descDirectFallbacks  = prometheus.NewDesc("shoal_p2p_direct_fallbacks_total", "Blob requests this node sent over a libp2p stream although direct connections are on (the peer has no direct port, or its dial failed now or within the last minute).", nil, nil)
	descDirectAccepted   = prometheus.NewDesc("shoal_p2p_direct_accepted_total", "Direct connections accepted from peers.", nil, nil)
	descDirectRefused    = prometheus.NewDesc("shoal_p2p_direct_refused_total", "Direct connections closed before a request: no valid libp2p certificate, a peer not connected over libp2p from that IP or banned, over the limit, a handshake too slow.", nil, nil)
	descDirectServed     = prometheus.NewDesc("shoal_p2p_direct_served_total", "Peers' blob requests answered on direct connections.", nil, nil)
	descDirectFetched    = prometheus.NewDesc("shoal_p2p_direct_fetched_total", "Blob requests this node sent to peers on direct connections.", nil, nil)
	descDirectDials      = prometheus.NewDesc("shoal_p2p_direct_dials_total", "Direct connections this node opened to peers.", nil, nil)
	descDirectDialFailed = prometheus.NewDesc("shoal_p2p_direct_dial_failures_total", "Direct connections that failed to open: the request fell back to a libp2p stream.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descStoreBytes, descStoreMax, descStoreBlobs, descStoreEvict, descStoreHits, descStoreMisses,
		descStoreVerify, descUpRequests, descUpTokens, descUpTokenErrors, descUpRemaining, descUpLimit, descInflight, descP2PEnabled,
		descP2PPeers, descP2PBanned, descP2PRouting, descP2PProvided, descP2PLookups, descP2PHits, descP2PBans, descP2PRedirected, descP2PInboundFailed, descP2PBytesIn, descP2PBytesOut, descGuardRefused,
		descGuardConnRefused, descMirrorConns, descBlobBound, descP2PBadRequests, descDirectPort, descDirectOpen, descDirectAccepted,
		descDirectRefused, descDirectServed, descDirectFetched, descDirectDials, descDirectDialFailed, descDirectIdle, descDirectFallbacks} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	st := c.Store.Stats()
	gauge(descStoreBytes, float64(st.BytesUsed))
	gauge(descStoreMax, float64(st.MaxSize))
	gauge(descStoreBlobs, float64(st.Blobs))
	for _, reason := range []string{store.ReasonLRU, store.ReasonMinFree, store.ReasonNoSpace, store.ReasonTTL, store.ReasonCorrupt, store.ReasonMissing, store.ReasonDeleted} {
		counter(descStoreEvict, float64(st.Evictions[reason]), reason)
	}
	counter(descStoreHits, float64(st.Hits))
	counter(descStoreMisses, float64(st.Misses))
	counter(descStoreVerify, float64(st.VerifyFailures))
	for _, u := range c.Upstream.Stats() {
		for code, n := range u.Responses {
			counter(descUpRequests, float64(n), u.Registry, strconv.Itoa(code))
		}
		if u.TransportErrors > 0 {
			counter(descUpRequests, float64(u.TransportErrors), u.Registry, "error")
		}
		counter(descUpTokens, float64(u.TokensFetched), u.Registry)
		counter(descUpTokenErrors, float64(u.TokenErrors), u.Registry)
		if rl := u.RateLimit; rl != nil {
			if rl.Remaining >= 0 {
				gauge(descUpRemaining, float64(rl.Remaining), u.Registry)
			}
			if rl.Limit >= 0 {
				gauge(descUpLimit, float64(rl.Limit), u.Registry)
			}
		}
	}
	gauge(descInflight, float64(c.Downloads.Count()))
	bounded := c.Downloads.BoundExceeded()
	for _, reason := range BoundReasons {
		counter(descBlobBound, float64(bounded[reason]), reason)
	}
	if c.Guard != nil {
		g := c.Guard()
		for reason, n := range g.Refused {
			counter(descGuardRefused, float64(n), reason)
		}
		counter(descGuardConnRefused, float64(g.ConnsRefused))
		gauge(descMirrorConns, float64(g.Conns))
	}
	if c.Node == nil {
		gauge(descP2PEnabled, 0)
		return
	}
	gauge(descP2PEnabled, 1)
	ns := c.Node.Status()
	var peers, banned int
	for _, p := range ns.Peers {
		switch {
		case p.Banned:
			banned++
		case len(p.Addrs) > 0:
			peers++
			gauge(descP2PBytesIn, float64(p.BytesIn), p.ID)
			gauge(descP2PBytesOut, float64(p.BytesOut), p.ID)
		}
	}
	gauge(descP2PPeers, float64(peers))
	gauge(descP2PBanned, float64(banned))
	gauge(descP2PRouting, float64(ns.RoutingTableSize))
	gauge(descP2PProvided, float64(ns.Provided))
	counter(descP2PLookups, float64(ns.Lookups))
	counter(descP2PHits, float64(ns.LookupHits))
	counter(descP2PBans, float64(ns.Bans))
	counter(descP2PRedirected, float64(ns.Redirected))
	counter(descP2PInboundFailed, float64(ns.InboundHandshakeFailures))
	counter(descP2PBadRequests, float64(ns.BadRequests))
	d := ns.Direct
	gauge(descDirectPort, float64(d.Port))
	gauge(descDirectOpen, float64(d.Open))
	counter(descDirectAccepted, float64(d.Accepted))
	counter(descDirectRefused, float64(d.Refused))
	counter(descDirectServed, float64(d.Served))
	counter(descDirectFetched, float64(d.Fetched))
	counter(descDirectDials, float64(d.Dials))
	counter(descDirectDialFailed, float64(d.DialFailures))
	gauge(descDirectIdle, float64(d.Idle))
	counter(descDirectFallbacks, float64(d.Streamed))
}

// ObserveLookup records one provider lookup made on a cache miss: its time and what it found.
func (m *Metrics) ObserveLookup(took time.Duration, found int, err error) {
	result := "found"
	switch {
	case err != nil:
		result = "error"
	case found == 0:
		result = "none"
	}
	m.lookups.WithLabelValues(result).Observe(took.Seconds())
}

// ObserveProvide counts one provider record announced after a commit.
func (m *Metrics) ObserveProvide(err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.provides.WithLabelValues(result).Inc()
}
