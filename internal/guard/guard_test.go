package guard

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/shoal-mirror/shoal/internal/testutil"
)

// The guard's behaviour as clients see it (address lists, logins, TLS, limits, reload) is
// tested through whole daemons in package daemon (guard_test.go, conncap_test.go,
// admin_guard_test.go); here are its parsers and its start-up checks.

func TestRepoPatternMatching(t *testing.T) {
	t.Parallel()
	cases := []struct {
		pattern, registry, repo string
		match                   bool
	}{
		{"docker.io/library/*", "docker.io", "library/alpine", true},
		{"docker.io/library/*", "docker.io", "bitnami/redis", false},
		{"docker.io/alpine", "docker.io", "library/alpine", true}, // library/ added as routing does
		{"index.docker.io/library/alp?ne", "docker.io", "library/alpine", true},
		{"ghcr.io/myorg/*", "ghcr.io", "myorg/tools/builder", true},
		{"ghcr.io/myorg/*", "ghcr.io", "myorgx/tools", false},
		{"ghcr.io/myorg/*", "ghcr.io.evil.com", "myorg/x", false},
		{"GHCR.io/myorg/*", "ghcr.io", "myorg/x", true},
		{"quay.io/a.b/*", "quay.io", "aXb/c", false}, // dots are literal
		{"127.0.0.1:5000/*", "127.0.0.1:5000", "x/y", true},
	}
	for _, tc := range cases {
		res, err := compileRepoPatterns("k", []string{tc.pattern})
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		p := &policy{allowRepo: res}
		if got := p.repoAllowed(tc.registry, tc.repo); got != tc.match {
			t.Errorf("%s vs %s/%s: %v, want %v", tc.pattern, tc.registry, tc.repo, got, tc.match)
		}
	}
	for _, bad := range []string{"alpine", "docker.io/", "/x"} {
		if _, err := compileRepoPatterns("security.allow_repo", []string{bad}); err == nil || !strings.Contains(err.Error(), "security.allow_repo") {
			t.Errorf("pattern %q: err %v, want a ConfigError naming the key", bad, err)
		}
	}
}

func TestClientKeyGroupsIPv6By64(t *testing.T) {
	t.Parallel()
	k := func(s string) netip.Prefix { return clientKey(netip.MustParseAddr(s)) }
	if k("2001:db8:1:2::1") != k("2001:db8:1:2:ffff::9") {
		t.Error("two addresses of one /64 are different clients")
	}
	if k("2001:db8:1:2::1") == k("2001:db8:1:3::1") {
		t.Error("two /64s are one client")
	}
	if k("192.0.2.1") == k("192.0.2.2") {
		t.Error("two IPv4 addresses are one client")
	}
}

func TestHtpasswdParsing(t *testing.T) {
	t.Parallel()
	h, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	for _, tc := range []struct{ name, file, err string }{
		{"ok", "alice:" + string(h) + "\n", ""},
		{"md5 refused", "alice:$apr1$abc$def\n", "only bcrypt"},
		{"sha1 refused", "alice:{SHA}abc=\n", "only bcrypt"},
		{"plain refused", "alice:pw\n", "only bcrypt"},
		{"no colon", "alice\n", "line 1"},
		{"duplicate", "a:" + string(h) + "\na:" + string(h) + "\n", "twice"},
		{"empty", "# nothing\n", "no users"},
		{"broken bcrypt", "alice:$2y$10$short\n", "malformed"},
	} {
		users, err := ParseHtpasswd([]byte(tc.file))
		switch {
		case tc.err == "" && (err != nil || len(users) != 1):
			t.Errorf("%s: %v", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.err)
		case err != nil && strings.Contains(err.Error(), "$"):
			t.Errorf("%s: error quotes the hash: %v", tc.name, err)
		}
	}
}

func TestInsecureListenWarning(t *testing.T) {
	t.Parallel()
	ca := testutil.NewTestCA(t)
	for _, tc := range []struct {
		name   string
		listen string
		mod    func(*Config)
		warn   bool
	}{
		{"loopback", "127.0.0.1:5000", nil, false},
		{"localhost", "localhost:5000", nil, false},
		{"all interfaces", "0.0.0.0:5000", nil, true},
		{"all interfaces v6", "[::]:5000", nil, true},
		{"LAN address", "10.1.2.3:5000", nil, true},
		{"with TLS", "0.0.0.0:5000", func(g *Config) { g.TLSCert, g.TLSKey = ca.CertFile, ca.KeyFile }, false},
		{"allowed", "0.0.0.0:5000", func(g *Config) { g.AllowInsecureListen = true }, false},
	} {
		cfg := DefaultConfig()
		if tc.mod != nil {
			tc.mod(&cfg)
		}
		var buf bytes.Buffer
		if _, err := New(cfg, slog.New(slog.NewTextHandler(&buf, nil)), Options{Listen: tc.listen}); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := strings.Contains(buf.String(), "without TLS"); got != tc.warn {
			t.Errorf("%s: warned %v, want %v (log %q)", tc.name, got, tc.warn, buf.String())
		}
	}
}

func TestSecretFileModes(t *testing.T) {
	t.Parallel()
	hp := testutil.WriteHtpasswd(t, map[string]string{"alice": "x"})
	for _, tc := range []struct {
		mode os.FileMode
		err  bool
		warn bool
	}{{0o600, false, false}, {0o644, false, true}, {0o666, true, false}} {
		if err := os.Chmod(hp, tc.mode); err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		cfg.Htpasswd = hp
		var buf bytes.Buffer
		_, err := New(cfg, slog.New(slog.NewTextHandler(&buf, nil)), Options{Listen: "127.0.0.1:5000"})
		var ce *ConfigError
		if tc.err != (err != nil) || (err != nil && (!errors.As(err, &ce) || ce.Key != "security.htpasswd")) {
			t.Errorf("mode %04o: err %v, want error=%v naming security.htpasswd", tc.mode, err, tc.err)
		}
		if got := strings.Contains(buf.String(), "world-readable"); got != tc.warn {
			t.Errorf("mode %04o: warned %v, want %v", tc.mode, got, tc.warn)
		}
	}
}
