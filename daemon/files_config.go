package daemon

// SetFileHost maps a file host to an endpoint (files.hosts; tests map the Hub and GitHub to
// loopback fixtures).
func (c *Config) SetFileHost(host, endpoint string) {
	setHost(&c.Files.Hosts, host, endpoint)
}
