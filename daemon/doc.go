// Package daemon is the one place that wires shoal together: it builds the store, the upstream
// client (and, later, the P2P node) from one Config, owns the HTTP surfaces (the mirror API,
// health) and decides where content comes from, in order: the store, a download already in
// flight, the upstream.
//
// It must never serve a byte that has not been verified against its digest: blob streams hold
// back their final byte until the digest has been checked, so a client never receives a
// complete-looking body with wrong content.
package daemon
