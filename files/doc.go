// Package files serves files that are not container images through shoal's store and swarm:
// Hugging Face model and dataset files (the hub's HTTP API under /hf, so that
// HF_ENDPOINT=http://127.0.0.1:5000/hf works) and GitHub release files (the hubproxy form
// /https://github.com/OWNER/REPO/releases/download/TAG/FILE).
//
// A file whose upstream states a sha256 content digest (a Hugging Face LFS/Xet file's
// X-Linked-Etag, a GitHub release asset's API "digest") is a blob: the daemon serves it through
// its blob path (store, download in flight, peers, designated fetcher, upstream), and this
// package only supplies the upstream fetch (OpenBlob). Everything else stays on the node.
//
// It must never:
//   - serve or keep a byte that was not checked against the digest the upstream states
//     (sha256 through the daemon's spool; a small Hugging Face file's git blob sha1 here, before
//     the file is kept or served);
//   - hand content without a sha256 digest to peers, or take it from them (it is kept in this
//     package's own directory, which the P2P layer never reads);
//   - contact a host that is not in Config.Hosts, or follow a redirect to one;
//   - pass Xet negotiation through (clients always get the plain HTTP answer);
//   - forward a client's credentials upstream, or log a token.
package files
