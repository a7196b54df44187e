package adminapi

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// CanaryHit is one request for `shoal doctor`'s canary image that reached the mirror API.
type CanaryHit struct {
	Time      time.Time `json:"time"`
	Method    string    `json:"method"`
	Path      string    `json:"path"`
	Registry  string    `json:"registry"` // as the request named it (?ns=, a host path element, or the default)
	NS        string    `json:"ns,omitempty"`
	UserAgent string    `json:"user_agent,omitempty"`
	Remote    string    `json:"remote,omitempty"`
}

// Canary says whether the mirror was asked for the canary tag nonce.
type Canary struct {
	Nonce string      `json:"nonce"`
	Seen  bool        `json:"seen"`
	Hits  []CanaryHit `json:"hits,omitempty"`
	// Blobs counts the canary's blobs the mirror served since it started (any nonce).
	Blobs int64 `json:"blobs_served"`
}

// Canary asks the daemon whether a runtime asked the mirror for the canary tag nonce.
func (c *Client) Canary(ctx context.Context, nonce string) (Canary, error) {
	var v Canary
	return v, c.getJSON(ctx, http.MethodGet, "/v1/doctor/canary", url.Values{"nonce": {nonce}}, nil, &v)
}
