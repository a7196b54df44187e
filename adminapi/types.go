package adminapi

import "time"

// Error codes of API errors; the CLI turns them into exit codes.
const (
	CodeNotFound   = "not_found"   // the image, digest or peer is unknown (HTTP 404)
	CodeBadRequest = "bad_request" // the request is malformed (HTTP 400)
	CodeDisabled   = "p2p_disabled"
	CodeInternal   = "internal"
	CodeForbidden  = "forbidden" // refused as a request a web page made (HTTP 403, or 421 for a foreign Host)
)

// Header must be set (to "1") on every admin API request over TCP that is not a GET or HEAD.
// A web page cannot send it to another origin without a CORS preflight, which the daemon never
// grants, so a page open in a browser on the node cannot pull, remove or pin content.
const Header = "X-Shoal-Admin"

// ErrorBody is the JSON body of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Status is `shoal status`: who the daemon is, how full its store is, where answers came
// from, how the upstreams fare and what the swarm looks like.
type Status struct {
	Version         string    `json:"version"`
	PID             int       `json:"pid"`
	StartedAt       time.Time `json:"started_at"`
	UptimeSeconds   float64   `json:"uptime_seconds"`
	Listen          string    `json:"listen"`
	Admin           string    `json:"admin"`
	Metrics         string    `json:"metrics,omitempty"`
	DataDir         string    `json:"data_dir"`
	DefaultRegistry string    `json:"default_registry"`
	Ready           bool      `json:"ready"`

	Store StoreStatus `json:"store"`
	// Sources counts manifest and blob answers (2xx) by where they came from: store, inflight
	// (joined a download under way), peer, designated (the swarm's fetcher for it), upstream,
	// passthrough (store full).
	Sources []SourceCount `json:"sources"`
	// HitRatio is the share of those answers for which this node did not go to the upstream
	// (store, inflight, peer and designated), 0 when there were none.
	HitRatio       float64          `json:"hit_ratio"`
	InFlight       int              `json:"inflight_fetches"`
	Upstreams      []UpstreamStatus `json:"upstreams"`
	P2P            *P2PStatus       `json:"p2p"` // null: P2P disabled
	HistoryEntries int              `json:"history_entries"`
	// Local is what the store holds for the cluster-local namespace (push.namespace); null
	// when pushes are off.
	Local *LocalImages `json:"local_images,omitempty"`
}

// LocalImages is the store's share held for the cluster-local namespace: pushed images and
// copies of them, apart from cached upstream content. Pinned images are never evicted by LRU
// or TTL; their bytes count against the store's budget.
type LocalImages struct {
	Namespace string `json:"namespace"`
	Tags      int    `json:"tags"`
	Images    int    `json:"images"`
	Pinned    int    `json:"pinned"`
	Bytes     int64  `json:"bytes"`
}

// StoreStatus is the store's usage against its budget.
type StoreStatus struct {
	BytesUsed      int64            `json:"bytes_used"`
	MaxSize        int64            `json:"max_size"`
	Items          int64            `json:"items"`
	Hits           int64            `json:"hits"`
	Misses         int64            `json:"misses"`
	VerifyFailures int64            `json:"verify_failures"`
	Evictions      map[string]int64 `json:"evictions"`
}

// SourceCount is how many answers (and bytes) came from one source.
type SourceCount struct {
	Source   string `json:"source"`
	Requests int64  `json:"requests"`
	Bytes    int64  `json:"bytes"`
}

// UpstreamStatus is one upstream registry's traffic and health.
type UpstreamStatus struct {
	Registry        string           `json:"registry"`
	Responses       map[string]int64 `json:"responses"` // by HTTP status code
	TransportErrors int64            `json:"transport_errors"`
	TokensFetched   int64            `json:"tokens_fetched"`
	TokenErrors     int64            `json:"token_errors"`
	LastOK          *time.Time       `json:"last_ok,omitempty"`
	LastError       *time.Time       `json:"last_error,omitempty"`
	LastErrorText   string           `json:"last_error_text,omitempty"`
	// Healthy: the last thing heard from the registry was not an error.
	Healthy   bool       `json:"healthy"`
	RateLimit *RateLimit `json:"rate_limit,omitempty"`
}

// RateLimit is the last rate-limit state a registry reported; -1 means not given.
type RateLimit struct {
	Limit         int       `json:"limit"`
	Remaining     int       `json:"remaining"`
	WindowSeconds int64     `json:"window_seconds"`
	Seen          time.Time `json:"seen"`
}

// P2PStatus summarises the node's place in the swarm.
type P2PStatus struct {
	PeerID           string   `json:"peer_id"`
	Addrs            []string `json:"addrs"`
	Peers            int      `json:"peers"`  // connected
	Banned           int      `json:"banned"` // currently banned
	RoutingTableSize int      `json:"routing_table_size"`
	Provided         int      `json:"provided"`
	Lookups          int64    `json:"lookups"`
	LookupHits       int64    `json:"lookup_hits"`
	LookupP50Ms      float64  `json:"lookup_p50_ms"`
	LookupP99Ms      float64  `json:"lookup_p99_ms"`
	Bans             int64    `json:"bans"`
	// Redirected counts peer requests sent on to the peers following a download, because
	// max_uploads_per_blob peers were already streaming that blob from this node.
	Redirected int64 `json:"redirected"`
	// SwarmKey is the fingerprint of the swarm key (private network); empty without one.
	// Nodes that show the same fingerprint hold the same key.
	SwarmKey string `json:"swarm_key,omitempty"`
	// BootstrapError says why the last bootstrap round reached no peer; empty once one did.
	BootstrapError string `json:"bootstrap_error,omitempty"`
	// NotListening says why the node listens for no peer (no listen address given and no way
	// to find peers); empty when it listens.
	NotListening string `json:"not_listening,omitempty"`
	// InboundHandshakeFailures counts inbound connections that closed before their secure
	// handshake completed: a node with another swarm key or none (port scans count too).
	InboundHandshakeFailures int64 `json:"inbound_handshake_failures"`
	// LastInboundFailure is the remote address of the latest, with its time.
	LastInboundFailure   string     `json:"last_inbound_failure,omitempty"`
	LastInboundFailureAt *time.Time `json:"last_inbound_failure_at,omitempty"`
	// BadRequests counts peers' blob requests (over streams or direct connections) whose line
	// was too long, malformed, cut off or too slow: each closed the exchange.
	BadRequests int64 `json:"bad_requests"`
	// Direct describes the direct connections that carry blob bytes between peers.
	Direct DirectStatus `json:"direct"`
}

// DirectStatus counts the direct connections (TLS over TCP, one per peer pair) that carry
// blob bytes between peers; without one a request goes over a libp2p stream.
type DirectStatus struct {
	// Port is the direct listener's port; 0: direct connections are off (p2p.direct_port).
	Port int `json:"port"`
	// Open is how many direct connections are open now, served and dialled; Idle how many of
	// them wait in this node's pool for its next request to that peer.
	Open int64 `json:"open"`
	Idle int64 `json:"idle"`
	// Accepted counts connections accepted from peers; Refused those closed before a request
	// (no valid libp2p certificate, a peer not connected over libp2p from that IP or banned,
	// over the limit, a handshake too slow).
	Accepted int64 `json:"accepted"`
	Refused  int64 `json:"refused"`
	// Served counts requests answered on direct connections; Fetched requests sent on them.
	Served  int64 `json:"served"`
	Fetched int64 `json:"fetched"`
	// Dials counts connections this node opened; DialFailures those that failed: the request
	// then fell back to a libp2p stream (and the peer is asked over streams for a minute).
	Dials        int64 `json:"dials"`
	DialFailures int64 `json:"dial_failures"`
	// Fallbacks counts requests this node sent over a libp2p stream although direct
	// connections are on: the peer has no direct port, or its dial failed now or within the
	// last minute.
	Fallbacks int64 `json:"fallbacks"`
}

// Peers is `shoal peers`.
type Peers struct {
	Enabled bool   `json:"enabled"`
	Self    string `json:"self,omitempty"`
	Peers   []Peer `json:"peers"`
}

// Peer is one connected or banned peer.
type Peer struct {
	ID          string     `json:"id"`
	Addrs       []string   `json:"addrs"`
	LatencyMs   float64    `json:"latency_ms"`
	BytesIn     int64      `json:"bytes_in"`
	BytesOut    int64      `json:"bytes_out"`
	Failures    int64      `json:"failures"`
	Banned      bool       `json:"banned"`
	BannedUntil *time.Time `json:"banned_until,omitempty"`
}

// Ping is `shoal peers ping ID`.
type Ping struct {
	Peer  string  `json:"peer"`
	RTTMs float64 `json:"rtt_ms"`
}

// CacheEntry is one piece of content in the store.
type CacheEntry struct {
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	MediaType string `json:"media_type,omitempty"`
	Kind      string `json:"kind"` // index, manifest, blob or file
	// Name is a file's name (hf://ORG/NAME@COMMIT/PATH, https://github.com/…), kind file only.
	Name     string    `json:"name,omitempty"`
	Created  time.Time `json:"created"`
	Accessed time.Time `json:"accessed"`
	Pinned   bool      `json:"pinned"`
	// Local: part of an image of the cluster-local namespace.
	Local bool `json:"local,omitempty"`
}

// CacheList is `shoal cache ls`.
type CacheList struct {
	Entries   []CacheEntry `json:"entries"`
	BytesUsed int64        `json:"bytes_used"`
	MaxSize   int64        `json:"max_size"`
	// Total is how many entries the store holds (Entries may be fewer: limit, pinned).
	Total int `json:"total"`
}

// RemoveResult is `shoal cache rm`.
type RemoveResult struct {
	Target  string       `json:"target"`
	Removed []CacheEntry `json:"removed"`
	Bytes   int64        `json:"bytes"`
	// Shared lists content of the image that stays because other cached images use it.
	Shared []string `json:"shared,omitempty"`
}

// GCResult is `shoal cache gc`.
type GCResult struct {
	Evicted     int            `json:"evicted"`
	Bytes       int64          `json:"bytes"`
	ByReason    map[string]int `json:"by_reason"`
	TagsDropped int            `json:"tags_dropped"`
}

// VerifyResult is `shoal cache verify`. Corrupt and missing content has been removed.
type VerifyResult struct {
	Checked int      `json:"checked"`
	Bytes   int64    `json:"bytes"`
	Corrupt []string `json:"corrupt"`
	Missing []string `json:"missing"`
}

// PinResult is `shoal cache pin|unpin`.
type PinResult struct {
	Image  string `json:"image"`
	Digest string `json:"digest"`
	Pinned bool   `json:"pinned"`
}

// PullRequest asks the daemon to warm its cache with images, pulled through its own mirror
// API. Platform ("os/arch[/variant]") limits an index to one platform; "" pulls all.
//
// With Cluster set, every node of the swarm warms the images (the asked node included), or
// Nodes of them, or about Fraction of them: the ask travels over the P2P network (see
// docs/preheat.md) and the stream carries "cluster" events with the nodes' summed progress.
type PullRequest struct {
	Images   []string `json:"images"`
	Platform string   `json:"platform,omitempty"`
	// Include limits a Hugging Face snapshot (hf://ORG/NAME[@REV]) to files whose path or base
	// name matches one of these patterns (path.Match).
	Include  []string `json:"include,omitempty"`
	Cluster  bool     `json:"cluster,omitempty"`
	Nodes    int      `json:"nodes,omitempty"`
	Fraction float64  `json:"fraction,omitempty"`
}

// Pull event types, in the order they come for one image.
const (
	EventImage    = "image"    // an image reference was resolved
	EventManifest = "manifest" // a platform manifest was fetched
	EventBlob     = "blob"     // a config or layer: State says how far
	EventDone     = "done"     // the last event of a pull: totals
	EventCluster  = "cluster"  // a cluster pull's progress over the nodes (Cluster is set)
)

// Blob states.
const (
	StateStart    = "start"
	StateProgress = "progress"
	StateDone     = "done"
	StateError    = "error"
)

// PullEvent is one line of a pull's progress stream.
type PullEvent struct {
	Type      string `json:"type"`
	Image     string `json:"image,omitempty"`
	Digest    string `json:"digest,omitempty"`
	MediaType string `json:"media_type,omitempty"`
	Platform  string `json:"platform,omitempty"`
	Kind      string `json:"kind,omitempty"` // config or layer
	State     string `json:"state,omitempty"`
	Size      int64  `json:"size,omitempty"`
	Done      int64  `json:"done,omitempty"`
	Source    string `json:"source,omitempty"` // store, inflight, peer, designated, upstream, passthrough
	Error     string `json:"error,omitempty"`
	// Totals, on the done event.
	Images int   `json:"images,omitempty"`
	Blobs  int   `json:"blobs,omitempty"`
	Bytes  int64 `json:"bytes,omitempty"`
	Errors int   `json:"errors,omitempty"`
	// Cluster is a cluster pull's progress, on cluster events and its done event.
	Cluster *ClusterProgress `json:"cluster,omitempty"`
}

// ClusterProgress sums a cluster pull over the nodes reached so far.
type ClusterProgress struct {
	// Reached: nodes that took the ask; Selected: those of them that warm (all, unless
	// nodes or fraction was asked); Done and Failed: selected nodes that finished.
	Reached  int `json:"reached"`
	Selected int `json:"selected"`
	Done     int `json:"done"`
	Failed   int `json:"failed"`
	// Unreached counts parts of the swarm (subtrees, not nodes) that no peer took the ask for.
	Unreached int `json:"unreached"`
	// Total is the number of nodes a census counted (with nodes only).
	Total int `json:"total,omitempty"`
	// Bytes is what the nodes fetched into their stores.
	Bytes  int64    `json:"bytes"`
	Errors []string `json:"errors,omitempty"`
}

// Explain is `shoal explain`: where each piece of an image is, where the next pull of it
// would come from, and what recent pulls did.
type Explain struct {
	Target     string         `json:"target"`
	Digest     string         `json:"digest"`
	MediaType  string         `json:"media_type,omitempty"`
	Resolution string         `json:"resolution"` // how the target became a digest
	P2P        bool           `json:"p2p"`
	Blobs      []ExplainEntry `json:"blobs"`
	History    []Decision     `json:"history"`
}

// ExplainEntry is one manifest, config or layer of an explained image.
type ExplainEntry struct {
	Digest    string   `json:"digest"`
	Kind      string   `json:"kind"` // index, manifest, config, layer
	Platform  string   `json:"platform,omitempty"`
	Size      int64    `json:"size"`
	InStore   bool     `json:"in_store"`
	Pinned    bool     `json:"pinned,omitempty"`
	Providers []string `json:"providers,omitempty"` // peers that advertise it
	// Next is where the next request for it would be answered from: store, inflight, peer,
	// designated or upstream (internal/fetch asks its resolution order to predict).
	Next   string `json:"next"`
	Reason string `json:"reason"`
	// Last is the newest recorded decision for it, if any.
	Last *Decision `json:"last,omitempty"`
	// Labels are a stored config's labels (the image author's text: display it as text).
	Labels map[string]string `json:"labels,omitempty"`
}

// Decision is one recorded answer: where content came from and why.
type Decision struct {
	Time     time.Time `json:"time"`
	Registry string    `json:"registry"`
	Repo     string    `json:"repo"`
	Digest   string    `json:"digest"`
	Kind     string    `json:"kind"`
	Source   string    `json:"source"`
	Reason   string    `json:"reason,omitempty"`
	Bytes    int64     `json:"bytes,omitempty"`
}
