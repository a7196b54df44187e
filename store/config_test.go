package store

import (
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"1000", 1000, false},
		{"0", 0, false},
		{"512MiB", 512 << 20, false},
		{"50GiB", 50 << 30, false},
		{"1.5GB", 1_500_000_000, false},
		{"10 KiB", 10 << 10, false},
		{"2k", 2000, false},
		{"1TiB", 1 << 40, false},
		{"7b", 7, false},
		{"", 0, true},
		{"GiB", 0, true},
		{"-5", 0, true},
		{"5 furlongs", 0, true},
		{"1.2.3MB", 0, true},
		{"99999999PiB", 0, true},
	} {
		got, err := ParseSize(tc.in)
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, err=%v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1", "1.5GB", "50GiB", "10 KiB", "", "x", "1e9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && n < 0 {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
		_, _, _ = parseMinFree(s)
	})
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	ok := DefaultConfig()
	ok.Dir = "/x"
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults with a dir: %v", err)
	}
	if ok.TTL != 30*24*time.Hour || ok.GCInterval != time.Hour {
		t.Fatalf("defaults: %+v", ok)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		key  string
	}{
		{"no dir", func(c *Config) { c.Dir = "" }, "store.dir"},
		{"negative size", func(c *Config) { c.MaxSize = -1 }, "store.max_size"},
		{"bad min free", func(c *Config) { c.MinFree = "lots" }, "store.min_free"},
		{"percent too big", func(c *Config) { c.MinFree = "100%" }, "store.min_free"},
		{"negative ttl", func(c *Config) { c.TTL = -time.Second }, "store.ttl"},
		{"no gc interval", func(c *Config) { c.GCInterval = 0 }, "store.gc_interval"},
	} {
		c := ok
		tc.mod(&c)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.key+":") {
			t.Errorf("%s: Validate() = %v, want an error starting with %q", tc.name, err, tc.key)
		}
	}
	for _, v := range []string{"", "10%", "0.5 %", "10GiB", "1000"} {
		c := ok
		c.MinFree = v
		if err := c.Validate(); err != nil {
			t.Errorf("MinFree %q: %v", v, err)
		}
	}
}
