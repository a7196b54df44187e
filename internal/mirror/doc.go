// Package mirror is the mirror API: the OCI distribution API clients pull through (manifests,
// blobs with Range, tags/list and referrers passed through), the canary image of `shoal
// doctor` with its record of nonces, the Hugging Face and GitHub file endpoints over package
// files, and the push namespace's cluster side over the P2P node (pushes themselves are
// package push's). Where content comes from is internal/fetch's; the mirror turns its answers
// into HTTP: headers (X-Shoal-Source, X-Shoal-Stale), status lines, ranges, and sendfile(2)
// from the store and from downloads in flight.
//
// The daemon builds one Mirror (New, every collaborator in Options), puts the guard in front
// of it, and hands it to the admin API as a plain http.Handler. The mirror never imports the
// admin side (internal/admin) nor the daemon.
//
// It must never:
//   - answer a request the guard did not let through: it sits behind guard.Wrap on the mirror
//     listener, and only the admin API (which is the operator's already) calls it directly;
//   - send a body's last byte before its digest is verified, or send a range of a blob that
//     cannot be verified (a store too full to keep the blob refuses ranges);
//   - serve a byte that is not the digest's: a short or wrong body is a cut connection, never
//     a complete-looking answer, and nothing is written after a response's header went out
//     except its body;
//   - relay an upstream's authentication challenge (shoal holds the credentials), or the
//     upstream's redirect Location (it is followed server-side);
//   - ask an upstream for the canary or the cluster-local push namespace (answered here, or
//     by the swarm, only);
//   - hand a client a manifest its Accept header does not admit, or change a manifest's bytes.
package mirror
