package upstream

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"sync/atomic"
	"time"
)

// RegistryStats are one upstream registry's counters and health, for metrics and the admin
// API. Nothing in them can carry a credential: errors are this package's own messages.
type RegistryStats struct {
	Registry string
	// Responses counts upstream HTTP responses by status code (a 401 challenge answered with
	// a token counts as one response, the retried request as another); TransportErrors counts
	// requests that got no response at all.
	Responses       map[int]int64
	TransportErrors int64
	// TokensFetched and TokenErrors count token requests to the registry's token server
	// (cached tokens are not fetched again).
	TokensFetched, TokenErrors int64
	// LastOK is the last 2xx/3xx response; LastError the last transport error, 429 or 5xx,
	// described by LastErrorText.
	LastOK, LastError time.Time
	LastErrorText     string
	// RateLimit is the last rate-limit state the registry reported (nil if never).
	RateLimit *RateLimit
}

type regCounters struct {
	responses                  map[int]int64
	transportErrors            int64
	tokensFetched, tokenErrors int64
	lastOK, lastError          time.Time
	lastErrorText              string
}

// Stats returns a snapshot of every registry the client has talked to, sorted by host.
func (c *Client) Stats() []RegistryStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	hosts := map[string]bool{}
	for h := range c.counters {
		hosts[h] = true
	}
	for h := range c.rateLimits {
		hosts[h] = true
	}
	out := make([]RegistryStats, 0, len(hosts))
	for h := range hosts {
		s := RegistryStats{Registry: h, Responses: map[int]int64{}}
		if rc := c.counters[h]; rc != nil {
			for k, v := range rc.responses {
				s.Responses[k] = v
			}
			s.TransportErrors, s.TokensFetched, s.TokenErrors = rc.transportErrors, rc.tokensFetched, rc.tokenErrors
			s.LastOK, s.LastError, s.LastErrorText = rc.lastOK, rc.lastError, rc.lastErrorText
		}
		if rl, ok := c.rateLimits[h]; ok {
			s.RateLimit = &rl
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Registry < out[j].Registry })
	return out
}

// countersLocked returns host's counters, creating them; c.mu must be held.
func (c *Client) countersLocked(host string) *regCounters {
	if c.counters == nil {
		c.counters = map[string]*regCounters{}
	}
	rc := c.counters[host]
	if rc == nil {
		rc = &regCounters{responses: map[int]int64{}}
		c.counters[host] = rc
	}
	return rc
}

// noteResponse counts one upstream response (err == nil) or transport failure, and tells
// the request's StatusNote, if any.
func (c *Client) noteResponse(ctx context.Context, host string, status int, err error) {
	now := c.now()
	c.mu.Lock()
	rc := c.countersLocked(host)
	switch {
	case err != nil:
		rc.transportErrors++
		if !errors.Is(err, context.Canceled) {
			rc.lastError, rc.lastErrorText = now, err.Error()
		}
	default:
		rc.responses[status]++
		if status < 400 {
			rc.lastOK = now
		} else if status == http.StatusTooManyRequests || status >= 500 {
			rc.lastError, rc.lastErrorText = now, "HTTP "+http.StatusText(status)
		}
	}
	c.mu.Unlock()
	if n, ok := ctx.Value(statusNoteKey{}).(*StatusNote); ok && err == nil {
		n.v.Store(int32(status))
	}
}

// noteToken counts one token fetch.
func (c *Client) noteToken(host string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rc := c.countersLocked(host)
	if err != nil {
		rc.tokenErrors++
		rc.lastError, rc.lastErrorText = c.now(), err.Error()
		return
	}
	rc.tokensFetched++
}

// StatusNote receives the HTTP status of the last upstream response sent on behalf of one
// request, for the daemon's access log. It is safe for concurrent use: a download shared by
// several clients may still be writing it after the client that started it has gone.
type StatusNote struct{ v atomic.Int32 }

// Status is the last upstream status seen, 0 if the upstream was not asked (or never
// answered).
func (n *StatusNote) Status() int { return int(n.v.Load()) }

type statusNoteKey struct{}

// WithStatusNote returns a context under which the client records upstream statuses in n.
func WithStatusNote(ctx context.Context, n *StatusNote) context.Context {
	return context.WithValue(ctx, statusNoteKey{}, n)
}
