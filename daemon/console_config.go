package daemon

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/shoal-mirror/shoal/internal/guard"
)

// DefaultConsoleListen is the web console's default address. When it is taken (another shoal
// on the host), the daemon runs without the console and says so; an address set explicitly
// must be free.
const DefaultConsoleListen = "127.0.0.1:9097"

// ConsoleConfig is the web console (console/) and the search the admin API offers it and
// `shoal search`.
type ConsoleConfig struct {
	// Listen is the console's HOST:PORT, or "off". Off loopback it needs Htpasswd.
	Listen string
	// Htpasswd is a bcrypt htpasswd file; when set, every console request must log in (HTTP
	// Basic). Required when Listen is not a loopback address.
	Htpasswd string
	// HubSearchURL is Docker Hub's search API base: GET <it>/v1/search?q=TERM&n=N.
	HubSearchURL string
	// SearchCacheTTL is how long a search's answer is reused; SearchPerMinute how many
	// searches one client may make per minute (burst 10; 0 = no limit).
	SearchCacheTTL  time.Duration
	SearchPerMinute int
}

func (c ConsoleConfig) validate() error {
	if c.Listen != "off" && c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			return &ConfigError{Key: "console.listen", Err: fmt.Errorf("%q: %w", c.Listen, err)}
		}
		// The console can pull, pin and remove content: anyone who can reach it off loopback
		// must log in.
		if !guard.ListensOnLoopback(c.Listen) && c.Htpasswd == "" {
			return &ConfigError{Key: "console.listen", Err: fmt.Errorf("%q is not a loopback address: set console.htpasswd (users must log in) or listen on 127.0.0.1", c.Listen)}
		}
	}
	if c.Htpasswd != "" {
		b, err := os.ReadFile(c.Htpasswd)
		if err != nil {
			return &ConfigError{Key: "console.htpasswd", Err: err}
		}
		if _, err := guard.ParseHtpasswd(b); err != nil {
			return &ConfigError{Key: "console.htpasswd", Err: fmt.Errorf("%s: %w", c.Htpasswd, err)}
		}
	}
	if u, err := url.Parse(c.HubSearchURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return &ConfigError{Key: "console.hub_search_url", Err: fmt.Errorf("%q: want https://HOST", c.HubSearchURL)}
	}
	if c.SearchCacheTTL < 0 || c.SearchPerMinute < 0 {
		return &ConfigError{Key: "console.search_per_minute", Err: fmt.Errorf("search_cache_ttl and search_per_minute must not be negative")}
	}
	return nil
}
