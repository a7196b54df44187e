package p2p

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/opencontainers/go-digest"
)

// replicateProtocol asks a peer to hold a pushed image: one request line "TAG-NAME DIGEST\n",
// one answer line "ok\n" once the peer holds it (verified, stored), or "err MESSAGE\n".
const replicateProtocol = protocol.ID(dhtPrefix + "/replicate/1.0.0")

// replicateTimeout bounds one replication (the asked peer fetches every blob of the image).
const replicateTimeout = 5 * time.Minute

// ReplicateFunc makes this node hold the image root that from asks it to keep. name is the tag
// whose swarm record must name root: a peer cannot make others store what no tag names.
type ReplicateFunc func(ctx context.Context, from Peer, name string, root digest.Digest) error

// HandleReplicate serves replication requests with fn.
func (n *Node) HandleReplicate(fn ReplicateFunc) {
	n.host.SetStreamHandler(replicateProtocol, func(s network.Stream) {
		defer s.Close()
		_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReaderSize(s, 1024).ReadString('\n')
		if err != nil || len(line) > 1024 {
			s.Reset()
			return
		}
		name, ds, ok := strings.Cut(strings.TrimSpace(line), " ")
		root, derr := digest.Parse(ds)
		if !ok || derr != nil || name == "" {
			fmt.Fprintf(s, "err malformed request\n")
			return
		}
		from := s.Conn().RemotePeer()
		p := Peer{ID: from.String()}
		for _, a := range n.host.Peerstore().Addrs(from) {
			p.Addrs = append(p.Addrs, a.String())
		}
		ctx, cancel := context.WithTimeout(context.Background(), replicateTimeout)
		defer cancel()
		_ = s.SetDeadline(time.Now().Add(replicateTimeout))
		if err := fn(ctx, p, name, root); err != nil {
			fmt.Fprintf(s, "err %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			return
		}
		fmt.Fprintf(s, "ok\n")
	})
}

// Replicate asks p to hold the image root (tagged name) and waits until it does.
func (n *Node) Replicate(ctx context.Context, p Peer, name string, root digest.Digest) error {
	id, err := peer.Decode(p.ID)
	if err != nil {
		return err
	}
	s, err := n.host.NewStream(ctx, id, replicateProtocol)
	if err != nil {
		return fmt.Errorf("p2p: replicate %s to %s: %w", root, p.ID, err)
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(s, "%s %s\n", name, root); err != nil {
		s.Reset()
		return err
	}
	line, err := bufio.NewReaderSize(s, 1024).ReadString('\n')
	if err != nil {
		return fmt.Errorf("p2p: replicate %s to %s: %w", root, p.ID, err)
	}
	if strings.TrimSpace(line) != "ok" {
		return errors.New("p2p: replicate to " + p.ID + ": " + strings.TrimSpace(strings.TrimPrefix(line, "err")))
	}
	return nil
}

// ConnectedPeers lists the peers this node has a connection to (alive, as far as it knows).
func (n *Node) ConnectedPeers() []Peer {
	var out []Peer
	for _, id := range n.host.Network().Peers() {
		if n.host.Network().Connectedness(id) != network.Connected {
			continue
		}
		p := Peer{ID: id.String()}
		for _, c := range n.host.Network().ConnsToPeer(id) {
			p.Addrs = append(p.Addrs, c.RemoteMultiaddr().String())
		}
		out = append(out, p)
	}
	return out
}
