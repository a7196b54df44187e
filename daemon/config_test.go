package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultsAreValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:5000" || c.DataDir != "/var/lib/shoal" || c.DefaultRegistry != "docker.io" || c.TagTTL != 30*time.Second ||
		!c.P2PVerifyBeforeServing || c.P2PVerifyMaxWait != 30*time.Second {
		t.Fatalf("defaults: %+v", c)
	}
	if got := c.Upstream.Registries["docker.io"].URL; got != "https://registry-1.docker.io" {
		t.Fatalf("docker.io endpoint %q", got)
	}
}

func TestFileOverridesDefaultsAndFlagsOverrideFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "shoal.yaml")
	os.WriteFile(p, []byte("listen: 127.0.0.1:6000\ntag_ttl: 1m\nregistries:\n  docker.io:\n    username: bob\n    password: s3cret\n  ghcr.io: {}\nstore:\n  max_size: 2GiB\n  max_blob_size: 512MiB\n"), 0o600)
	c := DefaultConfig()
	if err := c.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:6000" || c.TagTTL != time.Minute || c.Store.MaxSize != 2<<30 || c.StoreMaxBlobSize != 512<<20 {
		t.Fatalf("file not applied: %+v", c)
	}
	dh := c.Upstream.Registries["docker.io"]
	if dh.URL != "https://registry-1.docker.io" || dh.Username != "bob" {
		t.Fatalf("docker.io merged wrong: %+v", dh)
	}
	if err := c.SetRegistryFlag("docker.io=http://127.0.0.1:5001"); err != nil {
		t.Fatal(err)
	}
	if got := c.Upstream.Registries["docker.io"]; got.URL != "http://127.0.0.1:5001" || got.Username != "bob" {
		t.Fatalf("flag did not override only the URL: %+v", got)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	cases := []struct{ name, yaml, key string }{
		{"unknown key", "listen: 127.0.0.1:5000\nlisten_addr: x\n", `unknown key "listen_addr"`},
		{"bad listen", "listen: nope\n", "listen"},
		{"bad duration", "tag_ttl: soon\n", "tag_ttl"},
		{"bad size", "store:\n  max_size: lots\n", "store.max_size"},
		{"bad log format", "log_format: xml\n", "log_format"},
		{"bad registry host", "registries:\n  \"a b\": {url: http://x}\n", "registries"},
		{"bad default registry", "default_registry: \"no such/host\"\n", "default_registry"},
		// A blank allow entry must not turn into "allow everything".
		{"blank allow_repo", "security:\n  allow_repo: [\" \"]\n", "security.allow_repo"},
		{"blank allow_cidr", "security:\n  allow_cidr: [\"10.0.0.0/8\", \"\"]\n", "security.allow_cidr"},
		{"blank deny_repo", "security:\n  deny_repo: [\"\"]\n", "security.deny_repo"},
		// No authentication on the admin API: TCP on loopback only.
		{"admin on all interfaces", "admin_listen: 0.0.0.0:7000\n", "admin_listen"},
		{"admin on a LAN address", "admin_listen: \"10.1.2.3:7000\"\n", "admin_listen"},
		{"negative verify_max_wait", "p2p:\n  verify_max_wait: -1s\n", "p2p.verify_max_wait"},
		{"bad max_blob_size", "store:\n  max_blob_size: lots\n", "store.max_blob_size"},
		{"zero max_blob_size", "store:\n  max_blob_size: \"0\"\n", "store.max_blob_size"},
		// A misspelt credential key must not pass as "anonymous".
		{"unknown registry key", "registries:\n  ghcr.io:\n    username: u\n    pasword_file: /etc/pw\n", `unknown key "pasword_file"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "c.yaml")
			os.WriteFile(p, []byte(tc.yaml), 0o600)
			c := DefaultConfig()
			err := c.LoadFile(p)
			if err == nil {
				err = c.Validate()
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a ConfigError", err)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.key) || strings.Contains(msg, "\n") {
				t.Fatalf("message %q should name %q on one line", msg, tc.key)
			}
		})
	}
}

func TestRegistryFlagSyntax(t *testing.T) {
	c := DefaultConfig()
	for _, v := range []string{"docker.io", "=http://x", "docker.io="} {
		if err := c.SetRegistryFlag(v); err == nil {
			t.Errorf("%q accepted", v)
		}
	}
}

// realm_hosts in the file reaches the upstream configuration (the merge used to drop it,
// while the refusal message told users to set it).
func TestRegistryRealmHostsFromFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte("registries:\n  nvcr.io:\n    realm_hosts: [authn.nvidia.com]\n"), 0o600)
	c := DefaultConfig()
	if err := c.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	if got := c.Upstream.Registries["nvcr.io"].RealmHosts; len(got) != 1 || got[0] != "authn.nvidia.com" {
		t.Fatalf("realm_hosts = %v", got)
	}
}
