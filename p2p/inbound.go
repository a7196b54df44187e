package p2p

import (
	"sync"
	"time"
)

// inboundWatch counts inbound connections that closed before their secure handshake
// completed. It is how the node being dialled learns of a node with another swarm key (or
// none): libp2p has no hook for an inbound handshake that fails, so the listener notes every
// accepted connection and the connection gater strikes it off once it is secured (even if it
// then refuses a banned peer). Port scans and plain TCP health checks on the P2P port count
// too.
type inboundWatch struct {
	mu      sync.Mutex
	pending map[string]struct{} // remote multiaddrs of accepted connections not yet secured
	fails   int64
	last    string // remote address of the latest
	lastAt  time.Time
}

func newInboundWatch() *inboundWatch {
	return &inboundWatch{pending: map[string]struct{}{}}
}

func (w *inboundWatch) accepted(remote string) {
	w.mu.Lock()
	w.pending[remote] = struct{}{}
	w.mu.Unlock()
}

func (w *inboundWatch) secured(remote string) {
	w.mu.Lock()
	delete(w.pending, remote)
	w.mu.Unlock()
}

func (w *inboundWatch) closed(remote string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.pending[remote]; !ok {
		return
	}
	delete(w.pending, remote)
	w.fails++
	w.last, w.lastAt = remote, time.Now()
}

func (w *inboundWatch) snapshot() (fails int64, last string, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fails, w.last, w.lastAt
}
