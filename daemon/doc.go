// Package daemon wires shoal together: from one Config it builds the store, the upstream
// client, where content comes from (internal/fetch: the resolution order, the downloads in
// flight, the peers' side) and the P2P node, and it owns the HTTP surfaces (the mirror API
// behind its guard, the admin API, metrics and health), reload and shutdown.
//
// It must never serve a byte that internal/fetch did not verify against its digest, and never
// forward a request from a peer to another peer.
package daemon
