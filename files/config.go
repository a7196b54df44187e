package files

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// Logical upstream hosts. Clients and peers name files by these; Config.Hosts maps each to
// the endpoint actually contacted (tests map them to loopback fixtures).
const (
	HostHF     = "huggingface.co"
	HostGitHub = "github.com"
	HostGHAPI  = "api.github.com"
)

// DefaultHosts are the hosts contacted unless the configuration says otherwise: the Hub and
// the CDN hosts its resolve redirects go to, GitHub and the hosts its downloads redirect to.
var DefaultHosts = []string{
	HostHF, "cdn-lfs.huggingface.co", "cdn-lfs.hf.co", "cdn-lfs-us-1.hf.co", "cdn-lfs-eu-1.hf.co",
	"cas-bridge.xethub.hf.co",
	HostGitHub, HostGHAPI, "objects.githubusercontent.com", "release-assets.githubusercontent.com",
	"raw.githubusercontent.com", "codeload.github.com",
}

// Defaults for Config.
const (
	DefaultMetaTTL       = 5 * time.Minute
	DefaultMaxLocalSize  = 4 << 30
	DefaultLocalMaxTotal = 20 << 30
)

// Config configures the file endpoints.
type Config struct {
	// Enabled mounts /hf/ and /https://github.com/ on the mirror listener.
	Enabled bool
	// Hosts maps every host shoal may contact for files to its endpoint ("" = https://HOST).
	Hosts map[string]string
	// HFToken and GitHubToken (or the files they are read from) authenticate to the Hub and to
	// GitHub's API. Never logged, never sent to another host.
	HFToken, HFTokenFile         string
	GitHubToken, GitHubTokenFile string
	// MetaTTL is how long API answers and revision → commit resolutions are reused before
	// they are asked again (commit-pinned answers are kept for good); an upstream that fails
	// then gets the stale answer served.
	MetaTTL time.Duration
	// MaxLocalSize bounds a file kept on the node only (no sha256 digest), LocalMaxTotal all
	// of them together: the least recently served go first (0: no bound).
	MaxLocalSize  int64
	LocalMaxTotal int64
}

// DefaultConfig returns the built-in configuration.
func DefaultConfig() Config {
	h := map[string]string{}
	for _, n := range DefaultHosts {
		h[n] = ""
	}
	return Config{Enabled: true, Hosts: h, MetaTTL: DefaultMetaTTL, MaxLocalSize: DefaultMaxLocalSize, LocalMaxTotal: DefaultLocalMaxTotal}
}

// Validate checks the configuration; the error names the key.
func (c Config) Validate() error {
	for _, k := range slices.Sorted(maps.Keys(c.Hosts)) {
		if k == "" || strings.ContainsAny(k, "/@?# ") {
			return fmt.Errorf("files.hosts: %q is not a host name", k)
		}
		if v := c.Hosts[k]; v != "" {
			if _, err := parseEndpoint(v); err != nil {
				return fmt.Errorf("files.hosts.%q: %v", k, err)
			}
		}
	}
	if c.MetaTTL < 0 {
		return errors.New("files.meta_ttl: must not be negative")
	}
	if c.MaxLocalSize < 0 {
		return errors.New("files.max_local_size: must not be negative")
	}
	if c.LocalMaxTotal < 0 {
		return errors.New("files.local_max_total: must not be negative")
	}
	for key, f := range map[string]string{"files.hf_token_file": c.HFTokenFile, "files.github_token_file": c.GitHubTokenFile} {
		if f != "" {
			if _, err := os.ReadFile(f); err != nil {
				return fmt.Errorf("%s: %v", key, err)
			}
		}
	}
	return nil
}

func parseEndpoint(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, fmt.Errorf("not a URL: %q", raw)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("scheme must be http or https, got %q", u.Scheme)
	case u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("want scheme://host[:port][/path], got %q", raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	return u, nil
}

func token(v, file string) string {
	if v != "" || file == "" {
		return strings.TrimSpace(v)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
