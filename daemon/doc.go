// Package daemon is the one place that wires shoal together: it builds the store, the upstream
// client and the P2P node from one Config, owns the HTTP surfaces (the mirror API behind its
// guard, the admin API, metrics and health) and decides where content comes from, in order:
// the store, a download already in flight, peers that provide it (or the swarm's designated
// fetcher for it), the upstream.
//
// It must never serve a byte that has not been verified against its digest: blob streams hold
// back their final byte until the digest has been checked, and bytes that came from a peer are
// held back from local clients until the whole blob has been checked, so a client never
// receives a complete-looking body with wrong content, and a lying peer costs a refetch, not
// a failed pull. A request from a peer is never forwarded to another peer.
package daemon
