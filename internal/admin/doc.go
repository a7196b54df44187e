// Package admin is shoal's operator surface: the admin API (adminapi's /v1 paths, on a unix
// socket or loopback TCP), `shoal pull` (also a cluster preheat), `shoal export`, `shoal
// explain`, cache commands, search and tags, the Prometheus metrics with /healthz and
// /readyz, and the web console's listener (package console serves its pages).
//
// It sees the rest of the daemon through narrow doors, all handed to New in Options: the
// mirror as an http.Handler (operator pulls, exports and explains go through it in process,
// exactly as a client's pull would), the fetch side through Downloads, the P2P node through
// Node, and the store and upstream client for cache commands and status. The daemon imports
// this package, never the reverse.
//
// It must never:
//   - listen on a TCP address off loopback for the admin API (it has no authentication; a
//     unix socket's file mode is its access control), nor serve the console off loopback
//     without logins;
//   - serve or store content that did not pass the mirror's verification: every byte comes
//     through the mirror, and what an operator command writes out (an export) is hashed
//     again against its digest, cutting the connection rather than finishing a short or
//     wrong tarball;
//   - touch a download's state itself (it asks Downloads);
//   - trust labels, annotations or descriptions from images or registries as markup or
//     commands: they are shown as data, never interpreted;
//   - ask an upstream on behalf of cache commands (rm, pin, ls answer from the store alone).
package admin
