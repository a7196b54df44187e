package p2p

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Config configures a Node. The zero value is not usable: start from DefaultConfig.
type Config struct {
	// Listen are the multiaddrs the host listens on (TCP only). Empty means DefaultListen when
	// the node has a way to find peers (Bootstrap, BootstrapDNS or MDNS), and nothing at all
	// when it has none: such a lone node gains nothing from peers, and listening would only
	// let anyone on its network fetch what it cached by digest. See ListenAddrs.
	Listen []string `yaml:"listen"`
	// Bootstrap are full multiaddrs of peers to join through, each ending in /p2p/<peer ID>.
	Bootstrap []string `yaml:"bootstrap"`
	// BootstrapDNS names a DNS name (typically a Kubernetes headless Service) whose A/AAAA
	// records are the peers' addresses. Their peer IDs are learnt from the security handshake.
	// "NAME" dials the port of the first TCP Listen address, "NAME:PORT" dials PORT.
	BootstrapDNS string `yaml:"bootstrap_dns"`
	// BootstrapSample is how many bootstrap sources (Bootstrap peers and BootstrapDNS
	// addresses, picked at random) a node connects to when it joins; the DHT's own walks fill
	// the routing table from there. Once in the swarm, the node tops up to this many when its
	// routing table or its connections fall below it. Dialling every address instead would
	// connect every node to every other one.
	BootstrapSample int `yaml:"bootstrap_sample"`
	// MDNS enables multicast DNS discovery on the local link. Off by default: it multicasts on
	// every multicast-capable interface and cannot be restricted to one.
	MDNS bool `yaml:"mdns"`
	// SwarmKeyFile is a libp2p private-network key (PSK). With it, only nodes holding the same
	// key can connect. See the package documentation for how to make one.
	SwarmKeyFile string `yaml:"swarm_key_file"`
	// LookupTimeout bounds one FindProviders call.
	LookupTimeout time.Duration `yaml:"lookup_timeout"`
	// ProvideTimeout bounds one Provide call, including waiting for a non-empty routing table.
	ProvideTimeout time.Duration `yaml:"provide_timeout"`
	// StallTimeout aborts a transfer when no byte arrived for this long.
	StallTimeout time.Duration `yaml:"stall_timeout"`
	// RecordTTL is the validity of provider records and of the addresses stored with them.
	// Records are re-provided every RecordTTL/2.
	RecordTTL time.Duration `yaml:"record_ttl"`
	// BanDuration is how long a peer stays banned after Ban.
	BanDuration time.Duration `yaml:"ban_duration"`
	// DesignatedTimeout bounds the wait for a designated fetcher's first answer (FetchVia)
	// before the caller goes to the upstream itself.
	DesignatedTimeout time.Duration `yaml:"designated_timeout"`
	// MaxUploadsPerBlob is how many peers at most stream one blob from this node at once;
	// the next ones are redirected to those peers, which follow the download and serve it
	// on. When a whole cluster pulls the same image at once, this turns "everyone from the
	// designated node" into a tree, spreading the upload over the nodes. 0 means no limit.
	MaxUploadsPerBlob int `yaml:"max_uploads_per_blob"`
	// DirectPort is the TCP port of the direct listener, opened next to each TCP listen
	// address (same IP): peers fetch blob bytes on a TLS connection of their own there (no
	// muxer, and with a swarm key one cipher instead of two; see direct.go). 0 means the
	// libp2p port + 1 (or a port the kernel picks if that one is taken; peers learn it over
	// libp2p); DirectOff turns direct connections off (blobs go over libp2p streams).
	DirectPort int `yaml:"direct_port"`
}

// DirectOff as Config.DirectPort turns direct connections off.
const DirectOff = -1

// DefaultPort is the TCP port of the default listen address.
const DefaultPort = 5001

// DefaultListen is where a node that has a way to find peers listens unless Listen says.
var DefaultListen = "/ip4/0.0.0.0/tcp/" + strconv.Itoa(DefaultPort)

// DefaultConfig returns the defaults: no listen address of its own (DefaultListen once a
// bootstrap source or mDNS is set), no bootstrap source, no mDNS, no swarm key, budgets sized
// for a LAN.
func DefaultConfig() Config {
	return Config{
		// Enough to join through a few dead or frozen addresses and to seed the DHT's
		// walks; the DHT finds the rest.
		BootstrapSample: 8,
		LookupTimeout:   300 * time.Millisecond,
		ProvideTimeout:  2 * time.Second,
		StallTimeout:    5 * time.Second,
		RecordTTL:       30 * time.Minute,
		BanDuration:     10 * time.Minute,
		// Well under a second: long enough for a registry's token round trip and first byte.
		DesignatedTimeout: 500 * time.Millisecond,
		// A tree of fan-out 4 reaches 20 nodes in two hops and 1000 in five, and keeps each
		// node's upload for a rollout to about 4 copies of the image.
		MaxUploadsPerBlob: 4,
	}
}

// ListenAddrs is what the node listens on: Listen if set, else DefaultListen if the node
// has a way to find peers, else nothing (see Lone).
func (c Config) ListenAddrs() []string {
	switch {
	case len(c.Listen) > 0:
		return c.Listen
	case c.Lone():
		return nil
	}
	return []string{DefaultListen}
}

// LoneNote says why a lone node listens for no peer and how to make it listen.
const LoneNote = "not listening for peers: no p2p.bootstrap, p2p.bootstrap_dns or p2p.mdns, so no peer can find this node, and a listener would only let anyone on its network fetch its cache by digest; set p2p.listen (--p2p-listen) to listen anyway"

// Lone reports whether the node listens for no peer: no listen address was given and it has
// no bootstrap source and no mDNS, so no peer would ever learn of it.
func (c Config) Lone() bool {
	return len(c.Listen) == 0 && len(c.Bootstrap) == 0 && c.BootstrapDNS == "" && !c.MDNS
}

// Validate checks every option and names the offending key in its error.
func (c Config) Validate() error {
	var errs []error
	for _, s := range c.Listen {
		if _, err := listenAddr(s); err != nil {
			errs = append(errs, fmt.Errorf("p2p.listen: %q: %w", s, err))
		}
	}
	for _, s := range c.Bootstrap {
		if _, err := bootstrapAddr(s); err != nil {
			errs = append(errs, fmt.Errorf("p2p.bootstrap: %q: %w", s, err))
		}
	}
	if c.BootstrapDNS != "" {
		if _, _, err := c.dnsTarget(); err != nil {
			errs = append(errs, fmt.Errorf("p2p.bootstrap_dns: %q: %w", c.BootstrapDNS, err))
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"p2p.lookup_timeout", c.LookupTimeout},
		{"p2p.provide_timeout", c.ProvideTimeout},
		{"p2p.stall_timeout", c.StallTimeout},
		{"p2p.record_ttl", c.RecordTTL},
		{"p2p.ban_duration", c.BanDuration},
		{"p2p.designated_timeout", c.DesignatedTimeout},
	} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: must be a positive duration, got %v", d.key, d.v))
		}
	}
	if c.BootstrapSample < 1 {
		errs = append(errs, fmt.Errorf("p2p.bootstrap_sample: must be 1 or more, got %d", c.BootstrapSample))
	}
	if c.MaxUploadsPerBlob < 0 {
		errs = append(errs, fmt.Errorf("p2p.max_uploads_per_blob: must be 0 (no limit) or more, got %d", c.MaxUploadsPerBlob))
	}
	if c.DirectPort < DirectOff || c.DirectPort > 65535 {
		errs = append(errs, fmt.Errorf("p2p.direct_port: must be a TCP port, 0 (the libp2p port + 1) or -1 (off), got %d", c.DirectPort))
	}
	if c.RecordTTL > 0 && c.RecordTTL < time.Second {
		errs = append(errs, fmt.Errorf("p2p.record_ttl: %v is too short (minimum 1s)", c.RecordTTL))
	}
	return errors.Join(errs...)
}

// listenAddr parses a listen multiaddr and insists on /ip4|ip6/…/tcp/PORT: shoal runs TCP
// only, because a private network (PSK) cannot protect QUIC.
func listenAddr(s string) (ma.Multiaddr, error) {
	a, err := ma.NewMultiaddr(s)
	if err != nil {
		return nil, err
	}
	if _, err := a.ValueForProtocol(ma.P_TCP); err != nil {
		return nil, errors.New("must be a TCP address such as /ip4/0.0.0.0/tcp/5001")
	}
	_, err4 := a.ValueForProtocol(ma.P_IP4)
	_, err6 := a.ValueForProtocol(ma.P_IP6)
	if err4 != nil && err6 != nil {
		return nil, errors.New("must start with /ip4 or /ip6")
	}
	return a, nil
}

// bootstrapAddr parses a bootstrap multiaddr, which must name the peer (/p2p/ID).
func bootstrapAddr(s string) (*peer.AddrInfo, error) {
	a, err := ma.NewMultiaddr(s)
	if err != nil {
		return nil, err
	}
	ai, err := peer.AddrInfoFromP2pAddr(a)
	if err != nil {
		return nil, fmt.Errorf("must be a full multiaddr ending in /p2p/<peer ID>: %w", err)
	}
	if len(ai.Addrs) == 0 {
		return nil, errors.New("has no transport address before /p2p/")
	}
	return ai, nil
}

// dnsTarget splits BootstrapDNS into name and port; without a port it takes the port of the
// first TCP listen address.
func (c Config) dnsTarget() (string, int, error) {
	name, portStr, err := net.SplitHostPort(c.BootstrapDNS)
	if err != nil {
		// No port given (or an unbracketed IPv6 literal, which is not a name anyway).
		name, portStr = c.BootstrapDNS, ""
	}
	if name == "" || len(name) > 253 {
		return "", 0, errors.New("must be a DNS name, optionally NAME:PORT")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return "", 0, fmt.Errorf("invalid character %q in name", r)
		}
	}
	if portStr != "" {
		p, err := strconv.Atoi(portStr)
		if err != nil || p < 1 || p > 65535 {
			return "", 0, fmt.Errorf("invalid port %q", portStr)
		}
		return name, p, nil
	}
	for _, s := range c.ListenAddrs() {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		if v, err := a.ValueForProtocol(ma.P_TCP); err == nil {
			p, err := strconv.Atoi(v)
			if err != nil || p < 1 || p > 65535 {
				return "", 0, fmt.Errorf("no port given and the first TCP listen address has port %q: use NAME:PORT", v)
			}
			return name, p, nil
		}
	}
	return "", 0, errors.New("no port given and no TCP listen address to take it from: use NAME:PORT")
}
