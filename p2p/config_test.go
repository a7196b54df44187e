package p2p

import (
	"strings"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	"gopkg.in/yaml.v3"
)

func TestConfigValidate(t *testing.T) {
	const peerID = "12D3KooWJbeZdcQBCKkCsZMrH856W55xW6k65DHbyZDkQTbMgwEw"
	for _, tc := range []struct {
		name    string
		mod     func(*Config)
		wantErr string // substring naming the key; "" = valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"ipv6 listen", func(c *Config) { c.Listen = []string{"/ip6/::/tcp/5001"} }, ""},
		{"no listen (a lone node)", func(c *Config) { c.Listen = nil }, ""},
		{"no listen, dns without port", func(c *Config) { c.Listen = nil; c.BootstrapDNS = "shoal" }, ""},
		{"quic listen", func(c *Config) { c.Listen = []string{"/ip4/0.0.0.0/udp/5001/quic-v1"} }, "p2p.listen"},
		{"garbage listen", func(c *Config) { c.Listen = []string{"0.0.0.0:5001"} }, "p2p.listen"},
		{"bootstrap with ID", func(c *Config) { c.Bootstrap = []string{"/ip4/10.0.0.1/tcp/5001/p2p/" + peerID} }, ""},
		{"bootstrap dns4 with ID", func(c *Config) { c.Bootstrap = []string{"/dns4/shoal-0.shoal/tcp/5001/p2p/" + peerID} }, ""},
		{"bootstrap without ID", func(c *Config) { c.Bootstrap = []string{"/ip4/10.0.0.1/tcp/5001"} }, "p2p.bootstrap"},
		{"bootstrap only ID", func(c *Config) { c.Bootstrap = []string{"/p2p/" + peerID} }, "p2p.bootstrap"},
		{"dns name", func(c *Config) { c.BootstrapDNS = "shoal.kube-system.svc.cluster.local" }, ""},
		{"dns name and port", func(c *Config) { c.BootstrapDNS = "shoal-headless:7001" }, ""},
		{"dns bad port", func(c *Config) { c.BootstrapDNS = "shoal:99999" }, "p2p.bootstrap_dns"},
		{"dns bad name", func(c *Config) { c.BootstrapDNS = "shoal/peers" }, "p2p.bootstrap_dns"},
		{"dns port 0 listen", func(c *Config) {
			c.Listen = []string{"/ip4/0.0.0.0/tcp/0"}
			c.BootstrapDNS = "shoal"
		}, "use NAME:PORT"},
		{"zero bootstrap sample", func(c *Config) { c.BootstrapSample = 0 }, "p2p.bootstrap_sample"},
		{"bootstrap sample 1", func(c *Config) { c.BootstrapSample = 1 }, ""},
		{"zero lookup timeout", func(c *Config) { c.LookupTimeout = 0 }, "p2p.lookup_timeout"},
		{"negative provide timeout", func(c *Config) { c.ProvideTimeout = -time.Second }, "p2p.provide_timeout"},
		{"zero stall timeout", func(c *Config) { c.StallTimeout = 0 }, "p2p.stall_timeout"},
		{"tiny record ttl", func(c *Config) { c.RecordTTL = time.Millisecond }, "p2p.record_ttl"},
		{"zero ban", func(c *Config) { c.BanDuration = 0 }, "p2p.ban_duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("valid config rejected: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("invalid config accepted, want an error naming %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("error %q does not name %q", err, tc.wantErr)
			}
		})
	}
}

// A node listens where Listen says; without it, on DefaultListen only when it has a way to
// find peers, and nowhere when it has none.
func TestListenAddrs(t *testing.T) {
	const peer = "/ip4/127.0.0.2/tcp/5001/p2p/12D3KooWJbeZdcQBCKkCsZMrH856W55xW6k65DHbyZDkQTbMgwEw"
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want []string
	}{
		{"defaults: lone", func(*Config) {}, nil},
		{"swarm key alone is no way to find peers", func(c *Config) { c.SwarmKeyFile = "/etc/shoal/swarm.key" }, nil},
		{"bootstrap", func(c *Config) { c.Bootstrap = []string{peer} }, []string{DefaultListen}},
		{"bootstrap dns", func(c *Config) { c.BootstrapDNS = "shoal-peers" }, []string{DefaultListen}},
		{"mdns", func(c *Config) { c.MDNS = true }, []string{DefaultListen}},
		{"explicit, lone", func(c *Config) { c.Listen = []string{"/ip4/127.0.0.1/tcp/6001"} }, []string{"/ip4/127.0.0.1/tcp/6001"}},
		{"explicit, bootstrap", func(c *Config) {
			c.Listen = []string{"/ip4/127.0.0.1/tcp/6001"}
			c.Bootstrap = []string{peer}
		}, []string{"/ip4/127.0.0.1/tcp/6001"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			got := c.ListenAddrs()
			if strings.Join(got, ",") != strings.Join(tc.want, ",") || c.Lone() != (len(tc.want) == 0) {
				t.Errorf("ListenAddrs = %v, Lone = %v; want %v", got, c.Lone(), tc.want)
			}
		})
	}
}

func TestDNSTargetPort(t *testing.T) {
	c := DefaultConfig()
	c.BootstrapDNS = "shoal"
	if name, port, err := c.dnsTarget(); err != nil || name != "shoal" || port != DefaultPort {
		t.Fatalf("dnsTarget = %q %d %v", name, port, err)
	}
	c.BootstrapDNS = "shoal:7001"
	if name, port, err := c.dnsTarget(); err != nil || name != "shoal" || port != 7001 {
		t.Fatalf("dnsTarget = %q %d %v", name, port, err)
	}
}

// The YAML keys are the documented ones and durations read as Go durations.
func TestConfigYAML(t *testing.T) {
	c := DefaultConfig()
	err := yaml.Unmarshal([]byte(`
listen: ["/ip4/127.0.0.1/tcp/6001"]
bootstrap_dns: shoal-headless
mdns: true
swarm_key_file: /etc/shoal/swarm.key
lookup_timeout: 150ms
provide_timeout: 3s
stall_timeout: 10s
record_ttl: 1h
ban_duration: 5m
`), &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen[0] != "/ip4/127.0.0.1/tcp/6001" || c.BootstrapDNS != "shoal-headless" || !c.MDNS ||
		c.SwarmKeyFile != "/etc/shoal/swarm.key" || c.LookupTimeout != 150*time.Millisecond ||
		c.ProvideTimeout != 3*time.Second || c.StallTimeout != 10*time.Second ||
		c.RecordTTL != time.Hour || c.BanDuration != 5*time.Minute {
		t.Fatalf("decoded %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestAdvertisable(t *testing.T) {
	parse := func(ss ...string) []ma.Multiaddr {
		var out []ma.Multiaddr
		for _, s := range ss {
			out = append(out, ma.StringCast(s))
		}
		return out
	}
	str := func(as []ma.Multiaddr) string {
		var s []string
		for _, a := range as {
			s = append(s, a.String())
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct{ in, want []ma.Multiaddr }{
		{parse("/ip4/127.0.0.1/tcp/5001", "/ip4/10.1.2.3/tcp/5001", "/ip6/::1/tcp/5001"), parse("/ip4/10.1.2.3/tcp/5001")},
		{parse("/ip4/127.77.1.1/tcp/5001"), parse("/ip4/127.77.1.1/tcp/5001")},
	} {
		if got := advertisable(tc.in); str(got) != str(tc.want) {
			t.Errorf("advertisable(%s) = %s, want %s", str(tc.in), str(got), str(tc.want))
		}
	}
}
