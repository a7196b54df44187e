package fetch

import "strings"

// Kind says what kind of place content came from (or would come from).
type Kind int

// The kinds of source, in the order the resolver tries them. Passthrough is the degraded blob
// path (the store is full: streamed from the upstream, verified, not kept); Stale is a manifest
// whose tag the upstream could not revalidate, served from the store.
const (
	Unknown Kind = iota
	Store
	InFlight
	Peer
	Designated
	Upstream
	Stale
	Passthrough
)

// kindNames are the strings the X-Shoal-Source header, the metrics' source label, the history
// and the admin API carry; they must not change.
var kindNames = [...]string{Unknown: "", Store: "store", InFlight: "inflight", Peer: "peer", Designated: "designated",
	Upstream: "upstream", Stale: "stale", Passthrough: "passthrough"}

// String is the kind's name as headers, metrics and the history carry it.
func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return ""
	}
	return kindNames[k]
}

// SourceKinds lists every source value a response, a metric label or a decision can carry.
var SourceKinds = []Kind{Store, InFlight, Peer, Designated, Upstream, Passthrough}

// Source is where bytes came from: a kind, and for Peer and Designated the peer's ID.
type Source struct {
	Kind Kind
	Peer string
}

// String gives the source as the admin API's in-flight list shows it: "upstream",
// "peer:<ID>", "designated:<ID>".
func (s Source) String() string {
	if s.Peer != "" && (s.Kind == Peer || s.Kind == Designated) {
		return s.Kind.String() + ":" + s.Peer
	}
	return s.Kind.String()
}

// FromPeer reports whether a peer sent the bytes (a provider, or the designated fetcher).
func (s Source) FromPeer() bool { return s.Kind == Peer || s.Kind == Designated }

// ParseSource reads a Source back from its String form.
func ParseSource(s string) Source {
	name, id, _ := strings.Cut(s, ":")
	for k, n := range kindNames {
		if n == name && n != "" {
			return Source{Kind: Kind(k), Peer: id}
		}
	}
	return Source{}
}

// MarshalText writes the kind's name (decisions carry it as JSON).
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }
