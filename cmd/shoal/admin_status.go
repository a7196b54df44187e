package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/shoal-mirror/shoal/adminapi"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "the daemon at a glance: version, uptime, store usage, where answers came from, upstream health, P2P",
		Action: adminAction(func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
			s, err := cl.Status(ctx)
			if err != nil {
				return err
			}
			if jsonOut(c) {
				return printJSON(os.Stdout, s)
			}
			printStatus(os.Stdout, s)
			return nil
		}),
	}
}

func printStatus(out io.Writer, s adminapi.Status) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	ready := "ready"
	if !s.Ready {
		ready = "NOT READY"
	}
	fmt.Fprintf(w, "shoal\t%s (pid %d, up %s, %s)\n", s.Version, s.PID, humanDuration(time.Duration(s.UptimeSeconds*float64(time.Second))), ready)
	fmt.Fprintf(w, "mirror\t%s (default registry %s)\n", s.Listen, s.DefaultRegistry)
	fmt.Fprintf(w, "admin\t%s\n", s.Admin)
	metrics := s.Metrics
	if metrics == "" {
		metrics = "off"
	}
	fmt.Fprintf(w, "metrics\t%s\n", metrics)
	fmt.Fprintf(w, "data dir\t%s\n", s.DataDir)
	pct := 0.0
	if s.Store.MaxSize > 0 {
		pct = 100 * float64(s.Store.BytesUsed) / float64(s.Store.MaxSize)
	}
	line := fmt.Sprintf("%s of %s (%.1f%%), %d items", humanBytes(s.Store.BytesUsed), humanBytes(s.Store.MaxSize), pct, s.Store.Items)
	if len(s.Store.Evictions) > 0 {
		var ev []string
		for _, k := range sortedKeys(s.Store.Evictions) {
			if n := s.Store.Evictions[k]; n > 0 {
				ev = append(ev, fmt.Sprintf("%s %d", k, n))
			}
		}
		if len(ev) > 0 {
			line += ", evicted: " + strings.Join(ev, ", ")
		}
	}
	if s.Store.VerifyFailures > 0 {
		line += fmt.Sprintf(", %d verify failures", s.Store.VerifyFailures)
	}
	fmt.Fprintf(w, "store\t%s\n", line)
	if l := s.Local; l != nil {
		fmt.Fprintf(w, "local images\t%d in %s (%d tags, %s, %d pinned: never evicted)\n", l.Images, l.Namespace, l.Tags, humanBytes(l.Bytes), l.Pinned)
	}
	if len(s.Sources) == 0 {
		fmt.Fprintf(w, "answers\tnone yet\n")
	} else {
		var parts []string
		for _, sc := range s.Sources {
			parts = append(parts, fmt.Sprintf("%s %d (%s)", sc.Source, sc.Requests, humanBytes(sc.Bytes)))
		}
		fmt.Fprintf(w, "answers\thit ratio %.1f%%: %s\n", 100*s.HitRatio, strings.Join(parts, ", "))
	}
	fmt.Fprintf(w, "in flight\t%d downloads\n", s.InFlight)
	if len(s.Upstreams) == 0 {
		fmt.Fprintf(w, "upstream\tnot contacted yet\n")
	}
	for i, u := range s.Upstreams {
		label := ""
		if i == 0 {
			label = "upstream"
		}
		fmt.Fprintf(w, "%s\t%s\n", label, upstreamLine(u))
	}
	if s.P2P == nil {
		fmt.Fprintf(w, "p2p\tP2P disabled\n")
	} else {
		p := s.P2P
		hit := 0.0
		if p.Lookups > 0 {
			hit = 100 * float64(p.LookupHits) / float64(p.Lookups)
		}
		fmt.Fprintf(w, "p2p\tpeer %s: %d peers connected, %d banned, routing table %d, providing %d digests\n", p.PeerID, p.Peers, p.Banned, p.RoutingTableSize, p.Provided)
		fmt.Fprintf(w, "\tlookups %d (%.0f%% found), p50 %.1fms, p99 %.1fms, bans %d, redirected %d\n", p.Lookups, hit, p.LookupP50Ms, p.LookupP99Ms, p.Bans, p.Redirected)
		if p.NotListening != "" {
			fmt.Fprintf(w, "\tNOT LISTENING for peers: %s\n", strings.TrimPrefix(p.NotListening, "not listening for peers: "))
		} else if p.SwarmKey != "" {
			fmt.Fprintf(w, "\tswarm key %s (private network: only nodes showing the same fingerprint can join)\n", p.SwarmKey)
		} else {
			fmt.Fprintf(w, "\tno swarm key (any node that reaches the P2P port can join)\n")
		}
		if p.NotListening == "" { // a node listening for no peer has no direct port either
			fmt.Fprintf(w, "\t%s\n", directLine(p))
		}
		if p.BootstrapError != "" {
			fmt.Fprintf(w, "\tbootstrap failing: %s\n", p.BootstrapError)
		}
		if p.InboundHandshakeFailures > 0 {
			ago := ""
			if p.LastInboundFailureAt != nil {
				ago = ", " + time.Since(*p.LastInboundFailureAt).Round(time.Second).String() + " ago"
			}
			conns := "connections"
			if p.InboundHandshakeFailures == 1 {
				conns = "connection"
			}
			fmt.Fprintf(w, "\tinbound: %d %s closed before the secure handshake completed (last from %s%s): a node with another swarm key or none, or a port scan\n",
				p.InboundHandshakeFailures, conns, p.LastInboundFailure, ago)
		}
		for _, a := range p.Addrs {
			fmt.Fprintf(w, "\t%s\n", a)
		}
	}
	w.Flush()
}

// directLine is the direct connections (peers' blob bytes over TLS/TCP) in one line.
func directLine(p *adminapi.P2PStatus) string {
	d := p.Direct
	s := "direct connections off: blob bytes over libp2p streams"
	if d.Port != 0 {
		s = fmt.Sprintf("direct: port %d, %d open (%d idle); out: %d dials, %d failed, %d requests, %d over streams instead; in: %d accepted, %d refused, %d requests served",
			d.Port, d.Open, d.Idle, d.Dials, d.DialFailures, d.Fetched, d.Fallbacks, d.Accepted, d.Refused, d.Served)
	}
	if p.BadRequests > 0 {
		s += fmt.Sprintf("; %d bad peer requests", p.BadRequests)
	}
	return s
}

func upstreamLine(u adminapi.UpstreamStatus) string {
	health := "healthy"
	if !u.Healthy {
		health = "UNHEALTHY"
	}
	var total int64
	var codes []string
	for _, k := range sortedKeys(u.Responses) {
		total += u.Responses[k]
		codes = append(codes, fmt.Sprintf("%s: %d", k, u.Responses[k]))
	}
	s := fmt.Sprintf("%s  %s  %d responses", u.Registry, health, total)
	if len(codes) > 0 {
		s += " (" + strings.Join(codes, ", ") + ")"
	}
	if u.TransportErrors > 0 {
		s += fmt.Sprintf(", %d unanswered", u.TransportErrors)
	}
	if u.TokensFetched+u.TokenErrors > 0 {
		s += fmt.Sprintf(", %d tokens fetched", u.TokensFetched)
	}
	if rl := u.RateLimit; rl != nil {
		s += fmt.Sprintf(", rate limit %d/%d", rl.Remaining, rl.Limit)
		if rl.WindowSeconds > 0 {
			s += " per " + humanDuration(time.Duration(rl.WindowSeconds)*time.Second)
		}
		s += " (seen " + ago(rl.Seen) + ")"
	}
	if u.LastError != nil {
		s += fmt.Sprintf("; last error %s: %s", ago(*u.LastError), u.LastErrorText)
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func peersCommand() *cli.Command {
	return &cli.Command{
		Name:  "peers",
		Usage: "connected and banned peers: ID, address, latency, bytes in/out, failures",
		Action: adminAction(func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
			p, err := cl.Peers(ctx)
			if err != nil {
				return err
			}
			if jsonOut(c) {
				return printJSON(os.Stdout, p)
			}
			if !p.Enabled {
				fmt.Println("P2P disabled")
				return nil
			}
			fmt.Printf("this node: %s\n", p.Self)
			if len(p.Peers) == 0 {
				fmt.Println("no peers")
				return nil
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "PEER\tSTATE\tLATENCY\tIN\tOUT\tFAILURES\tADDRESS")
			for _, x := range p.Peers {
				state := "connected"
				if x.Banned {
					state = "banned"
					if x.BannedUntil != nil {
						state += " until " + x.BannedUntil.Local().Format("15:04:05")
					}
				} else if len(x.Addrs) == 0 {
					state = "known"
				}
				addr := "-"
				if len(x.Addrs) > 0 {
					addr = x.Addrs[0]
				}
				fmt.Fprintf(w, "%s\t%s\t%.1fms\t%s\t%s\t%d\t%s\n", x.ID, state, x.LatencyMs, humanBytes(x.BytesIn), humanBytes(x.BytesOut), x.Failures, addr)
			}
			return w.Flush()
		}),
		Subcommands: []*cli.Command{{
			Name:      "ping",
			Usage:     "measure the round trip to a peer",
			ArgsUsage: "PEER-ID",
			Action: adminAction(func(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
				if err := needArgs(c, 1, "PEER-ID"); err != nil {
					return err
				}
				p, err := cl.Ping(ctx, firstArg(c))
				if err != nil {
					return err
				}
				if jsonOut(c) {
					return printJSON(os.Stdout, p)
				}
				fmt.Printf("%s: %.2fms\n", p.Peer, p.RTTMs)
				return nil
			}),
		}},
	}
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print this binary's version, and the running daemon's if it answers",
		Action: func(c *cli.Context) error {
			v := struct {
				Client string `json:"client"`
				Go     string `json:"go"`
				Daemon string `json:"daemon,omitempty"`
			}{Client: version, Go: runtime.Version()}
			if cl, err := adminClient(c); err == nil {
				ctx, cancel := context.WithTimeout(c.Context, 2*time.Second)
				if s, err := cl.Status(ctx); err == nil {
					v.Daemon = s.Version
				}
				cancel()
			}
			if jsonOut(c) {
				return printJSON(os.Stdout, v)
			}
			fmt.Printf("shoal %s (%s)\n", v.Client, v.Go)
			if v.Daemon != "" {
				fmt.Printf("daemon %s\n", v.Daemon)
			}
			return nil
		},
	}
}
