// Package upstream is shoal's client for upstream container registries: it maps a registry
// host to an endpoint, authenticates server-side (Bearer tokens with a per-(realm, service,
// scope) cache, OAuth POST with GET fallback, Basic), follows redirects to CDNs without
// leaking Authorization, retries idempotent requests with back-off, and reports the
// upstream's rate-limit headers. After a 429 it backs off that registry (Retry-After, else
// exponential) and fails fast meanwhile, so callers serve from their cache. Egress may go
// through an HTTP or SOCKS5 proxy (Config.Proxy or the proxy environment variables); the
// targets a proxy is asked to reach are judged as a dial would judge them.
//
// What it must never do:
//   - relay an upstream's challenge, token or credentials to anyone, or put them in a log
//     line or an error message;
//   - dial an address the upstream steered it to (token realm, redirect) on a link-local,
//     loopback or private network unless the upstream itself lives on such a network: the
//     check runs on the URL before any dial and again on the resolved address at dial time
//     (with a proxy, before the proxy is asked to connect);
//   - cache a redirect target (CDN URLs are pre-signed and expire);
//   - hand back a manifest whose bytes do not match the digest it was asked for.
//
// It does not verify blobs: callers hash while streaming, since a blob can be far larger
// than memory. Name normalisation (Docker Hub's "library/") is the caller's job.
package upstream
