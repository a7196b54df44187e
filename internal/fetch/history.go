package fetch

import (
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/adminapi"
)

// decision records where one request for content was answered from and why; `shoal explain`
// reads the recent ones.
type decision struct {
	Time     time.Time     `json:"time"`
	Registry string        `json:"registry"`
	Repo     string        `json:"repo"`
	Digest   digest.Digest `json:"digest"`
	Kind     string        `json:"kind"`   // manifest | blob
	Source   Kind          `json:"source"` // store | inflight | peer | designated | upstream
	Reason   string        `json:"reason"` // e.g. "no peer provides it", "peer 12D3… sent wrong bytes"
	Bytes    int64         `json:"bytes"`
}

// history is a bounded ring of recent decisions.
type history struct {
	mu   sync.Mutex
	ring []decision
	next int
	full bool
}

func newHistory(n int) *history { return &history{ring: make([]decision, n)} }

func (h *history) add(d decision) {
	if d.Time.IsZero() {
		d.Time = time.Now()
	}
	h.mu.Lock()
	h.ring[h.next] = d
	h.next = (h.next + 1) % len(h.ring)
	if h.next == 0 {
		h.full = true
	}
	h.mu.Unlock()
}

// recent returns the decisions for a digest (or all, for ""), newest first.
func (h *history) recent(d digest.Digest) []decision {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.next
	if h.full {
		n = len(h.ring)
	}
	var out []decision
	for i := 1; i <= n; i++ {
		e := h.ring[(h.next-i+len(h.ring))%len(h.ring)]
		if d == "" || e.Digest == d {
			out = append(out, e)
		}
	}
	return out
}

// size is how many decisions the ring holds now.
func (h *history) size() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.full {
		return len(h.ring)
	}
	return h.next
}

// recentN is recent limited to n decisions (n <= 0: all).
func (h *history) recentN(d digest.Digest, n int) []decision {
	out := h.recent(d)
	if n > 0 && len(out) > n {
		out = out[:n]
	}
	return out
}

// toDecisions gives decisions as the admin API shows them.
func toDecisions(ds []decision) []adminapi.Decision {
	out := make([]adminapi.Decision, 0, len(ds))
	for _, d := range ds {
		out = append(out, toDecision(d))
	}
	return out
}

func toDecision(d decision) adminapi.Decision {
	return adminapi.Decision{Time: d.Time.UTC(), Registry: d.Registry, Repo: d.Repo, Digest: d.Digest.String(), Kind: d.Kind,
		Source: d.Source.String(), Reason: d.Reason, Bytes: d.Bytes}
}
