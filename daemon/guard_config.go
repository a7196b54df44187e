package daemon

import (
	"fmt"
	"log/slog"
)

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
