package upstream

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RateLimit is the last rate-limit state an upstream reported (Docker Hub's
// ratelimit-limit / ratelimit-remaining headers, "100;w=21600").
type RateLimit struct {
	Limit, Remaining int           // -1 when that header was missing or unreadable
	Window           time.Duration // 0 when not given
	Seen             time.Time     // when the headers were received
}

// RateLimit returns the last rate-limit headers seen from host, if any were.
func (c *Client) RateLimit(host string) (RateLimit, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rl, ok := c.rateLimits[canonicalHost(host)]
	return rl, ok
}

func (c *Client) noteRateLimit(host string, h http.Header) {
	rl, ok := parseRateLimit(h.Get("Ratelimit-Limit"), h.Get("Ratelimit-Remaining"))
	if !ok {
		return
	}
	rl.Seen = c.now()
	c.mu.Lock()
	c.rateLimits[host] = rl
	c.mu.Unlock()
}

// parseRateLimit reads the two headers leniently: the first integer of each is the value,
// a "w=SECONDS" parameter in either is the window. Anything else is ignored. ok is false
// when neither header yields a number.
func parseRateLimit(limit, remaining string) (rl RateLimit, ok bool) {
	l, lw := parseRateLimitValue(limit)
	r, rw := parseRateLimitValue(remaining)
	if l < 0 && r < 0 {
		return RateLimit{}, false
	}
	w := lw
	if w == 0 {
		w = rw
	}
	return RateLimit{Limit: l, Remaining: r, Window: w}, true
}

// parseRateLimitValue parses "100;w=21600", "100", " 100 ; w = 21600 ", "100, 100;w=21600"
// (several policies: the first counts). It returns -1 when no number leads the value.
func parseRateLimitValue(v string) (n int, window time.Duration) {
	first, _, _ := strings.Cut(v, ",")
	parts := strings.Split(first, ";")
	n = -1
	if x, err := strconv.Atoi(strings.TrimSpace(parts[0])); err == nil && x >= 0 {
		n = x
	}
	for _, p := range parts[1:] {
		k, val, found := strings.Cut(p, "=")
		if !found || !strings.EqualFold(strings.TrimSpace(k), "w") {
			continue
		}
		s, err := strconv.ParseInt(strings.Trim(strings.TrimSpace(val), `"`), 10, 64)
		if err == nil && s > 0 && s <= 366*24*3600 {
			window = time.Duration(s) * time.Second
		}
	}
	return n, window
}
