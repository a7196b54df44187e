package daemon

import "github.com/shoal-mirror/shoal/internal/settings"

// SetFileHost maps a file host to an endpoint (files.hosts; tests map the Hub and GitHub to
// loopback fixtures).
func (c *Config) SetFileHost(host, endpoint string) {
	settings.SetHost(&c.Files.Hosts, host, endpoint)
}
