package adminapi

import "testing"

func TestParseAddr(t *testing.T) {
	cases := []struct {
		in      string
		network string
		address string
		bad     bool
	}{
		{in: "unix:/var/lib/shoal/admin.sock", network: "unix", address: "/var/lib/shoal/admin.sock"},
		{in: "unix:///run/shoal.sock", network: "unix", address: "/run/shoal.sock"},
		{in: "/run/shoal.sock", network: "unix", address: "/run/shoal.sock"},
		{in: "127.0.0.1:9096", network: "tcp", address: "127.0.0.1:9096"},
		{in: "http://[::1]:9096/", network: "tcp", address: "[::1]:9096"},
		{in: "", bad: true},
		{in: "unix:", bad: true},
		{in: "localhost", bad: true},
	}
	for _, c := range cases {
		a, err := ParseAddr(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("ParseAddr(%q) = %+v, want an error", c.in, a)
			}
			continue
		}
		if err != nil || a.Network != c.network || a.Address != c.address {
			t.Errorf("ParseAddr(%q) = %+v, %v; want %s %s", c.in, a, err, c.network, c.address)
		}
	}
}
