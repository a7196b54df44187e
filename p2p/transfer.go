package p2p

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/opencontainers/go-digest"
)

// The blob protocol: one request and one response per stream, over an authenticated (and,
// with a swarm key, private) libp2p connection.
//
//	request:  "<digest> <offset> local\n"                      at most maxRequestLine bytes
//	          "<digest> <offset> fetch <registry> <repo>\n"     (ask a designated fetcher)
//	response: "OK <size>\n" then size-offset bytes  (size is the full content size)
//	          "NOTFOUND\n" | "RANGE <size>\n" | "BADREQUEST\n" | "BUSY\n" | "ERROR\n"
//	          "REDIRECT <peer ID> [<peer ID>...]\n"   (in either mode, instead of all else)
//	          in fetch mode, "ACCEPTED\n" comes first, at once, then one of the above
//	          "GRANTED\n"   (fetch mode, protocol 1.1 only, instead of all else)
//
// "local" marks the request as coming from a peer: it is answered from the node's own
// content only and never forwarded to an upstream or another peer (no loops). "fetch" asks the
// peer that the swarm designated for the digest to download it from the named upstream
// repository (once, for everyone) and stream it as it arrives; it too is never forwarded to
// another peer. Only Content that implements SwarmFetcher answers it.
// REDIRECT says the node already streams this digest to Config.MaxUploadsPerBlob peers, or
// streams and sent it whole (within givenFor) to that many together, and names them: they
// follow the download and serve what they have so far, or hold it, so the asker fetches from
// one of them (in local mode) instead. Counting whole copies sent keeps a node's copies of a
// blob at about the limit however fast each copy goes (on direct connections a 4 MiB copy
// takes milliseconds, and the slots turned over 2-3 times while a 60-node herd arrived).
// That is how a cluster pulling the same image at once forms a tree instead of a star around
// the designated node. An asker follows
// at most maxRedirectHops redirects and dials only peer IDs whose addresses it already knows.
// GRANTED (protocol /shoal/blob/1.1.0, which a node offers first and answers alongside 1.0.0)
// tells an asker that the designated node has no copy of the digest, no download of it and
// granted nobody else its fetch: the asker downloads it from the upstream itself, at direct
// speed, and the designated node sends the next askers to that download (it follows it). An
// old node speaks 1.0.0 only, so it is never granted and never grants.
// The response carries the full size, so a body cut short (the server's content failed, or
// the connection dropped) is always seen as an error, never mistaken for a complete one.
const (
	blobProtocol = "/shoal/blob/1.0.0"
	// blobProtocolGrant is blobProtocol plus the GRANTED answer in fetch mode.
	blobProtocolGrant = "/shoal/blob/1.1.0"
	maxRequestLine    = 1024
	maxResponseLine   = 1024
	// maxRedirectPeers bounds the peer IDs in a REDIRECT line.
	maxRedirectPeers = 8
	// maxRedirectHops bounds how many redirects one fetch follows.
	maxRedirectHops = 3
	// givenFor is how long a peer that received a blob whole counts as holding it, for
	// REDIRECT: long enough for a herd to arrive, short enough that a copy since deleted by
	// its holder's GC is seldom named.
	givenFor       = 30 * time.Second
	modeLocal      = "local"
	modeFetch      = "fetch"
	maxRegistryLen = 255
	maxRepoLen     = 255
	// retractCode resets a stream whose bytes the sender takes back (ErrRetracted).
	retractCode network.StreamErrorCode = 0x5e01
	// maxOffset keeps offsets far from int64 overflow in size arithmetic.
	maxOffset = 1 << 62
)

// request is a parsed blob request.
type request struct {
	Digest   digest.Digest
	Offset   int64
	Mode     string
	Registry string // fetch mode
	Repo     string // fetch mode
}

// errBadRequest classifies every parse failure.
var errBadRequest = errors.New("bad request")

// parseRequest strictly parses one request line, including its terminating "\n".
func parseRequest(line []byte) (request, error) {
	if len(line) > maxRequestLine {
		return request{}, fmt.Errorf("%w: line longer than %d bytes", errBadRequest, maxRequestLine)
	}
	body, ok := bytes.CutSuffix(line, []byte("\n"))
	if !ok {
		return request{}, fmt.Errorf("%w: missing newline", errBadRequest)
	}
	fields := bytes.Split(body, []byte(" "))
	if len(fields) != 3 && len(fields) != 5 {
		return request{}, fmt.Errorf("%w: want 3 or 5 space-separated fields, got %d", errBadRequest, len(fields))
	}
	d, err := parseDigestStrict(fields[0])
	if err != nil {
		return request{}, err
	}
	off, err := parseUint(fields[1], maxOffset)
	if err != nil {
		return request{}, fmt.Errorf("%w: offset: %v", errBadRequest, err)
	}
	switch {
	case len(fields) == 3 && string(fields[2]) == modeLocal:
		return request{Digest: d, Offset: off, Mode: modeLocal}, nil
	case len(fields) == 5 && string(fields[2]) == modeFetch:
		reg, repo := fields[3], fields[4]
		if !token(reg, maxRegistryLen) || !token(repo, maxRepoLen) {
			return request{}, fmt.Errorf("%w: registry or repository", errBadRequest)
		}
		return request{Digest: d, Offset: off, Mode: modeFetch, Registry: string(reg), Repo: string(repo)}, nil
	}
	return request{}, fmt.Errorf("%w: unknown mode", errBadRequest)
}

// token accepts 1..max printable ASCII bytes without spaces; the Content checks the grammar.
func token(b []byte, max int) bool {
	if len(b) == 0 || len(b) > max {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// parseDigestStrict accepts only canonical sha256/sha512 digests: lower-case hex of the
// exact length, nothing else.
func parseDigestStrict(b []byte) (digest.Digest, error) {
	alg, hexPart, ok := bytes.Cut(b, []byte(":"))
	if !ok {
		return "", fmt.Errorf("%w: digest has no algorithm", errBadRequest)
	}
	var want int
	switch string(alg) {
	case "sha256":
		want = 64
	case "sha512":
		want = 128
	default:
		return "", fmt.Errorf("%w: unsupported digest algorithm", errBadRequest)
	}
	if len(hexPart) != want {
		return "", fmt.Errorf("%w: digest length", errBadRequest)
	}
	for _, c := range hexPart {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", fmt.Errorf("%w: digest is not lower-case hex", errBadRequest)
		}
	}
	return digest.Digest(b), nil
}

// parseUint parses a canonical decimal (no sign, no leading zeros) not above max.
func parseUint(b []byte, max int64) (int64, error) {
	if len(b) == 0 || len(b) > 19 {
		return 0, errors.New("want 1..19 digits")
	}
	if len(b) > 1 && b[0] == '0' {
		return 0, errors.New("leading zero")
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, errors.New("not a decimal number")
		}
		d := int64(c - '0')
		if v > (max-d)/10 { // checked before v*10+d, which could overflow
			return 0, fmt.Errorf("above %d", max)
		}
		v = v*10 + d
	}
	return v, nil
}

func (r request) marshal() []byte {
	if r.Mode == modeFetch {
		return fmt.Appendf(nil, "%s %d %s %s %s\n", r.Digest, r.Offset, r.Mode, r.Registry, r.Repo)
	}
	return fmt.Appendf(nil, "%s %d %s\n", r.Digest, r.Offset, r.Mode)
}

// response statuses
const (
	statusOK         = "OK"
	statusNotFound   = "NOTFOUND"
	statusRange      = "RANGE"
	statusBadRequest = "BADREQUEST"
	statusBusy       = "BUSY"
	statusError      = "ERROR"
	// statusAccepted precedes the status line in fetch mode.
	statusAccepted = "ACCEPTED"
	statusRedirect = "REDIRECT"
	// statusGranted answers a fetch-mode request on blobProtocolGrant (ErrGranted).
	statusGranted = "GRANTED"
)

// parseRedirect parses a REDIRECT line (with its "\n"); ok is false for any other status.
func parseRedirect(line []byte) (peers []peer.ID, ok bool, err error) {
	body, found := bytes.CutPrefix(line, []byte(statusRedirect+" "))
	if !found {
		return nil, false, nil
	}
	body, found = bytes.CutSuffix(body, []byte("\n"))
	if !found {
		return nil, true, errors.New("response line without newline")
	}
	fields := bytes.Split(body, []byte(" "))
	if len(fields) > maxRedirectPeers {
		return nil, true, fmt.Errorf("redirect to %d peers, at most %d", len(fields), maxRedirectPeers)
	}
	for _, f := range fields {
		id, err := peer.Decode(string(f))
		if err != nil {
			return nil, true, fmt.Errorf("redirect: peer ID %q: %w", f, err)
		}
		if id.String() != string(f) { // a CID or other spelling: only the canonical one
			return nil, true, fmt.Errorf("redirect: peer ID %q is not in canonical form", f)
		}
		peers = append(peers, id)
	}
	return peers, true, nil
}

// parseResponse parses a response line (with its "\n"); size is set for OK and RANGE.
func parseResponse(line []byte) (status string, size int64, err error) {
	body, ok := bytes.CutSuffix(line, []byte("\n"))
	if !ok {
		return "", 0, errors.New("response line without newline")
	}
	st, arg, hasArg := bytes.Cut(body, []byte(" "))
	switch s := string(st); s {
	case statusOK, statusRange:
		if !hasArg {
			return "", 0, fmt.Errorf("response %s without size", s)
		}
		size, err := parseUint(arg, maxOffset)
		if err != nil {
			return "", 0, fmt.Errorf("response size: %w", err)
		}
		return s, size, nil
	case statusNotFound, statusBadRequest, statusBusy, statusError:
		if hasArg {
			return "", 0, fmt.Errorf("unexpected argument after %s", s)
		}
		return s, 0, nil
	default:
		return "", 0, errors.New("unknown response status")
	}
}

// copyChunk is how much serveBlob reads from Content and writes to the stream at a time. The
// muxer's frames are sized to carry exactly one chunk (muxer): a frame of 256 KiB minus the
// 12-byte yamux header, as before, left 12 bytes of every chunk for a frame (and a TLS record)
// of their own, 4096 of them per GiB.
const copyChunk = 256 << 10

// copyBufPool holds transfer buffers; large ones keep encryption and framing overhead low.
var copyBufPool = sync.Pool{New: func() any { b := make([]byte, frameHeader+copyChunk); return &b }}

// serveBlob answers one peer request from Content, on a libp2p stream or a direct connection.
func (n *Node) serveBlob(ctx context.Context, s blobConn) {
	p := s.remotePeer()
	if n.peers.isBanned(p) {
		s.reset()
		return
	}
	stall := n.cfg.StallTimeout
	_ = s.SetReadDeadline(time.Now().Add(stall))
	br := bufio.NewReaderSize(s, maxRequestLine)
	line, err := br.ReadSlice('\n')
	if err != nil {
		n.badRequests.Add(1) // too long, cut off, or too slow (slowloris)
		if errors.Is(err, bufio.ErrBufferFull) {
			n.reply(s, statusBadRequest)
			s.end(false)
			return
		}
		s.reset()
		return
	}
	if br.Buffered() > 0 { // a request is one line, and the asker waits for the answer
		n.badRequests.Add(1)
		n.reply(s, statusBadRequest)
		s.end(false)
		return
	}
	req, err := parseRequest(line)
	if err != nil {
		n.badRequests.Add(1)
		n.log.Debug("bad blob request", "peer", p.String(), "err", err)
		n.reply(s, statusBadRequest)
		s.end(false)
		return
	}
	select {
	case n.serveSlots <- struct{}{}:
		defer func() { <-n.serveSlots }()
	default:
		n.reply(s, statusBusy)
		s.end(true)
		return
	}
	if n.isWithdrawn(req.Digest) {
		n.reply(s, statusNotFound)
		s.end(true)
		return
	}
	others, ok := n.uploads.begin(req.Digest, p, n.cfg.MaxUploadsPerBlob)
	if !ok {
		n.redirects.Add(1)
		line := statusRedirect
		for _, o := range others {
			line += " " + o.String()
		}
		n.reply(s, line)
		s.end(true)
		return
	}
	defer n.uploads.end(req.Digest, p)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var rc io.ReadCloser
	var size int64
	if req.Mode == modeFetch {
		sf, ok := n.content.(SwarmFetcher)
		if !ok {
			n.reply(s, statusNotFound)
			s.end(true)
			return
		}
		if g, ok := n.content.(Granter); ok && s.protocol() == blobProtocolGrant &&
			g.Grant(ctx, p.String(), req.Digest, req.Registry, req.Repo) {
			n.reply(s, statusGranted)
			s.end(true)
			return
		}
		// Say at once that we are on it: the asker gives up quickly on a peer that does not
		// answer, but waits (within the stall timeout) for an upstream that is slow to start.
		if !n.reply(s, statusAccepted) {
			s.reset()
			return
		}
		rc, size, err = sf.FetchForSwarm(ctx, p.String(), req.Digest, req.Offset, req.Registry, req.Repo)
	} else {
		rc, size, err = n.content.OpenForPeer(ctx, req.Digest, req.Offset)
	}
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			n.reply(s, statusNotFound)
		} else {
			// During an upstream outage every peer's swarm fetch fails the same way: one line
			// a minute says so, with how many were not logged.
			if skipped, ok := n.openFailLog.allow(time.Now()); ok {
				n.log.Warn("serving peer failed to open content", "peer", p.String(), "digest", req.Digest, "err", err, "similar_not_logged", skipped)
			}
			n.reply(s, statusError)
		}
		s.end(true)
		return
	}
	defer rc.Close()
	if req.Offset > size {
		n.reply(s, fmt.Sprintf("%s %d", statusRange, size))
		s.end(true)
		return
	}
	if !n.reply(s, fmt.Sprintf("%s %d", statusOK, size)) {
		s.reset()
		return
	}
	stats := n.peers.get(p)
	want := size - req.Offset
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	// Bytes are read after frameHeader bytes of room, where a direct connection writes its
	// frame header: header and chunk leave in one write, without a copy.
	buf := (*bufp)[frameHeader:]
	var sent int64
	for sent < want {
		chunk := buf
		if rest := want - sent; rest < int64(len(chunk)) {
			chunk = chunk[:rest]
		}
		nr, rerr := rc.Read(chunk)
		if nr > 0 {
			_ = s.SetWriteDeadline(time.Now().Add(stall))
			nw, werr := s.writeBody((*bufp)[:frameHeader+nr])
			sent += int64(nw)
			stats.bytesOut.Add(int64(nw))
			if werr != nil {
				n.log.Debug("peer stopped reading", "peer", p.String(), "digest", req.Digest, "sent", sent, "err", werr)
				s.reset()
				return
			}
		}
		if rerr != nil {
			if rerr == io.EOF && sent == want {
				break
			}
			if errors.Is(rerr, ErrRetracted) {
				// The bytes sent so far came from a source that lied to this node: tell the
				// peer to discard them (it verifies what it gets anyway).
				n.log.Info("retracting the bytes sent to a peer: this node's own download did not verify", "peer", p.String(), "digest", req.Digest, "sent", sent)
				s.retract()
				return
			}
			// Content ended early or failed (an in-progress download that was aborted, say).
			// End cleanly rather than reset: the peer knows the size, so it sees the short
			// body as io.ErrUnexpectedEOF, and it keeps the bytes it got to resume elsewhere
			// with a Range request (a reset would make yamux drop what is still buffered).
			n.log.Warn("content ended before its size while serving a peer", "peer", p.String(),
				"digest", req.Digest, "sent", sent, "want", want, "err", rerr)
			s.cutShort()
			return
		}
	}
	if s.complete() {
		n.uploads.gave(req.Digest, p, n.cfg.MaxUploadsPerBlob)
	}
}

// reply writes one response line within StallTimeout.
func (n *Node) reply(s blobConn, line string) bool {
	_ = s.SetWriteDeadline(time.Now().Add(n.cfg.StallTimeout))
	_, err := io.WriteString(s, line+"\n")
	return err == nil
}

// Fetch opens d from peer p starting at offset (Range semantics): the reader yields bytes
// offset..size-1, where size (returned) is the full content size. The caller verifies the
// digest while streaming. Opening is bounded by StallTimeout, and the reader fails with an
// error wrapping ErrStalled when no byte arrives for StallTimeout, with io.ErrUnexpectedEOF
// when the stream ends early, and with ctx's error once ctx ends. Close before the end
// aborts the transfer. A peer without the content answers an error wrapping ErrNotFound.
// A peer at its upload limit redirects to peers that follow it, and Fetch follows: the
// reader's Peer method names the peer that actually sends the bytes.
func (n *Node) Fetch(ctx context.Context, p Peer, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	tries := maxRedirectPeers
	return n.fetch(ctx, p, request{Digest: d, Offset: offset, Mode: modeLocal}, n.cfg.StallTimeout, 0, &tries)
}

// FetchVia asks p, the peer designated for d (see Designated), to download d from the
// upstream repository registry/repo for the swarm and stream it from offset as it arrives.
// The peer must answer within DesignatedTimeout, or the caller should go to the upstream
// itself. Like Fetch, the caller verifies the digest. A peer that speaks /shoal/blob/1.1.0 and
// has no copy, no download and no earlier grant of d answers with an error wrapping ErrGranted:
// the caller fetches d from the upstream itself.
func (n *Node) FetchVia(ctx context.Context, p Peer, d digest.Digest, offset int64, registry, repo string) (io.ReadCloser, int64, error) {
	req := request{Digest: d, Offset: offset, Mode: modeFetch, Registry: registry, Repo: repo}
	if !token([]byte(registry), maxRegistryLen) || !token([]byte(repo), maxRepoLen) {
		return nil, 0, fmt.Errorf("p2p: fetch %s via %s: invalid registry or repository", d, p.ID)
	}
	tries := maxRedirectPeers
	return n.fetch(ctx, p, req, min(n.cfg.DesignatedTimeout, n.cfg.StallTimeout), 0, &tries)
}

// SpeaksGrant reports whether peer id may answer FetchVia with ErrGranted (it speaks
// /shoal/blob/1.1.0, as identify told this node).
func (n *Node) SpeaksGrant(id string) bool {
	pid, err := peer.Decode(id)
	if err != nil {
		return false
	}
	ps, _ := n.host.Peerstore().SupportsProtocols(pid, blobProtocolGrant)
	return len(ps) > 0
}

// FetchViaWithin is FetchVia with its own bound on the wait for the peer's first answer: for
// a peer known to be busy (it let a walk's request time out) but likely the one the rest of
// the swarm asks.
func (n *Node) FetchViaWithin(ctx context.Context, answer time.Duration, p Peer, d digest.Digest, offset int64, registry, repo string) (io.ReadCloser, int64, error) {
	req := request{Digest: d, Offset: offset, Mode: modeFetch, Registry: registry, Repo: repo}
	if !token([]byte(registry), maxRegistryLen) || !token([]byte(repo), maxRepoLen) {
		return nil, 0, fmt.Errorf("p2p: fetch %s via %s: invalid registry or repository", d, p.ID)
	}
	tries := maxRedirectPeers
	return n.fetch(ctx, p, req, min(answer, n.cfg.StallTimeout), 0, &tries)
}

// fetch sends req to p; answer bounds the wait for the response line. hops counts the
// redirects followed so far, and tries bounds the peers asked after a redirect, in all.
func (n *Node) fetch(ctx context.Context, p Peer, req request, answer time.Duration, hops int, tries *int) (io.ReadCloser, int64, error) {
	d, offset := req.Digest, req.Offset
	if _, err := parseDigestStrict([]byte(d)); err != nil {
		return nil, 0, fmt.Errorf("p2p: fetch %q: invalid digest", d)
	}
	if offset < 0 || offset > maxOffset {
		return nil, 0, fmt.Errorf("p2p: fetch %s: invalid offset %d", d, offset)
	}
	pid, err := peer.Decode(p.ID)
	if err != nil {
		return nil, 0, fmt.Errorf("p2p: fetch %s: invalid peer ID %q: %w", d, p.ID, err)
	}
	if pid == n.host.ID() {
		return nil, 0, fmt.Errorf("p2p: fetch %s: peer is this node", d)
	}
	if n.peers.isBanned(pid) {
		return nil, 0, fmt.Errorf("%w: %s", ErrBanned, pid)
	}
	var addrs []ma.Multiaddr
	for _, s := range p.Addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		if _, last := ma.SplitLast(a); last != nil && last.Protocol().Code == ma.P_P2P {
			a, _ = ma.SplitLast(a)
		}
		addrs = append(addrs, a)
	}
	if len(addrs) > 0 {
		n.host.Peerstore().AddAddrs(pid, addrs, peerstore.TempAddrTTL)
	}
	// A pooled direct connection the peer closed while idle fails before its first answer:
	// the request is then sent once more, on a fresh connection or stream.
	rc, size, err, again := n.fetchOnce(ctx, pid, req, answer, hops, tries, true)
	if again {
		rc, size, err, _ = n.fetchOnce(ctx, pid, req, answer, hops, tries, false)
	}
	return rc, size, err
}

// openBlobConn opens the connection for one request to pid: a direct connection when the
// peer has one (reused from the pool if pooled), else a libp2p stream.
// The direct attempt has its own short bound (dialDirect); the stream then gets the whole stall
// timeout.
func (n *Node) openBlobConn(ctx context.Context, pid peer.ID, req request, pooled bool) (c blobClient, reused bool, err error) {
	if n.direct.id != nil && n.host.Network().Connectedness(pid) != network.Connected {
		// The direct connection goes to the IP of the libp2p one: connect first (a stream
		// would), within the stall timeout; a peer that cannot be reached fails here.
		cctx, cancel := context.WithTimeout(ctx, n.cfg.StallTimeout)
		err := n.host.Connect(cctx, peer.AddrInfo{ID: pid})
		cancel()
		if err != nil {
			return nil, false, err
		}
	}
	if dc, reused := n.directFor(ctx, pid, pooled); dc != nil {
		return dc, reused, nil
	}
	if n.direct.id != nil {
		n.direct.streamed.Add(1)
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.StallTimeout)
	defer cancel()
	protos := []protocol.ID{blobProtocol}
	if req.Mode == modeFetch {
		protos = []protocol.ID{blobProtocolGrant, blobProtocol} // libp2p picks the first the peer speaks
	}
	s, err := n.host.NewStream(ctx, pid, protos...)
	if err != nil {
		return nil, false, err
	}
	return &streamConn{Stream: s}, false, nil
}

// fetchOnce is one attempt of fetch. again reports that it failed on a reused direct
// connection before any answer (the peer had closed it): the caller may retry once.
func (n *Node) fetchOnce(ctx context.Context, pid peer.ID, req request, answer time.Duration, hops int, tries *int, pooled bool) (_ io.ReadCloser, _ int64, _ error, again bool) {
	d, offset := req.Digest, req.Offset
	stats := n.peers.get(pid)
	fail := func(err error) (io.ReadCloser, int64, error, bool) {
		stats.failures.Add(1)
		return nil, 0, err, false
	}
	stall := n.cfg.StallTimeout
	s, reused, err := n.openBlobConn(ctx, pid, req, pooled)
	if err != nil {
		if ctx.Err() != nil {
			return nil, 0, fmt.Errorf("p2p: fetch %s from %s: %w", d, pid, ctx.Err()), false
		}
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			err = fmt.Errorf("%w: could not open a stream within %v", ErrStalled, stall)
		}
		return fail(fmt.Errorf("p2p: fetch %s from %s: open stream: %w", d, pid, err))
	}
	reset := context.AfterFunc(ctx, func() { s.reset() })
	release := n.holdConn(pid) // no connection-manager trim mid-transfer; every exit calls stop
	stop := func() bool { release(); return reset() }
	waited := stall // the deadline of the read or write under way, for the error message
	answered := false
	abort := func(err error) (io.ReadCloser, int64, error, bool) {
		stop()
		s.reset()
		if ctx.Err() != nil {
			return nil, 0, fmt.Errorf("p2p: fetch %s from %s: %w", d, pid, ctx.Err()), false
		}
		if reused && !answered && !isTimeout(err) {
			return nil, 0, err, true
		}
		if isTimeout(err) {
			err = fmt.Errorf("%w: no answer for %v", ErrStalled, waited)
		}
		return fail(fmt.Errorf("p2p: fetch %s from %s: %w", d, pid, err))
	}
	// done ends an exchange whose answer was complete without a body.
	done := func() {
		stop()
		s.release(true)
	}
	_ = s.SetWriteDeadline(time.Now().Add(stall))
	if _, err := s.Write(req.marshal()); err != nil {
		return abort(err)
	}
	s.requestSent()
	_ = s.SetReadDeadline(time.Now().Add(answer))
	waited = answer
	br := s.lineReader()
	line, err := readLine(br, maxResponseLine)
	waited = stall
	if err != nil {
		return abort(err)
	}
	answered = true
	if ids, ok, rerr := parseRedirect(line); ok {
		if rerr != nil {
			return abort(rerr)
		}
		done()
		rc, size, err := n.followRedirect(ctx, pid, ids, req, hops, tries)
		return rc, size, err, false
	}
	if req.Mode == modeFetch {
		// The designated peer accepted within answer; its upstream may take up to the stall
		// timeout to start.
		if string(line) == statusGranted+"\n" && s.protocol() == blobProtocolGrant {
			done()
			return nil, 0, fmt.Errorf("p2p: fetch %s via %s: %w", d, pid, ErrGranted), false
		}
		if string(line) != statusAccepted+"\n" {
			if st, _, perr := parseResponse(line); perr == nil && st == statusNotFound {
				done()
				return nil, 0, fmt.Errorf("p2p: fetch %s via %s: %w", d, pid, ErrNotFound), false
			}
			return abort(fmt.Errorf("designated peer answered %q", line))
		}
		_ = s.SetReadDeadline(time.Now().Add(stall))
		if line, err = readLine(br, maxResponseLine); err != nil {
			return abort(err)
		}
	}
	status, size, err := parseResponse(line)
	if err != nil {
		return abort(err)
	}
	switch status {
	case statusOK:
	case statusNotFound:
		done()
		return nil, 0, fmt.Errorf("p2p: fetch %s from %s: %w", d, pid, ErrNotFound), false
	case statusRange:
		done()
		return nil, 0, fmt.Errorf("p2p: fetch %s from %s: offset %d beyond size %d", d, pid, offset, size), false
	case statusBusy:
		done()
		return nil, 0, fmt.Errorf("p2p: fetch %s from %s: peer busy", d, pid), false
	default:
		return abort(fmt.Errorf("peer answered %s", status))
	}
	if offset > size {
		return abort(fmt.Errorf("peer answered size %d below offset %d", size, offset))
	}
	if size == offset {
		s.received() // an empty body: all of it is here
	}
	return &blobReader{s: s, body: s.bodyReader(), remaining: size - offset, stall: stall, ctx: ctx, stop: stop,
		stats: stats, from: pid, what: fmt.Sprintf("%s from %s", d, pid)}, size, nil, false
}

// followRedirect fetches req's digest, in local mode, from one of the peers that from named:
// they stream it from from, so they have (or are getting) it. Only peers whose addresses this
// node already knows are dialled: a redirect never makes shoal dial an address it did not
// learn from its own swarm.
func (n *Node) followRedirect(ctx context.Context, from peer.ID, ids []peer.ID, req request, hops int, tries *int) (io.ReadCloser, int64, error) {
	if hops >= maxRedirectHops {
		return nil, 0, fmt.Errorf("p2p: fetch %s: still redirected after %d hops (by %s)", req.Digest, hops, from)
	}
	rand.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	var errs []error
	for _, id := range ids {
		if id == n.host.ID() || id == from || n.peers.isBanned(id) || len(n.host.Peerstore().Addrs(id)) == 0 {
			continue
		}
		if *tries <= 0 {
			break
		}
		*tries--
		r := request{Digest: req.Digest, Offset: req.Offset, Mode: modeLocal}
		rc, size, err := n.fetch(ctx, Peer{ID: id.String()}, r, n.cfg.StallTimeout, hops+1, tries)
		if err == nil {
			return rc, size, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, 0, fmt.Errorf("p2p: fetch %s: %s redirected to no peer this node can reach", req.Digest, from)
	}
	return nil, 0, fmt.Errorf("p2p: fetch %s: redirected by %s: %w", req.Digest, from, errors.Join(errs...))
}

// readLine reads up to and including "\n", refusing lines longer than max.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for len(line) <= max {
		b, err := br.ReadByte()
		if err != nil {
			if err == io.EOF {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		line = append(line, b)
		if b == '\n' {
			return line, nil
		}
	}
	return nil, errors.New("response line too long")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// blobReader streams a response body, enforcing the stall timeout on every read.
type blobReader struct {
	s         blobClient
	body      io.Reader
	remaining int64
	stall     time.Duration
	armed     time.Time // when the read deadline was last set
	ctx       context.Context
	stop      func() bool
	stats     *peerStats
	from      peer.ID
	what      string
	err       error
	closed    bool
}

func (r *blobReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	// The deadline moves on at most every stall/8: a direct connection's reads return one TLS
	// record (16 KiB) each, and re-arming the poller's timer for each cost measurable CPU. A
	// stall is still seen after 7/8 to 8/8 of the stall timeout without a byte.
	if now := time.Now(); now.Sub(r.armed) > r.stall/8 {
		_ = r.s.SetReadDeadline(now.Add(r.stall))
		r.armed = now
	}
	n, err := r.body.Read(p)
	r.remaining -= int64(n)
	r.stats.bytesIn.Add(int64(n))
	if r.remaining == 0 && n > 0 {
		r.s.received()
	}
	if err == nil || r.remaining == 0 {
		return n, nil
	}
	switch {
	case r.ctx.Err() != nil:
		r.err = fmt.Errorf("p2p: fetch %s: %w", r.what, r.ctx.Err())
	case isRetract(err):
		r.err = fmt.Errorf("p2p: fetch %s: %w", r.what, ErrRetracted)
	case isTimeout(err):
		r.err = fmt.Errorf("p2p: fetch %s: %w: no data for %v", r.what, ErrStalled, r.stall)
		r.stats.failures.Add(1)
	case err == io.EOF:
		r.err = fmt.Errorf("p2p: fetch %s: %w (%d bytes missing)", r.what, io.ErrUnexpectedEOF, r.remaining)
		r.stats.failures.Add(1)
	default:
		r.err = fmt.Errorf("p2p: fetch %s: %w", r.what, err)
		r.stats.failures.Add(1)
	}
	r.s.reset()
	return n, r.err
}

// Peer is the ID of the peer sending the bytes (after any redirect).
func (r *blobReader) Peer() string { return r.from.String() }

// Abort breaks the transfer from another goroutine than the reader's: a Read blocked on it
// returns an error (Close is for the reader's own goroutine).
func (r *blobReader) Abort() { r.s.reset() }

// Close ends the transfer; before the last byte it aborts the stream.
func (r *blobReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.stop()
	if r.remaining > 0 || r.err != nil {
		r.s.reset()
		return nil
	}
	return r.s.release(true)
}

// uploadTable tracks which peers are streaming which digest from this node, so that a
// node at its limit can send newcomers to the peers it already serves.
type uploadTable struct {
	mu    sync.Mutex
	m     map[digest.Digest]map[peer.ID]int // streams per digest per peer
	given map[digest.Digest]*givenSet       // peers sent a digest whole, recently
}

// givenSet is the peers that received a digest whole from this node, the newest last.
type givenSet struct {
	peers []peer.ID
	at    time.Time // of the newest
}

// begin registers a stream of d to p, unless max other peers already stream d or did
// receive it whole within givenFor (max > 0): it then returns up to maxRedirectPeers of
// them, chosen at random, and ok=false. A peer that already streams d (a resume) is always
// let in.
func (t *uploadTable) begin(d digest.Digest, p peer.ID, max int) (others []peer.ID, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[digest.Digest]map[peer.ID]int{}
	}
	cur := t.m[d]
	var given []peer.ID
	if g := t.given[d]; g != nil {
		if time.Since(g.at) > givenFor {
			delete(t.given, d)
		} else {
			given = g.peers
		}
	}
	if max > 0 && cur[p] == 0 && len(cur)+len(given) >= max && !slices.Contains(given, p) {
		for o := range cur { // map order is random enough to spread the newcomers
			others = append(others, o)
		}
		for _, o := range given {
			if cur[o] == 0 {
				others = append(others, o)
			}
		}
		rand.Shuffle(len(others), func(i, j int) { others[i], others[j] = others[j], others[i] })
		if len(others) > maxRedirectPeers {
			others = others[:maxRedirectPeers]
		}
		return others, false
	}
	if cur == nil {
		cur = map[peer.ID]int{}
		t.m[d] = cur
	}
	cur[p]++
	return nil, true
}

// gave records that p received d whole (max > 0): it is named in REDIRECTs for givenFor.
// The set keeps the newest maxRedirectPeers; an old digest's set is dropped by the next
// begin of it, or here when the table holds many.
func (t *uploadTable) gave(d digest.Digest, p peer.ID, max int) {
	if max <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if t.given == nil {
		t.given = map[digest.Digest]*givenSet{}
	}
	if len(t.given) >= 1024 {
		for k, g := range t.given {
			if now.Sub(g.at) > givenFor {
				delete(t.given, k)
			}
		}
	}
	g := t.given[d]
	if g == nil || now.Sub(g.at) > givenFor {
		g = &givenSet{}
		t.given[d] = g
	}
	if !slices.Contains(g.peers, p) {
		g.peers = append(g.peers, p)
		if len(g.peers) > maxRedirectPeers {
			g.peers = g.peers[1:]
		}
	}
	g.at = now
}

// end unregisters one stream of d to p.
func (t *uploadTable) end(d digest.Digest, p peer.ID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cur := t.m[d]
	if cur[p]--; cur[p] <= 0 {
		delete(cur, p)
	}
	if len(cur) == 0 {
		delete(t.m, d)
	}
}

// rateLog lets a repeated warning through once a minute and counts the ones it held back.
type rateLog struct {
	mu      sync.Mutex
	last    time.Time
	skipped int
}

// allow reports whether to log now, and how many were held back since the last one.
func (l *rateLog) allow(now time.Time) (skipped int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < time.Minute {
		l.skipped++
		return 0, false
	}
	skipped, l.skipped, l.last = l.skipped, 0, now
	return skipped, true
}
