// Package p2p lets shoal nodes find and serve each other's content: a libp2p host (TCP,
// TLS 1.3 or Noise, yamux) with a Kademlia DHT that holds provider records, and a small stream protocol
// (/shoal/blob/1.1.0, and 1.0.0 for older nodes) that transfers content by digest with Range
// semantics, on libp2p streams or on direct TLS connections between nodes.
//
// What it does:
//   - A stable identity: the Ed25519 host key lives at <data dir>/p2p/identity.key (0600), so
//     the peer ID survives restarts.
//   - Provider records: kad-dht in server mode under the protocol prefix /shoal, values
//     disabled. The key of a digest is a CIDv1 (raw codec) whose multihash is the digest's own
//     bytes (sha2-256 or sha2-512). Records and their addresses live RecordTTL. Provide
//     announces a digest at once with its own DHT walk; kad-dht's SweepingProvider
//     re-announces everything in Content.ShareList (handed to it at start-up, whenever the
//     routing table goes from empty to non-empty, and every RecordTTL/2) every RecordTTL/2,
//     one walk per key-space region rather than per digest.
//   - Budgets: every lookup is bounded by LookupTimeout, every provide by ProvideTimeout,
//     every transfer by StallTimeout without progress. A frozen peer costs at most those.
//   - Joining: static Bootstrap multiaddrs, BootstrapDNS (a headless Service: A/AAAA answers
//     are dialled on the p2p port and their peer IDs learnt from the security handshake, by
//     dialling a throw-away placeholder ID and reading the real one from the mismatch error),
//     and optional mDNS. A round dials a random sample of BootstrapSample sources, never all;
//     the DHT fills the routing table. An empty routing table triggers re-bootstrapping with
//     back-off; once in, a refresh every minute tops up below the sample and probes one
//     random BootstrapDNS address. Idle connections are capped (connLow/connHigh).
//     Without any bootstrap source (single-node mode) the node is silent.
//   - Membership: with SwarmKeyFile set, the node runs a libp2p private network (PSK); nodes
//     without the same key can neither connect nor fetch.
//   - Cluster preheat (/shoal/preheat/1.0.0, preheat.go): Preheat asks the whole swarm (or a
//     selection) to warm images, down a tree over the DHT key space (one ask per sibling
//     subtree, depth growing every hop, ask IDs remembered, hops bounded), reports summed back
//     up the same streams; accepted asks are rate-limited and run through the Preheater the
//     daemon sets (its own mirror, so the usual order and verification apply). It is the one
//     request a peer may make that leads this node to fetch from an upstream: an operator's
//     explicit warm-up, from a member when a swarm key is set. See docs/preheat.md.
//   - Bans: Ban disconnects a peer, refuses its connections and leaves it out of lookups and
//     fetches for BanDuration.
//
// What it must never do:
//   - Dial anything but configured addresses, addresses resolved from BootstrapDNS, mDNS
//     announcements (when enabled) and addresses learnt from its own peers. No relay, no NAT
//     port mapping, no hole punching, no AutoNAT, never the public IPFS bootstrap list.
//   - Serve by tag, or fetch from an upstream or another peer for a peer: requests between
//     peers carry the mode "local" and are answered from Content only (Content.OpenForPeer is
//     local-only by contract), so requests are never forwarded and cannot loop.
//   - Vouch for bytes. Fetch streams what a peer sends; the caller verifies the digest while
//     streaming and Bans a peer whose bytes do not match.
//   - Export libp2p types: callers see peer IDs and multiaddrs as strings.
//
// # The swarm key
//
// A swarm key is 32 random bytes in the go-libp2p/IPFS "swarm.key" format:
//
//	/key/swarm/psk/1.0.0/
//	/base16/
//	<64 hex digits>
//
// Make one with GenerateSwarmKey, or with a shell:
//
//	umask 077
//	printf '/key/swarm/psk/1.0.0/\n/base16/\n%s\n' "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" > swarm.key
//
// and give every node the same file (in Kubernetes a Secret mounted read-only, mode 0400,
// path in swarm_key_file). Rotating the key means restarting every node with the new file;
// nodes on different keys do not see each other. The key only keeps outsiders out of the
// swarm; peers inside it are trusted to serve content, never to vouch for it.
//
// # Wire protocol /shoal/blob/1.0.0
//
// One request per stream, a single text line of at most 1024 bytes:
//
//	<digest> <offset> local\n
//	<digest> <offset> fetch <registry> <repository>\n   (to the digest's designated fetcher)
//
// with a canonical lower-case sha256 or sha512 digest and a decimal offset without sign or
// leading zeros. The answer is "OK <size>\n" followed by the bytes from offset to size-1
// (size is the full content size), or one of "NOTFOUND\n", "RANGE <size>\n",
// "BADREQUEST\n", "BUSY\n", "ERROR\n", or "REDIRECT <peer ID>...\n" from a node already
// streaming the digest to Config.MaxUploadsPerBlob peers (it names them; they follow its
// download). In fetch mode "ACCEPTED\n" comes first. A body that ends before size-offset bytes
// is an error for the fetcher, which can resume elsewhere from the offset it reached.
//
// /shoal/blob/1.1.0 is the same protocol plus one answer in fetch mode, "GRANTED\n" (instead
// of all else): the designated node has no copy, no download and no earlier grant of the
// digest, so the asker fetches it from the upstream itself (ErrGranted) and the designated node
// sends later askers to that download. A node serves both versions and asks in fetch mode with
// 1.1.0 first (libp2p picks it from what identify learnt, without a round trip): an old node
// (1.0.0 only) is never granted and never grants.
//
// # Direct connections (direct.go)
//
// The same requests and answers also run on a direct TCP connection secured by libp2p's TLS 1.3
// handshake (ALPN "shoal-blob/1"; each side verifies the other's peer ID), which is how blob
// bytes travel between nodes that both have one: no yamux copies, and with a swarm key no
// second cipher. A node answers its port on /shoal/direct/1.0.0 ("<port>\n"); the asker dials
// only the IP of its libp2p connection to that peer, and the server serves only a peer connected
// to it over libp2p from the same IP and not banned. Differences from a stream: the connection
// carries one request after another; the body comes in frames (a 4-byte big-endian length and
// that many bytes; 0xFFFFFFFE ends a body cut short, 0xFFFFFFFF retracts it); after a whole body
// the asker sends "DONE\n". The version spoken is that of the node's streams.
package p2p
