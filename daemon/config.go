package daemon

import (
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// DefaultsYAML returns the built-in configuration as `shoal config default` prints it, made
// from the settings table (settings.go).
func DefaultsYAML() []byte { return defaultsFromTable() }

// Config is everything the daemon needs. Precedence is applied by the caller: flags > SHOAL_*
// environment > file > the embedded defaults.
type Config struct {
	Listen          string
	DataDir         string
	DefaultRegistry string
	TagTTL          time.Duration
	LogFormat       string
	LogLevel        string
	Upstream        upstream.Config
	Store           store.Config
	// StoreMaxBlobSize (store.max_blob_size) is the largest blob a download may grow to,
	// whatever its source says; 0 means the store's budget (store.max_size as the store
	// computed it). Descriptor sizes and Content-Length bound a download further (blobsize.go).
	StoreMaxBlobSize int64
	// Guard is the mirror listener's access controls and limits (guard.go).
	Guard GuardConfig
	// P2P is the libp2p node; P2PEnabled turns it off for a purely local mirror.
	P2P        p2p.Config
	P2PEnabled bool
	// P2PSharePrivate lets peers fetch content that came from repositories needing credentials.
	P2PSharePrivate bool
	// P2PVerifyBeforeServing holds bytes that came from a peer back from this node's clients
	// until the whole blob verified (spool.go: fill).
	P2PVerifyBeforeServing bool
	// P2PVerifyMaxWait bounds that hold for a client still waiting for its first byte of peer
	// bytes: after it, the client gets them as they arrive (the last byte still waits for the
	// check). Clients such as containerd give up on a pull that makes no progress for a while
	// (image_pull_progress_timeout: 1 to 5 minutes). 0 = hold for as long as it takes.
	P2PVerifyMaxWait time.Duration
	// AdminListen is the admin API's address: "" = unix socket <DataDir>/admin.sock,
	// "unix:/path", or HOST:PORT; "off" disables it. MetricsListen is the Prometheus and probe
	// endpoint, HOST:PORT or "off". See admin.go and metrics.go.
	AdminListen   string
	MetricsListen string
	// Doctor is the periodic canary pull through CRI (doctor.go); off by default.
	Doctor DoctorConfig
	// Version is what the admin API and metrics report; main sets it from its build stamp.
	Version string

	// explicit holds the keys a file, variable or flag gave (not the defaults); dataDirWhy
	// says why data_dir is not the default one (datadir.go).
	explicit   map[string]bool
	dataDirWhy string
}

// ConfigError names the key that is wrong; the CLI prints it on one line and exits with 2.
type ConfigError struct {
	Key string
	Err error
}

// Error is one line, whatever the wrapped error: several problems are joined with "; ".
func (e *ConfigError) Error() string {
	return strings.ReplaceAll(fmt.Sprintf("config: %s: %v", e.Key, e.Err), "\n", "; ")
}
func (e *ConfigError) Unwrap() error { return e.Err }

// DefaultConfig returns the built-in defaults of the settings table. It panics only if the
// table's defaults are broken, which the tests catch.
func DefaultConfig() Config {
	c := Config{Upstream: upstream.DefaultConfig(), Store: store.DefaultConfig(), P2P: p2p.DefaultConfig(), Guard: DefaultGuardConfig()}
	if err := c.applyYAML(defaultsFromTable(), "settings table"); err != nil {
		panic("settings table defaults: " + err.Error())
	}
	c.explicit = nil
	return c
}

// LoadFile overlays the YAML file at path on c. Unknown keys are errors.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return &ConfigError{Key: "--config", Err: err}
	}
	return c.applyYAML(b, path)
}

// yamlAtLine splits yaml.v3's "line 4: cannot unmarshal …" into its line and message.
var yamlAtLine = regexp.MustCompile(`line (\d+): (.*)`)

// SetRegistry merges rc into the configuration for host: fields given in rc win, the rest stay.
func (c *Config) SetRegistry(host string, rc upstream.RegistryConfig) {
	setRegistry(&c.Upstream.Registries, host, rc)
}

func setRegistry(regs *map[string]upstream.RegistryConfig, host string, rc upstream.RegistryConfig) {
	if *regs == nil {
		*regs = map[string]upstream.RegistryConfig{}
	}
	cur := (*regs)[host]
	if rc.URL != "" {
		cur.URL = rc.URL
	}
	if rc.Username != "" {
		cur.Username = rc.Username
	}
	if rc.Password != "" {
		cur.Password = rc.Password
	}
	if rc.PasswordFile != "" {
		cur.PasswordFile = rc.PasswordFile
	}
	(*regs)[host] = cur
}

// SetRegistryFlag parses a --registry HOST=URL value.
func (c *Config) SetRegistryFlag(v string) error {
	s, _ := settingByKey("registries")
	return s.Set(c, []string{v})
}

// Validate checks the whole configuration and names the first bad key.
func (c *Config) Validate() error {
	if err := c.resolveDataDir(); err != nil { // datadir.go
		return err
	}
	if err := c.Doctor.validate(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return &ConfigError{Key: "listen", Err: fmt.Errorf("%q: %w", c.Listen, err)}
	}
	if c.DataDir == "" {
		return &ConfigError{Key: "data_dir", Err: errors.New("must not be empty")}
	}
	if !validHost(c.DefaultRegistry) {
		return &ConfigError{Key: "default_registry", Err: fmt.Errorf("%q is not a registry host", c.DefaultRegistry)}
	}
	if c.TagTTL < 0 {
		return &ConfigError{Key: "tag_ttl", Err: errors.New("must not be negative")}
	}
	if c.StoreMaxBlobSize < 0 {
		return &ConfigError{Key: "store.max_blob_size", Err: errors.New("must not be negative")}
	}
	if c.P2PVerifyMaxWait < 0 {
		return &ConfigError{Key: "p2p.verify_max_wait", Err: errors.New("must not be negative (0 = hold for as long as it takes)")}
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return &ConfigError{Key: "log_format", Err: fmt.Errorf("%q: want text or json", c.LogFormat)}
	}
	if err := c.validateOps(); err != nil { // admin.go
		return err
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		return &ConfigError{Key: "log_level", Err: fmt.Errorf("%q: want debug, info, warn or error", c.LogLevel)}
	}
	for host := range c.Upstream.Registries {
		if !validHost(host) {
			return &ConfigError{Key: fmt.Sprintf("registries.%q", host), Err: errors.New("not a registry host (want HOST or HOST:PORT)")}
		}
	}
	if err := c.Upstream.Validate(); err != nil {
		return &ConfigError{Key: "upstream", Err: err}
	}
	if err := c.validateSecurity(); err != nil { // guard_config.go
		return err
	}
	if c.P2PEnabled {
		if err := c.P2P.Validate(); err != nil {
			return &ConfigError{Key: "p2p", Err: err}
		}
	}
	c.Store.Dir = c.storeDir()
	if err := c.Store.Validate(); err != nil {
		return &ConfigError{Key: "store", Err: err}
	}
	return nil
}

func (c *Config) storeDir() string { return c.DataDir }
