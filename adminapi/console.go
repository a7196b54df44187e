package adminapi

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// The admin API paths the web console (and `shoal search`) read besides the others:
//
//	GET /v1/timeline                          Timeline: answers by source, per minute, last hour
//	GET /v1/inflight                          []InFlight: downloads under way
//	GET /v1/search?q=TERM&n=N[&registry=R]    SearchResults (Docker Hub, or a registry's catalog)
//	GET /v1/tags?image=NAME                   Tags
//	GET /v1/cache?sort=S&limit=N&pinned=true  CacheList, cut to N entries, only pinned ones
//
// Search is rate-limited per client (HTTP 429, code "rate_limited") and cached.

// CodeRateLimited answers a search asked too often (HTTP 429).
const CodeRateLimited = "rate_limited"

// TimelineMinute is one minute of answers (manifests and blobs, 2xx) by source.
type TimelineMinute struct {
	Start time.Time `json:"start"`
	// Requests and Bytes by source: store, inflight, peer, designated, upstream, passthrough.
	Requests map[string]int64 `json:"requests"`
	Bytes    map[string]int64 `json:"bytes"`
}

// Timeline is the last hour, oldest minute first; minutes with no answer are present, empty.
type Timeline struct {
	Minutes []TimelineMinute `json:"minutes"`
}

// InFlight is one blob download under way.
type InFlight struct {
	Digest   string   `json:"digest"`
	Registry string   `json:"registry"`
	Repo     string   `json:"repo"`
	Size     int64    `json:"size"` // -1 until known
	Done     int64    `json:"done"`
	Sources  []string `json:"sources"` // where its bytes came from, in order
}

// SearchResult is one repository found; the fields are Docker Hub's (GET /v1/search).
type SearchResult struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	StarCount   int    `json:"star_count"`
	IsOfficial  bool   `json:"is_official"`
	IsAutomated bool   `json:"is_automated"`
}

// SearchResults is a search's answer, shaped like Docker Hub's so that tools reading that
// read this. Registry says which registry answered; Cached whether the daemon had it already.
type SearchResults struct {
	Query      string         `json:"query"`
	NumResults int            `json:"num_results"`
	Results    []SearchResult `json:"results"`
	Registry   string         `json:"registry"`
	Cached     bool           `json:"cached"`
}

// Tags is an image's tags as its registry lists them.
type Tags struct {
	Image    string   `json:"image"` // registry/repo
	Registry string   `json:"registry"`
	Repo     string   `json:"repo"`
	Tags     []string `json:"tags"`
}

// NewClientFor returns a client whose requests go to rt, an http.RoundTripper that answers
// them in process (the web console inside the daemon uses it).
func NewClientFor(rt http.RoundTripper) *Client {
	return &Client{addr: Addr{Network: "inprocess", Address: "admin"}, hc: &http.Client{Transport: rt}}
}

// Timeline returns the answers by source over the last hour, per minute.
func (c *Client) Timeline(ctx context.Context) (Timeline, error) {
	var t Timeline
	return t, c.getJSON(ctx, http.MethodGet, "/v1/timeline", nil, nil, &t)
}

// InFlight lists the downloads under way.
func (c *Client) InFlight(ctx context.Context) ([]InFlight, error) {
	var l []InFlight
	return l, c.getJSON(ctx, http.MethodGet, "/v1/inflight", nil, nil, &l)
}

// Search looks for repositories: on Docker Hub for registry "" or "docker.io", else in the
// registry's catalog (filtered by the term). n bounds the results (0: the default, 25).
func (c *Client) Search(ctx context.Context, term, registry string, n int) (SearchResults, error) {
	var s SearchResults
	q := url.Values{"q": {term}}
	if registry != "" {
		q.Set("registry", registry)
	}
	if n > 0 {
		q.Set("n", strconv.Itoa(n))
	}
	return s, c.getJSON(ctx, http.MethodGet, "/v1/search", q, nil, &s)
}

// Tags lists an image's tags.
func (c *Client) Tags(ctx context.Context, image string) (Tags, error) {
	var t Tags
	return t, c.getJSON(ctx, http.MethodGet, "/v1/tags", url.Values{"image": {image}}, nil, &t)
}

// CacheListPart lists at most limit entries of the store in the order of sort ("size" or
// "atime"); pinned true keeps only pinned content. CacheList.Total counts them all.
func (c *Client) CacheListPart(ctx context.Context, sort string, limit int, pinned bool) (CacheList, error) {
	var l CacheList
	q := url.Values{"sort": {sort}, "limit": {strconv.Itoa(limit)}}
	if pinned {
		q.Set("pinned", "true")
	}
	return l, c.getJSON(ctx, http.MethodGet, "/v1/cache", q, nil, &l)
}
