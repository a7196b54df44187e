package daemon

import (
	"time"

	"github.com/shoal-mirror/shoal/files"
	"github.com/shoal-mirror/shoal/store"
)

// filesFile is the `files:` block of the YAML file (docs/files.md).
type filesFile struct {
	Enabled         *bool             `yaml:"enabled"`
	Hosts           map[string]string `yaml:"hosts"`
	HFToken         *string           `yaml:"hf_token"`
	HFTokenFile     *string           `yaml:"hf_token_file"`
	GitHubToken     *string           `yaml:"github_token"`
	GitHubTokenFile *string           `yaml:"github_token_file"`
	MetaTTL         *time.Duration    `yaml:"meta_ttl"`
	MaxLocalSize    *string           `yaml:"max_local_size"`
	LocalMaxTotal   *string           `yaml:"local_max_total"`
}

// apply overlays the block on c. A hosts map adds to (or, with "", keeps) the built-in hosts;
// an entry mapped to "-" removes a host.
func (f filesFile) apply(c *files.Config) error {
	set(&c.Enabled, f.Enabled)
	set(&c.HFToken, f.HFToken)
	set(&c.HFTokenFile, f.HFTokenFile)
	set(&c.GitHubToken, f.GitHubToken)
	set(&c.GitHubTokenFile, f.GitHubTokenFile)
	set(&c.MetaTTL, f.MetaTTL)
	if f.MaxLocalSize != nil {
		n, err := store.ParseSize(*f.MaxLocalSize)
		if err != nil {
			return &ConfigError{Key: "files.max_local_size", Err: err}
		}
		c.MaxLocalSize = n
	}
	if f.LocalMaxTotal != nil {
		n, err := store.ParseSize(*f.LocalMaxTotal)
		if err != nil {
			return &ConfigError{Key: "files.local_max_total", Err: err}
		}
		c.LocalMaxTotal = n
	}
	if len(f.Hosts) > 0 && c.Hosts == nil {
		c.Hosts = map[string]string{}
	}
	for h, ep := range f.Hosts {
		if ep == "-" {
			delete(c.Hosts, h)
			continue
		}
		c.Hosts[h] = ep
	}
	return nil
}

// SetFileHost maps a file host to an endpoint (the --file-host flag; tests map the Hub and
// GitHub to loopback fixtures).
func (c *Config) SetFileHost(host, endpoint string) {
	if c.Files.Hosts == nil {
		c.Files.Hosts = map[string]string{}
	}
	c.Files.Hosts[host] = endpoint
}
