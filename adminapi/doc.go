// Package adminapi is the contract between `shoal daemon` and the operator commands: the JSON
// types of the admin API (versioned paths under /v1), the addresses it listens on (a unix
// socket by default, or TCP), and a small client.
//
// The daemon serves the API; the CLI only talks to it through Client. Both sides import this
// package, never each other.
//
// Paths (all JSON unless said otherwise; errors are {"error": "...", "code": "..."} with a
// 4xx/5xx status):
//
//	GET  /v1/status                      Status
//	GET  /v1/peers                       Peers
//	POST /v1/peers/ping?peer=ID          Ping
//	GET  /v1/cache?sort=size|atime       CacheList
//	POST /v1/cache/rm?target=DIGEST|IMAGE RemoveResult
//	POST /v1/cache/gc                    GCResult
//	POST /v1/cache/verify                VerifyResult
//	POST /v1/cache/pin?image=IMAGE       PinResult (also /v1/cache/unpin)
//	POST /v1/pull                        PullRequest in, PullEvent JSON lines out (streamed);
//	                                     with cluster: every node of the swarm (docs/preheat.md)
//	GET  /v1/explain?target=IMAGE|DIGEST Explain
//	GET  /v1/history?digest=D&limit=N    []Decision
//	GET  /v1/export?image=I&image=J&platform=P&all_platforms=true   a tar (streamed)
//	GET  /_shoal/export?images=I,J       the same tar
//
// Over TCP, requests other than GET and HEAD carry the header X-Shoal-Admin: 1 and the Host is
// the loopback address or localhost; requests a web page made (a foreign Origin or
// Sec-Fetch-Site) are refused with code "forbidden". The unix socket needs neither.
//
// What it must never do: carry a credential. Status and errors hold only what the daemon's
// own logs may hold.
package adminapi
