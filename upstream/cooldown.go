package upstream

import (
	"net/http"
	"sync"
	"time"

	"github.com/shoal-mirror/shoal/internal/oci"
)

// Back-off after a registry answered 429 and the client gave up retrying. Docker Hub's pull
// limit resets over hours: asking again every request would only burn what is left of it,
// so for a while every request to that registry fails at once and the caller serves what it
// has cached.
const (
	cooldownBase = 5 * time.Second // first back-off without Retry-After, doubling per streak
	cooldownMax  = 5 * time.Minute // longest back-off without Retry-After
	cooldownCap  = time.Hour       // longest back-off a Retry-After can impose
)

// cooldowns is the per-registry back-off state. The zero value is ready to use.
type cooldowns struct {
	mu sync.Mutex
	m  map[string]cooldown
}

type cooldown struct {
	until  time.Time
	streak int // 429s in a row without a success in between
}

// check returns the error a request to host gets while host is backing off, else nil.
func (cs *cooldowns) check(host string, now time.Time) *Error {
	cs.mu.Lock()
	cd, ok := cs.m[host]
	cs.mu.Unlock()
	if !ok || !now.Before(cd.until) {
		return nil
	}
	left := cd.until.Sub(now)
	return &Error{Host: host, Status: http.StatusTooManyRequests, Code: oci.CodeTooManyRequests,
		Message:    "backing off after the registry's 429; not asking it again yet",
		RetryAfter: (left + time.Second - 1).Truncate(time.Second)}
}

// tooMany starts (or lengthens) the back-off for host: the registry's Retry-After if it
// gave one, else an exponential back-off.
func (cs *cooldowns) tooMany(host string, retryAfter time.Duration, now time.Time) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.m == nil {
		cs.m = map[string]cooldown{}
	}
	cd := cs.m[host]
	cd.streak++
	wait := min(retryAfter, cooldownCap)
	if wait <= 0 {
		wait = min(cooldownBase<<min(cd.streak-1, 10), cooldownMax)
	}
	cd.until = now.Add(wait)
	cs.m[host] = cd
}

// answered ends the streak once host served a request again.
func (cs *cooldowns) answered(host string) {
	cs.mu.Lock()
	if _, ok := cs.m[host]; ok {
		delete(cs.m, host)
	}
	cs.mu.Unlock()
}

// BackingOff reports whether requests to host are being held back after a 429, and for how
// much longer.
func (c *Client) BackingOff(host string) (time.Duration, bool) {
	e := c.cooldowns.check(canonicalHost(host), c.now())
	if e == nil {
		return 0, false
	}
	return e.RetryAfter, true
}
