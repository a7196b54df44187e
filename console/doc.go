// Package console is shoal's web console: a few server-rendered pages that show the node and
// its swarm (status, answers by source over the last hour, downloads in flight, peers, recent
// pulls, the cache, "explain" for an image) and let an operator search images, list tags,
// pull into the cache with progress, pin, unpin, remove and download an offline tarball.
//
// It talks to the daemon only through the admin API (an adminapi.Client, in process), so it
// can do nothing `shoal` on the command line cannot. Pages are html/template (contextual
// auto-escaping: names, labels, tags and search results from upstreams are shown as text);
// assets are embedded; there is no CDN and no third-party script. The JavaScript is optional
// progressive enhancement: live refresh of the page while it is visible, and the pull's
// progress stream.
//
// What it must never do: change anything on a GET; accept a POST that does not prove it comes
// from a console page (Sec-Fetch-Site: same-origin, or an Origin equal to the Host); serve a
// Host that is not loopback when it listens on loopback (DNS rebinding); serve anyone who
// did not log in when it was given users; put a credential in a page; poll the daemon when
// no one is looking (it has no goroutine of its own: every admin call answers a request).
package console
