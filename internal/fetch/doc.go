// Package fetch decides where content comes from and runs the downloads that bring it.
//
// The resolution order is written once (resolve.go), as a list of named attempts, each
// answering with a source or the reason it was skipped:
//
//	blob:     store → inflight (a download under way) → peer (a provider) → designated (the
//	          swarm's fetcher for the digest, which downloads it once for everyone, or grants
//	          the first asker the fetch and follows its download) → upstream
//	manifest: store → peer → upstream; a tag the upstream cannot revalidate is served stale
//
// A fetch runs the attempts; `shoal explain` asks the same attempts to predict (Fetcher.Explain),
// so the two cannot drift. A download (Fill) is shared by every client and peer that wants the
// blob while it is in flight, outlives the client who started it, resumes a broken stream
// from the next source (the designated fetcher again, a provider, the upstream) and commits to
// the store only once its bytes hash to the digest. Sources are typed values (Source: a Kind and
// a peer), whose strings are the X-Shoal-Source header's, the metrics' and the history's.
//
// It must never:
//   - hand out a byte not verified against its digest as part of a complete blob: the final
//     byte of every download (and of every range) waits for the check, and bytes from a peer
//     are held back from this node's own clients until the whole blob verified (unless
//     p2p.verify_before_serving is off; then a discarded attempt cuts those readers);
//   - forward a peer's request to another peer: FetchForSwarm fetches from the upstream, or
//     (after a grant, grant.go) follows the granted peer's download in local mode, which that
//     peer answers from its own content only; OpenForPeer serves the store and downloads in
//     flight only;
//   - serve to peers content that came from a repository needing credentials, unless sharing
//     private content is configured;
//   - start a second download of a digest already in flight, or let anyone outside this
//     package touch a download's state (only its methods).
package fetch
