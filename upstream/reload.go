package upstream

import (
	"fmt"
	"log/slog"
)

// registrySet is the configured registries with their credentials. It is built whole and
// never changed, so a request holds one consistent view while Reload swaps in the next.
type registrySet struct {
	regs        map[string]*registry   // configured, by canonical host
	dockerCreds map[string]credentials // from DockerConfig, by canonical host
}

// buildRegistries reads credentials (password files, the Docker config) and endpoints.
func buildRegistries(cfg Config, log *slog.Logger) (*registrySet, error) {
	set := &registrySet{regs: map[string]*registry{}, dockerCreds: map[string]credentials{}}
	if cfg.DockerConfig != "" {
		creds, helpers, err := readDockerConfig(cfg.DockerConfig)
		if err != nil {
			return nil, fmt.Errorf("docker_config: %v", err)
		}
		if helpers {
			log.Warn("docker_config names credential helpers (credsStore/credHelpers); shoal only reads \"auths\"", "path", cfg.DockerConfig)
		}
		set.dockerCreds = creds
		warnIfWorldReadable(log, "docker_config", cfg.DockerConfig)
	}
	for key, rc := range cfg.Registries {
		name := fmt.Sprintf("registries.%q", key)
		host := canonicalHost(key)
		raw := rc.URL
		if raw == "" {
			raw = defaultEndpoint(host)
		}
		ep, err := parseEndpoint(raw)
		if err != nil {
			return nil, fmt.Errorf("%s.url: %v", name, err)
		}
		creds, err := rc.credentials(name)
		if err != nil {
			return nil, err
		}
		if rc.PasswordFile != "" {
			warnIfWorldReadable(log, name+".password_file", rc.PasswordFile)
		}
		if creds.anonymous() {
			creds = set.dockerCreds[host]
		}
		set.regs[host] = &registry{host: host, endpoint: ep, creds: creds, trusted: true,
			private: endpointIsPrivate(ep), realmHosts: rc.RealmHosts, writeThrough: rc.WriteThrough}
	}
	return set, nil
}

// Reload re-reads the registries' endpoints and credentials (password, password_file,
// docker_config) from cfg, for a rotated secret to take effect without a restart. Tokens
// fetched with the old credentials are dropped. The other settings (timeouts, retries,
// proxy, only_configured) keep their start-up values.
func (c *Client) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	set, err := buildRegistries(cfg, c.log)
	if err != nil {
		return err
	}
	c.regs.Store(set)
	c.mu.Lock()
	clear(c.tokens)
	clear(c.challenges)
	c.mu.Unlock()
	return nil
}
