package upstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/shoal-mirror/shoal/internal/oci"
)

// DockerHub is the registry host clients use for Docker Hub, and its API endpoint.
const (
	DockerHub         = "docker.io"
	DockerHubEndpoint = "https://registry-1.docker.io"
	// dockerHubConfigKey is how `docker login` names Docker Hub in config.json.
	dockerHubConfigKey = "https://index.docker.io/v1/"
)

// Defaults for Config.
const (
	DefaultTimeout = 30 * time.Second
	DefaultRetries = 3
)

// Config configures the upstream client. It is also decoded from the daemon's YAML file.
type Config struct {
	// Registries maps a registry host as clients name it ("docker.io", "ghcr.io",
	// "127.0.0.1:5001") to its endpoint and credentials.
	Registries map[string]RegistryConfig `yaml:"registries"`
	// DockerConfig is an optional Docker config.json whose "auths" supply credentials for
	// hosts that have none in Registries (credential helpers are not run).
	DockerConfig string `yaml:"docker_config"`
	// OnlyConfigured refuses every registry not named in Registries.
	OnlyConfigured bool `yaml:"only_configured"`
	// Timeout bounds the wait for response headers, a token fetch, and a stall while
	// reading a body. 0 means DefaultTimeout.
	Timeout time.Duration `yaml:"timeout"`
	// Retries is how many times an idempotent request is retried after a network error,
	// a 5xx or a 429 (DefaultConfig: DefaultRetries; 0: never).
	Retries int `yaml:"retries"`
	// Proxy routes upstream requests through an HTTP, HTTPS or SOCKS5 proxy
	// ("http://proxy:3128", "socks5://127.0.0.1:1080"). Empty: HTTPS_PROXY, HTTP_PROXY and
	// NO_PROXY from the environment; ProxyNone: always direct. Realm and redirect targets
	// are still judged before the proxy is asked to connect to them.
	Proxy string `yaml:"proxy"`

	// Resolver, when set, replaces the system resolver for upstream host names, and
	// DialCheck is called with every address about to be dialled (an error refuses the
	// dial). Tests use them to keep every packet on loopback; they are not configuration.
	Resolver  func(ctx context.Context, host string) ([]netip.Addr, error) `yaml:"-"`
	DialCheck func(network, addr string) error                             `yaml:"-"`
}

// RegistryConfig is one upstream registry.
type RegistryConfig struct {
	// URL is the endpoint, e.g. https://registry-1.docker.io or http://127.0.0.1:5001 (plain
	// http is allowed because it is named here). Empty means the built-in default
	// (https://registry-1.docker.io for docker.io, https://HOST otherwise).
	URL string `yaml:"url"`
	// Username and Password, or PasswordFile (read once at start), authenticate to the
	// registry or its token server. Never logged.
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	// RealmHosts lists further hosts accepted as this registry's token realm, for
	// registries whose token server lives on another site (nvcr.io → authn.nvidia.com).
	// Without it a realm must be on the registry's own site.
	RealmHosts []string `yaml:"realm_hosts"`
	// WriteThrough accepts pushes to this registry through shoal: stored and verified
	// locally, then forwarded with these credentials (package push, docs/push.md).
	WriteThrough bool `yaml:"write_through"`
}

// DefaultConfig returns the built-in configuration: Docker Hub at its API endpoint.
func DefaultConfig() Config {
	return Config{
		Registries: map[string]RegistryConfig{DockerHub: {URL: DockerHubEndpoint}},
		Timeout:    DefaultTimeout,
		Retries:    DefaultRetries,
	}
}

// Validate checks the configuration and returns one error naming the offending key. It
// reads password files and the Docker config to make sure they can be used, but never puts
// their content in the error.
func (c Config) Validate() error {
	seen := map[string]string{}
	for _, key := range slices.Sorted(maps.Keys(c.Registries)) {
		rc := c.Registries[key]
		name := fmt.Sprintf("registries.%q", key)
		if err := validHostPort(key); err != nil {
			return fmt.Errorf("%s: not a registry host: %v", name, err)
		}
		canon := canonicalHost(key)
		if prev, dup := seen[canon]; dup {
			return fmt.Errorf("%s: names the same registry as registries.%q", name, prev)
		}
		seen[canon] = key
		if rc.URL != "" {
			if _, err := parseEndpoint(rc.URL); err != nil {
				return fmt.Errorf("%s.url: %v", name, err)
			}
		}
		if _, err := rc.credentials(name); err != nil {
			return err
		}
		for i, h := range rc.RealmHosts {
			if err := validHostPort(h); err != nil {
				return fmt.Errorf("%s.realm_hosts[%d]: %v", name, i, err)
			}
		}
	}
	if c.DockerConfig != "" {
		if _, _, err := readDockerConfig(c.DockerConfig); err != nil {
			return fmt.Errorf("docker_config: %v", err)
		}
	}
	if c.Timeout < 0 {
		return fmt.Errorf("timeout: must not be negative, got %s", c.Timeout)
	}
	if c.Retries < 0 || c.Retries > 100 {
		return fmt.Errorf("retries: must be between 0 and 100, got %d", c.Retries)
	}
	if c.Proxy != "" && c.Proxy != ProxyNone {
		if _, err := parseProxyURL(c.Proxy); err != nil {
			return err
		}
	}
	return nil
}

// parseEndpoint checks a registry endpoint URL.
func parseEndpoint(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("not a URL: %q", raw)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("scheme must be http or https, got %q", u.Scheme)
	case u.User != nil:
		return nil, errors.New("must not contain credentials (use username and password)")
	case u.Host == "":
		return nil, fmt.Errorf("no host in %q", raw)
	case u.RawQuery != "" || u.Fragment != "":
		return nil, errors.New("must not have a query or fragment")
	}
	if err := validHostPort(u.Host); err != nil {
		return nil, err
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// validHostPort checks host[:port] as a registry is named (no scheme, no path).
func validHostPort(hp string) error {
	if hp == "" {
		return errors.New("empty")
	}
	if strings.ContainsAny(hp, "/@?#\\ \t") {
		return fmt.Errorf("%q is not host[:port]", hp)
	}
	host := hp
	if h, p, err := net.SplitHostPort(hp); err == nil {
		if p == "" || len(p) > 5 || strings.Trim(p, "0123456789") != "" {
			return fmt.Errorf("%q: bad port", hp)
		}
		host = h
	} else if strings.Count(hp, ":") > 0 && !strings.HasPrefix(hp, "[") {
		return fmt.Errorf("%q is not host[:port]", hp)
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if ip := net.ParseIP(host); ip != nil {
		return nil
	}
	if len(host) > 253 {
		return fmt.Errorf("%q: host name too long", hp)
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return fmt.Errorf("%q: bad host name", hp)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("%q: bad host name", hp)
			}
		}
	}
	return nil
}

// canonicalHost folds the names Docker Hub goes by into "docker.io" and lower-cases.
func canonicalHost(h string) string {
	return oci.CanonicalRegistry(strings.ToLower(strings.TrimSpace(h)))
}

// credentials is what a registry or its token server is given. A zero value is anonymous.
// An empty username with a secret is an identity (refresh) token, as `docker login` stores
// them; containerd's token helpers treat it that way.
type credentials struct {
	username, secret string
}

func (c credentials) anonymous() bool { return c.secret == "" }

// credentials resolves a RegistryConfig's credentials, reading PasswordFile.
func (rc RegistryConfig) credentials(name string) (credentials, error) {
	switch {
	case rc.Password != "" && rc.PasswordFile != "":
		return credentials{}, fmt.Errorf("%s: set password or password_file, not both", name)
	case rc.Username == "" && (rc.Password != "" || rc.PasswordFile != ""):
		return credentials{}, fmt.Errorf("%s.username: required with a password", name)
	case rc.Username != "" && rc.Password == "" && rc.PasswordFile == "":
		return credentials{}, fmt.Errorf("%s: username %q has no password or password_file", name, rc.Username)
	}
	secret := rc.Password
	if rc.PasswordFile != "" {
		b, err := os.ReadFile(rc.PasswordFile)
		if err != nil {
			return credentials{}, fmt.Errorf("%s.password_file: cannot read %q: %v", name, rc.PasswordFile, errors.Unwrap(err))
		}
		secret = strings.TrimRight(string(b), "\r\n")
		if secret == "" {
			return credentials{}, fmt.Errorf("%s.password_file: %q is empty", name, rc.PasswordFile)
		}
	}
	return credentials{username: rc.Username, secret: secret}, nil
}

// readDockerConfig reads the "auths" of a Docker config.json into credentials by
// canonical host. helpers reports whether the file names credential helpers, which shoal
// does not run.
func readDockerConfig(path string) (creds map[string]credentials, helpers bool, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, false, fmt.Errorf("cannot read %q: %v", path, errors.Unwrap(err))
	}
	var doc struct {
		CredsStore  string            `json:"credsStore"`
		CredHelpers map[string]string `json:"credHelpers"`
		Auths       map[string]struct {
			Auth          string `json:"auth"`
			Username      string `json:"username"`
			Password      string `json:"password"`
			IdentityToken string `json:"identitytoken"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		// The JSON error may quote part of the file, which may hold secrets.
		return nil, false, fmt.Errorf("%q is not a Docker config.json (invalid JSON)", path)
	}
	out := map[string]credentials{}
	for key, a := range doc.Auths {
		host := dockerConfigHost(key)
		if host == "" {
			continue
		}
		cr := credentials{username: a.Username, secret: a.Password}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return nil, false, fmt.Errorf("%q: auths.%q.auth is not base64", path, key)
			}
			u, p, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, false, fmt.Errorf("%q: auths.%q.auth is not user:password", path, key)
			}
			cr = credentials{username: u, secret: p}
		}
		if a.IdentityToken != "" {
			cr = credentials{secret: a.IdentityToken}
		}
		if !cr.anonymous() {
			out[host] = cr
		}
	}
	return out, doc.CredsStore != "" || len(doc.CredHelpers) > 0, nil
}

// dockerConfigHost turns an "auths" key ("https://index.docker.io/v1/", "ghcr.io",
// "http://127.0.0.1:5001") into a canonical registry host.
func dockerConfigHost(key string) string {
	if key == dockerHubConfigKey {
		return DockerHub
	}
	k := key
	if i := strings.Index(k, "://"); i >= 0 {
		k = k[i+3:]
	}
	k, _, _ = strings.Cut(k, "/")
	if validHostPort(k) != nil {
		return ""
	}
	return canonicalHost(k)
}
