package daemon

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/push"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

//go:embed defaults.yaml
var defaultsYAML []byte

// DefaultsYAML returns the embedded default configuration, as `shoal config default` prints it.
func DefaultsYAML() []byte { return bytes.Clone(defaultsYAML) }

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
	// Push is the cluster-local namespace clients push to (push_config.go, package push).
	Push push.Config
	// Version is what the admin API and metrics report; main sets it from its build stamp.
	Version string
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

// fileConfig is the YAML file's shape. Sizes stay strings here because they are written like
// "50GiB" or "10%".
type fileConfig struct {
	Listen          *string                            `yaml:"listen"`
	DataDir         *string                            `yaml:"data_dir"`
	DefaultRegistry *string                            `yaml:"default_registry"`
	TagTTL          *time.Duration                     `yaml:"tag_ttl"`
	LogFormat       *string                            `yaml:"log_format"`
	LogLevel        *string                            `yaml:"log_level"`
	AdminListen     *string                            `yaml:"admin_listen"`
	MetricsListen   *string                            `yaml:"metrics_listen"`
	Registries      map[string]upstream.RegistryConfig `yaml:"registries"`
	DockerConfig    *string                            `yaml:"docker_config"`
	Upstream        struct {
		OnlyConfigured *bool          `yaml:"only_configured"`
		Timeout        *time.Duration `yaml:"timeout"`
		Retries        *int           `yaml:"retries"`
		Proxy          *string        `yaml:"proxy"`
	} `yaml:"upstream"`
	P2P struct {
		Enabled        *bool          `yaml:"enabled"`
		SharePrivate   *bool          `yaml:"share_private"`
		VerifyBefore   *bool          `yaml:"verify_before_serving"`
		VerifyMaxWait  *time.Duration `yaml:"verify_max_wait"`
		Listen         []string       `yaml:"listen"`
		Bootstrap      []string       `yaml:"bootstrap"`
		BootstrapDNS   *string        `yaml:"bootstrap_dns"`
		BootstrapN     *int           `yaml:"bootstrap_sample"`
		MDNS           *bool          `yaml:"mdns"`
		SwarmKeyFile   *string        `yaml:"swarm_key_file"`
		LookupTimeout  *time.Duration `yaml:"lookup_timeout"`
		ProvideTimeout *time.Duration `yaml:"provide_timeout"`
		StallTimeout   *time.Duration `yaml:"stall_timeout"`
		RecordTTL      *time.Duration `yaml:"record_ttl"`
		BanDuration    *time.Duration `yaml:"ban_duration"`
		Designated     *time.Duration `yaml:"designated_timeout"`
		MaxUploads     *int           `yaml:"max_uploads_per_blob"`
	} `yaml:"p2p"`
	Store struct {
		MaxSize    *string        `yaml:"max_size"`
		MaxBlob    *string        `yaml:"max_blob_size"`
		MinFree    *string        `yaml:"min_free"`
		TTL        *time.Duration `yaml:"ttl"`
		GCInterval *time.Duration `yaml:"gc_interval"`
	} `yaml:"store"`
	Security securityFile `yaml:"security"` // guard_config.go
	Doctor   doctorFile   `yaml:"doctor"`   // doctor.go
	Push     pushFile     `yaml:"push"`     // push_config.go
}

// DefaultConfig returns the embedded defaults. It panics only if the embedded file is broken,
// which the tests catch.
func DefaultConfig() Config {
	c := Config{Upstream: upstream.DefaultConfig(), Store: store.DefaultConfig(), P2P: p2p.DefaultConfig(), Guard: DefaultGuardConfig(), Push: push.DefaultConfig()}
	if err := c.apply(defaultsYAML, "defaults.yaml"); err != nil {
		panic("embedded defaults.yaml: " + err.Error())
	}
	return c
}

// LoadFile overlays the YAML file at path on c. Unknown keys are errors.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return &ConfigError{Key: "--config", Err: err}
	}
	return c.apply(b, path)
}

var (
	yamlUnknown = regexp.MustCompile(`line (\d+): field (\S+) not found in type \S+`)
	yamlAtLine  = regexp.MustCompile(`line (\d+): (.*)`)
)

// explainYAML turns a yaml.v3 error into one line that names the key: "line 3: unknown key
// \"foo\"", "line 4: tag_ttl: cannot unmarshal !!str `soon` into time.Duration".
func explainYAML(b []byte, err error) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return strings.ReplaceAll(strings.TrimPrefix(err.Error(), "yaml: "), "\n", "; ")
	}
	var root yaml.Node
	_ = yaml.Unmarshal(b, &root)
	var out []string
	for _, e := range te.Errors {
		if m := yamlUnknown.FindStringSubmatch(e); m != nil {
			out = append(out, fmt.Sprintf("line %s: unknown key %q", m[1], m[2]))
			continue
		}
		if m := yamlAtLine.FindStringSubmatch(e); m != nil {
			line, _ := strconv.Atoi(m[1])
			if key := keyAtLine(&root, line, ""); key != "" {
				out = append(out, fmt.Sprintf("line %d: %s: %s", line, key, m[2]))
				continue
			}
		}
		out = append(out, e)
	}
	return strings.Join(out, "; ")
}

// keyAtLine finds the dotted path of the mapping key whose value sits on the given line.
func keyAtLine(n *yaml.Node, line int, prefix string) string {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			if k := keyAtLine(c, line, prefix); k != "" {
				return k
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			path := k.Value
			if prefix != "" {
				path = prefix + "." + k.Value
			}
			if v.Line == line && v.Kind == yaml.ScalarNode {
				return path
			}
			if r := keyAtLine(v, line, path); r != "" {
				return r
			}
		}
	}
	return ""
}

func (c *Config) apply(b []byte, name string) error {
	var f fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return &ConfigError{Key: name, Err: errors.New(explainYAML(b, err))}
	}
	set(&c.Listen, f.Listen)
	set(&c.DataDir, f.DataDir)
	set(&c.DefaultRegistry, f.DefaultRegistry)
	set(&c.TagTTL, f.TagTTL)
	set(&c.LogFormat, f.LogFormat)
	set(&c.LogLevel, f.LogLevel)
	set(&c.AdminListen, f.AdminListen)
	set(&c.MetricsListen, f.MetricsListen)
	set(&c.Upstream.DockerConfig, f.DockerConfig)
	set(&c.Upstream.OnlyConfigured, f.Upstream.OnlyConfigured)
	set(&c.Upstream.Timeout, f.Upstream.Timeout)
	set(&c.Upstream.Retries, f.Upstream.Retries)
	set(&c.Upstream.Proxy, f.Upstream.Proxy)
	f.Doctor.apply(&c.Doctor)
	f.Push.apply(&c.Push)
	if err := f.Security.apply(&c.Guard); err != nil {
		return err
	}
	for host, rc := range f.Registries {
		c.SetRegistry(host, rc)
	}
	if f.Store.MaxSize != nil {
		if err := c.SetStoreMaxSize(*f.Store.MaxSize); err != nil {
			return &ConfigError{Key: "store.max_size", Err: err}
		}
	}
	if f.Store.MaxBlob != nil {
		if err := c.SetStoreMaxBlobSize(*f.Store.MaxBlob); err != nil {
			return &ConfigError{Key: "store.max_blob_size", Err: err}
		}
	}
	set(&c.P2PEnabled, f.P2P.Enabled)
	set(&c.P2PSharePrivate, f.P2P.SharePrivate)
	set(&c.P2PVerifyBeforeServing, f.P2P.VerifyBefore)
	set(&c.P2PVerifyMaxWait, f.P2P.VerifyMaxWait)
	if f.P2P.Listen != nil {
		c.P2P.Listen = f.P2P.Listen
	}
	if f.P2P.Bootstrap != nil {
		c.P2P.Bootstrap = f.P2P.Bootstrap
	}
	set(&c.P2P.BootstrapDNS, f.P2P.BootstrapDNS)
	set(&c.P2P.BootstrapSample, f.P2P.BootstrapN)
	set(&c.P2P.MDNS, f.P2P.MDNS)
	set(&c.P2P.SwarmKeyFile, f.P2P.SwarmKeyFile)
	set(&c.P2P.LookupTimeout, f.P2P.LookupTimeout)
	set(&c.P2P.ProvideTimeout, f.P2P.ProvideTimeout)
	set(&c.P2P.StallTimeout, f.P2P.StallTimeout)
	set(&c.P2P.RecordTTL, f.P2P.RecordTTL)
	set(&c.P2P.BanDuration, f.P2P.BanDuration)
	set(&c.P2P.DesignatedTimeout, f.P2P.Designated)
	set(&c.P2P.MaxUploadsPerBlob, f.P2P.MaxUploads)
	set(&c.Store.MinFree, f.Store.MinFree)
	set(&c.Store.TTL, f.Store.TTL)
	set(&c.Store.GCInterval, f.Store.GCInterval)
	return nil
}

func set[T any](dst *T, src *T) {
	if src != nil {
		*dst = *src
	}
}

// SetRegistry merges rc into the configuration for host: fields given in rc win, the rest stay.
func (c *Config) SetRegistry(host string, rc upstream.RegistryConfig) {
	if c.Upstream.Registries == nil {
		c.Upstream.Registries = map[string]upstream.RegistryConfig{}
	}
	cur := c.Upstream.Registries[host]
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
	c.Upstream.Registries[host] = cur
}

// SetRegistryFlag parses a --registry HOST=URL value.
func (c *Config) SetRegistryFlag(v string) error {
	host, u, ok := strings.Cut(v, "=")
	if !ok || host == "" || u == "" {
		return &ConfigError{Key: "--registry", Err: fmt.Errorf("%q: want HOST=URL, e.g. docker.io=https://registry-1.docker.io", v)}
	}
	c.SetRegistry(host, upstream.RegistryConfig{URL: u})
	return nil
}

// SetStoreMaxSize parses a size such as "50GiB"; "" keeps the store's default share of the disk.
func (c *Config) SetStoreMaxSize(v string) error {
	if v == "" {
		c.Store.MaxSize = 0
		return nil
	}
	n, err := store.ParseSize(v)
	if err != nil {
		return err
	}
	c.Store.MaxSize = n
	return nil
}

// SetStoreMaxBlobSize parses a size such as "10GiB"; "" bounds blobs by the store's budget.
func (c *Config) SetStoreMaxBlobSize(v string) error {
	if v == "" {
		c.StoreMaxBlobSize = 0
		return nil
	}
	n, err := store.ParseSize(v)
	if err != nil {
		return err
	}
	if n == 0 {
		return errors.New(`0: want a size such as 10GiB, or "" for the store's budget`)
	}
	c.StoreMaxBlobSize = n
	return nil
}

// Validate checks the whole configuration and names the first bad key.
func (c *Config) Validate() error {
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
	if err := c.validatePush(); err != nil { // push_config.go
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
