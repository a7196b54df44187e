package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/shoal-mirror/shoal/store"
)

// securityFile is the `security:` section of the YAML file (GuardConfig's keys).
type securityFile struct {
	AllowCIDR           []string       `yaml:"allow_cidr"`
	DenyCIDR            []string       `yaml:"deny_cidr"`
	AllowRepo           []string       `yaml:"allow_repo"`
	DenyRepo            []string       `yaml:"deny_repo"`
	RateLimit           *float64       `yaml:"rate_limit"`
	RateBurst           *int           `yaml:"rate_burst"`
	MaxConcurrent       *int           `yaml:"max_concurrent_per_client"`
	MaxConnsPerClient   *int           `yaml:"max_conns_per_client"`
	Htpasswd            *string        `yaml:"htpasswd"`
	AuthExemptCIDR      []string       `yaml:"auth_exempt_cidr"`
	TLSCert             *string        `yaml:"tls_cert"`
	TLSKey              *string        `yaml:"tls_key"`
	AllowInsecureListen *bool          `yaml:"allow_insecure_listen"`
	ReadHeaderTimeout   *time.Duration `yaml:"read_header_timeout"`
	IdleTimeout         *time.Duration `yaml:"idle_timeout"`
	WriteTimeout        *time.Duration `yaml:"write_timeout"`
	RequestTimeout      *time.Duration `yaml:"request_timeout"`
	MaxHeaderBytes      *string        `yaml:"max_header_bytes"`
	MaxURILength        *int           `yaml:"max_uri_length"`
}

// apply overlays the keys the file sets. A list given in the file replaces the default one.
func (f *securityFile) apply(g *GuardConfig) error {
	for _, l := range []struct{ dst, src *[]string }{
		{&g.AllowCIDR, &f.AllowCIDR}, {&g.DenyCIDR, &f.DenyCIDR}, {&g.AllowRepo, &f.AllowRepo}, {&g.DenyRepo, &f.DenyRepo},
		{&g.AuthExemptCIDR, &f.AuthExemptCIDR},
	} {
		if *l.src != nil {
			*l.dst = *l.src
		}
	}
	set(&g.RateLimit, f.RateLimit)
	set(&g.RateBurst, f.RateBurst)
	set(&g.MaxConcurrent, f.MaxConcurrent)
	set(&g.MaxConnsPerClient, f.MaxConnsPerClient)
	set(&g.Htpasswd, f.Htpasswd)
	set(&g.TLSCert, f.TLSCert)
	set(&g.TLSKey, f.TLSKey)
	set(&g.AllowInsecureListen, f.AllowInsecureListen)
	set(&g.ReadHeaderTimeout, f.ReadHeaderTimeout)
	set(&g.IdleTimeout, f.IdleTimeout)
	set(&g.WriteTimeout, f.WriteTimeout)
	set(&g.RequestTimeout, f.RequestTimeout)
	set(&g.MaxURILength, f.MaxURILength)
	if f.MaxHeaderBytes != nil {
		n, err := store.ParseSize(*f.MaxHeaderBytes)
		if err != nil {
			return &ConfigError{Key: "security.max_header_bytes", Err: err}
		}
		if n > 1<<30 {
			return &ConfigError{Key: "security.max_header_bytes", Err: errors.New("must be at most 1GiB")}
		}
		g.MaxHeaderBytes = int(n)
	}
	return nil
}

// Validate checks the guard's settings and the files they name (htpasswd, TLS pair).
func (g GuardConfig) Validate() error {
	_, err := compileGuard(g, slog.New(slog.DiscardHandler))
	return err
}

// validateSecurity checks the guard's settings and refuses secret files anyone may write.
func (c *Config) validateSecurity() error {
	if err := c.Guard.Validate(); err != nil {
		return err
	}
	for key, path := range c.secretFiles() {
		if err := checkSecretFile(slog.New(slog.DiscardHandler), key, path); err != nil {
			return err
		}
	}
	return nil
}

// secretFiles names every file holding a secret, by configuration key.
func (c *Config) secretFiles() map[string]string {
	m := map[string]string{}
	for host, rc := range c.Upstream.Registries {
		if rc.PasswordFile != "" {
			m[fmt.Sprintf("registries.%q.password_file", host)] = rc.PasswordFile
		}
	}
	if c.Upstream.DockerConfig != "" {
		m["docker_config"] = c.Upstream.DockerConfig
	}
	if c.P2PEnabled && c.P2P.SwarmKeyFile != "" {
		m["p2p.swarm_key_file"] = c.P2P.SwarmKeyFile
	}
	return m
}
