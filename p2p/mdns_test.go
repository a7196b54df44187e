package p2p

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// mdnsNetnsEnv marks the re-executed test binary that runs inside a private network
// namespace. mDNS multicasts on every multicast-capable interface and cannot be limited, so it
// must never run in the machine's own namespace.
const mdnsNetnsEnv = "SHOAL_P2P_MDNS_NETNS"

// Two nodes with no bootstrap configuration find each other over mDNS, inside a network
// namespace that this test creates (unshare -n) and that holds only a loopback interface.
func TestMDNSInNamespace(t *testing.T) {
	if os.Getenv(mdnsNetnsEnv) == "" {
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			t.Fatalf("unshare not found (apt-get install util-linux): %v", err)
		}
		if _, err := exec.LookPath("ip"); err != nil {
			t.Fatalf("ip not found (apt-get install iproute2): %v", err)
		}
		cmd := exec.Command(unshare, "-n", "--", os.Args[0], "-test.run=^TestMDNSInNamespace$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), mdnsNetnsEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("mDNS test in a network namespace (needs root for unshare -n): %v\n%s", err, out)
		}
		t.Logf("namespace run:\n%s", lastLines(out, 8))
		return
	}

	// Inside the namespace. Refuse to go on unless the only interface is loopback.
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 1 || ifs[0].Flags&net.FlagLoopback == 0 {
		t.Fatalf("refusing to run mDNS: not in a private namespace (interfaces %v)", ifs)
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "set", "lo", "multicast", "on"},
		{"route", "add", "224.0.0.0/4", "dev", "lo"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	ips := loopbackIPs(2)
	blob := randomBlob(31, 50<<10)
	x := digest.FromBytes(blob)
	cfg := func(ip string) Config {
		c := testConfig(ip)
		c.MDNS = true
		return c
	}
	start := time.Now()
	a := startNode(t, cfg(ips[0]), newMemContent(blob))
	b := startNode(t, cfg(ips[1]), nil)
	waitRT(t, a, 1)
	waitRT(t, b, 1)
	t.Logf("mDNS discovery took %v", time.Since(start))
	if err := a.Provide(t.Context(), x); err != nil {
		t.Fatal(err)
	}
	provs, err := b.FindProviders(t.Context(), x, 3)
	if err != nil || !slices.Equal(providerIDs(provs), []string{a.ID()}) {
		t.Fatalf("find over mDNS-found peer: %v %v", provs, err)
	}
	got, _, err := fetchAll(t, b, provs[0], x, 0)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("fetch: %v", err)
	}
}

func lastLines(b []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	var keep [][]byte
	for _, l := range lines {
		if !bytes.Contains(l, []byte("level=DEBUG")) {
			keep = append(keep, l)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return bytes.Join(keep, []byte("\n"))
}
