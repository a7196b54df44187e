package daemon

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/shoal-mirror/shoal/internal/guard"
)

// validateSecurity checks the guard's settings and refuses secret files anyone may write.
func (c *Config) validateSecurity() error {
	if err := c.Guard.Validate(); err != nil {
		return guardError(err)
	}
	for key, path := range c.secretFiles() {
		if err := guard.CheckSecretFile(slog.New(slog.DiscardHandler), key, path); err != nil {
			return guardError(err)
		}
	}
	return nil
}

// guardError turns the guard's configuration errors into the daemon's (same key, same text),
// which the CLI reports on one line with exit status 2.
func guardError(err error) error {
	var ge *guard.ConfigError
	if errors.As(err, &ge) {
		return &ConfigError{Key: ge.Key, Err: ge.Err}
	}
	return err
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
