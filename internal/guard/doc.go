// Package guard is the mirror API's exposure and abuse controls: who may connect (address
// lists, connections per client, TLS), who may pull what (htpasswd logins, repository
// patterns), how fast (rate and concurrency per client), how long a slow or stalled client may
// hold a connection (header, write and request deadlines), the access log every mirror request
// leaves through, and the admin API's check that a request did not come from a web page
// (Admin).
//
// The daemon builds one Guard from the security.* settings (Config) and wires it around the
// mirror's handler (Wrap), listener (Listener) and server (Configure); SIGHUP swaps its policy
// (Reload) without losing per-client state.
//
// It must never:
//   - serve a client outside the address lists, or an unauthenticated client outside
//     auth_exempt_cidr when htpasswd is set (and so never let such a client push: the push
//     handler sits behind Wrap and learns the login from PushUser);
//   - trust X-Forwarded-For or any other header for the client's address: the TCP peer is
//     the client;
//   - treat a blank list entry as "no restriction" (it is a configuration error);
//   - hold a slow client's connection past its deadline: a stalled reader is cut off after
//     write_timeout, a whole request after request_timeout;
//   - let one address take every file descriptor (max_conns_per_client closes the excess
//     before a byte is read);
//   - log or quote a secret: passwords, hashes, keys, Authorization headers, query strings
//     beyond ns;
//   - let a reload half-apply: a bad file leaves the running policy as it was;
//   - answer the admin API to a foreign Host, Origin or Sec-Fetch-Site, or a state-changing
//     TCP request without adminapi.Header.
package guard
