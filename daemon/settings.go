package daemon

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// settings is every configuration key, declared once. The YAML file's decoding, the embedded
// defaults (`shoal config default`), the CLI flags and their SHOAL_* variables, the reload
// rules and the reference table in docs/configuration.md are all made from it.
//
// Adding a setting: one entry here (key, default, help, where it lands in Config), its use,
// its test. The flag is the key with "." and "_" turned into "-" (and "security." dropped)
// unless flag names another; the variable is SHOAL_ and the flag in capitals.
var settings = []Setting{
	{Key: "listen", Default: "127.0.0.1:5000", Arg: "ADDR", Help: "mirror API address",
		ptr: func(c *Config) any { return &c.Listen }},
	{Key: "data_dir", Default: "/var/lib/shoal", Arg: "DIR", Help: "store and state; when the default is not writable for the user running shoal, `$XDG_STATE_HOME/shoal` (else `~/.local/state/shoal`)",
		ptr: func(c *Config) any { return &c.DataDir }},
	{Key: "default_registry", Default: "docker.io", Arg: "HOST", Help: "registry for requests that name none",
		ptr: func(c *Config) any { return &c.DefaultRegistry }},
	{Key: "tag_ttl", Default: "30s", Help: "how long a tag → digest mapping is used without an upstream `HEAD`; `0s` = always ask",
		ptr: func(c *Config) any { return &c.TagTTL }},
	{Key: "log_format", Default: "text", Help: "`text` or `json`",
		ptr: func(c *Config) any { return &c.LogFormat }},
	{Key: "log_level", Default: "info", Help: "`debug`, `info`, `warn`, `error`",
		ptr: func(c *Config) any { return &c.LogLevel }},
	{Key: "admin_listen", Default: `""`, Arg: "ADDR", Help: "admin API: `unix:/path` (mode 0660), loopback `HOST:PORT`, or `off`; `\"\"` = `unix:<data_dir>/admin.sock`",
		ptr: func(c *Config) any { return &c.AdminListen }},
	{Key: "metrics_listen", Default: "127.0.0.1:9095", Arg: "HOST:PORT", Help: "Prometheus `/metrics`, `/healthz`, `/readyz`; `off` disables. If the *default* port is taken the daemon runs without it and logs a warning; an address you set must be free",
		ptr: func(c *Config) any { return &c.MetricsListen }},
	{Key: "registries", Default: "{docker.io: {url: https://registry-1.docker.io}}", Flag: "registry", Arg: "HOST=URL", Reload: true,
		Help: "per registry HOST: `url` (unnamed hosts use `https://HOST`; plain `http://` only when named), `username`, `password` / `password_file` (never logged; the file is read at start); the flag and variable set `url` only (repeatable, comma-separated)",
		ptr:  func(c *Config) any { return &c.Upstream.Registries }},
	{Key: "docker_config", Default: `""`, Arg: "FILE", Reload: true, Help: "also read credentials from a Docker `config.json` (`auths`)",
		ptr: func(c *Config) any { return &c.Upstream.DockerConfig }},

	{Key: "upstream.only_configured", Default: "false", Flag: "only-configured-registries", Help: "refuse registries that `registries` does not name (`404 NAME_UNKNOWN`)",
		ptr: func(c *Config) any { return &c.Upstream.OnlyConfigured }},
	{Key: "upstream.timeout", Default: "30s", Help: "upstream response-header timeout",
		ptr: func(c *Config) any { return &c.Upstream.Timeout }},
	{Key: "upstream.retries", Default: "3", Help: "retries (with back-off) of idempotent upstream requests",
		ptr: func(c *Config) any { return &c.Upstream.Retries }},
	{Key: "upstream.proxy", Default: `""`, Arg: "URL", Help: "send upstream requests through an `http://`, `https://`, `socks5://` or `socks5h://` proxy; `none` = always direct, ignoring the environment; `\"\"` = `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`",
		ptr: func(c *Config) any { return &c.Upstream.Proxy }},

	{Key: "p2p.enabled", Default: "true", Flag: "p2p", Help: "join the swarm; `--p2p=false` makes a purely local mirror",
		ptr: func(c *Config) any { return &c.P2PEnabled }},
	{Key: "p2p.share_private", Default: "false", Help: "also share content from repositories that needed credentials",
		ptr: func(c *Config) any { return &c.P2PSharePrivate }},
	{Key: "p2p.verify_before_serving", Default: "true", Help: "hold bytes from peers back from this node's clients until the whole blob verified; `false` streams them as they arrive (faster rollouts; a lying peer cuts those downloads, see docs/peers.md)",
		ptr: func(c *Config) any { return &c.P2PVerifyBeforeServing }},
	{Key: "p2p.verify_max_wait", Default: "30s", Help: "with `verify_before_serving`, a client that got no byte for this long gets the peer's bytes as they arrive (never the last one before the check; a lying peer cuts it), so that a big blob from a slow peer does not trip the client's no-progress timeout; `0` = hold for as long as it takes",
		ptr: func(c *Config) any { return &c.P2PVerifyMaxWait }},
	{Key: "p2p.listen", Default: "[]", Arg: "MULTIADDR", Help: "libp2p listen addresses (TCP); `[]` = `/ip4/0.0.0.0/tcp/5001` with a bootstrap source or mDNS, none without (a node with no `bootstrap`, `bootstrap_dns` or `mdns` listens only where this says)",
		ptr: func(c *Config) any { return &c.P2P.Listen }},
	{Key: "p2p.bootstrap", Default: "[]", Flag: "bootstrap", Arg: "MULTIADDR", Help: "peers to join through, `/ip4/10.0.0.5/tcp/5001/p2p/12D3…`",
		ptr: func(c *Config) any { return &c.P2P.Bootstrap }},
	{Key: "p2p.bootstrap_dns", Default: `""`, Flag: "bootstrap-dns", Arg: "NAME[:PORT]", Help: "a DNS name whose A/AAAA records are peers (a Kubernetes headless Service); peer IDs are learnt from the handshake",
		ptr: func(c *Config) any { return &c.P2P.BootstrapDNS }},
	{Key: "p2p.bootstrap_sample", Default: "8", Help: "bootstrap sources (`bootstrap` peers and `bootstrap_dns` addresses, picked at random) a node connects to when it joins; the DHT finds the rest. Once in, it tops up to this many when its routing table or connections fall below it, and probes one random `bootstrap_dns` address a minute",
		ptr: func(c *Config) any { return &c.P2P.BootstrapSample }},
	{Key: "p2p.mdns", Default: "false", Flag: "mdns", Help: "multicast DNS discovery on a plain LAN",
		ptr: func(c *Config) any { return &c.P2P.MDNS }},
	{Key: "p2p.swarm_key_file", Default: `""`, Flag: "swarm-key", Arg: "FILE", Help: "libp2p private-network key: only nodes with the same key can connect",
		ptr: func(c *Config) any { return &c.P2P.SwarmKeyFile }},
	{Key: "p2p.lookup_timeout", Default: "300ms", Help: "budget for finding a provider before going to the upstream",
		ptr: func(c *Config) any { return &c.P2P.LookupTimeout }},
	{Key: "p2p.provide_timeout", Default: "2s", Help: "deadline for announcing content to the DHT",
		ptr: func(c *Config) any { return &c.P2P.ProvideTimeout }},
	{Key: "p2p.stall_timeout", Default: "5s", Help: "a transfer with no byte for this long moves to the next source",
		ptr: func(c *Config) any { return &c.P2P.StallTimeout }},
	{Key: "p2p.record_ttl", Default: "30m", Help: "provider-record validity (re-provided every half)",
		ptr: func(c *Config) any { return &c.P2P.RecordTTL }},
	{Key: "p2p.ban_duration", Default: "10m", Help: "how long a peer that sent wrong bytes is banned",
		ptr: func(c *Config) any { return &c.P2P.BanDuration }},
	{Key: "p2p.designated_timeout", Default: "500ms", Help: "how long to wait for the swarm's designated fetcher to accept a request before going to the upstream directly (once it accepted, its upstream may take up to `stall_timeout` to start)",
		ptr: func(c *Config) any { return &c.P2P.DesignatedTimeout }},
	{Key: "p2p.max_uploads_per_blob", Default: "4", Help: "peers streaming one blob from this node at once; more are redirected to those peers, which follow the download (`0` = no limit)",
		ptr: func(c *Config) any { return &c.P2P.MaxUploadsPerBlob }},

	{Key: "store.max_size", Default: `""`, Arg: "SIZE", Help: "content budget (`50GiB`, `512MiB`); least recently used blobs are evicted first; `\"\"` = half of (free space + what the store holds), computed at start",
		ptr: func(c *Config) any { return &c.Store.MaxSize }, parse: parseSize(true)},
	{Key: "store.max_blob_size", Default: `""`, Arg: "SIZE", Help: "the largest blob a download may grow to, whatever its source says (see docs/security.md, *Upstream egress*); `\"\"` = `store.max_size` (the budget, as computed at start)",
		ptr: func(c *Config) any { return &c.StoreMaxBlobSize }, parse: parseSize(false)},
	{Key: "store.min_free", Default: "10%", Arg: "SIZE|PCT", Help: "free space kept on the filesystem, on top of the index's headroom (16 MiB + the index's size); the kubelet starts evicting pods below 10% free",
		ptr: func(c *Config) any { return &c.Store.MinFree }},
	{Key: "store.ttl", Default: "720h", Help: "evict content not read for this long; `0` = never",
		ptr: func(c *Config) any { return &c.Store.TTL }},
	{Key: "store.gc_interval", Default: "1h", Help: "how often the TTL sweep runs",
		ptr: func(c *Config) any { return &c.Store.GCInterval }},

	{Key: "security.allow_cidr", Default: "[]", Arg: "CIDR", Reload: true, Help: "client networks served (others: `403 DENIED`); a bare address is one host",
		ptr: func(c *Config) any { return &c.Guard.AllowCIDR }},
	{Key: "security.deny_cidr", Default: "[]", Arg: "CIDR", Reload: true, Help: "client networks refused (`403 DENIED`); wins over `allow_cidr`",
		ptr: func(c *Config) any { return &c.Guard.DenyCIDR }},
	{Key: "security.allow_repo", Default: "[]", Arg: "PATTERN", Reload: true, Help: "`REGISTRY/REPO` patterns served (`docker.io/library/*`, `ghcr.io/myorg/*`; `*` spans `/`, `?` one character; printable ASCII only); others: `403 DENIED`",
		ptr: func(c *Config) any { return &c.Guard.AllowRepo }},
	{Key: "security.deny_repo", Default: "[]", Arg: "PATTERN", Reload: true, Help: "`REGISTRY/REPO` patterns refused (`403 DENIED`); wins over `allow_repo`",
		ptr: func(c *Config) any { return &c.Guard.DenyRepo }},
	{Key: "security.rate_limit", Default: "0", Reload: true, Help: "requests per second per client (IPv4 address, IPv6 /64); over it: `429 TOOMANYREQUESTS` with `Retry-After`; `0` = off",
		ptr: func(c *Config) any { return &c.Guard.RateLimit }},
	{Key: "security.rate_burst", Default: "0", Reload: true, Help: "burst of the rate limit; `0` = max(10, 2 × `rate_limit`)",
		ptr: func(c *Config) any { return &c.Guard.RateBurst }},
	{Key: "security.max_concurrent_per_client", Default: "128", Reload: true, Help: "requests in progress per client under `/v2/<name>`; over it: `429` with `Retry-After: 1`; `0` = no bound",
		ptr: func(c *Config) any { return &c.Guard.MaxConcurrent }},
	{Key: "security.max_conns_per_client", Default: "512", Reload: true, Help: "open mirror connections per client (IPv4 address, IPv6 /64); one more is closed as soon as accepted, unanswered (all of a node's own clients are 127.0.0.1); `0` = no bound",
		ptr: func(c *Config) any { return &c.Guard.MaxConnsPerClient }},
	{Key: "security.htpasswd", Default: `""`, Arg: "FILE", Reload: true, Help: "bcrypt htpasswd (`htpasswd -B`); clients outside `auth_exempt_cidr` must log in (HTTP Basic, `401 UNAUTHORIZED`)",
		ptr: func(c *Config) any { return &c.Guard.Htpasswd }},
	{Key: "security.auth_exempt_cidr", Default: `[127.0.0.0/8, "::1/128"]`, Arg: "CIDR", Reload: true, Help: "clients that need no login",
		ptr: func(c *Config) any { return &c.Guard.AuthExemptCIDR }},
	{Key: "security.tls_cert", Default: `""`, Arg: "FILE", Reload: true, Help: "serve the mirror API over TLS (1.2+) with this certificate (PEM, chain); the pair is re-read on SIGHUP",
		ptr: func(c *Config) any { return &c.Guard.TLSCert }},
	{Key: "security.tls_key", Default: `""`, Arg: "FILE", Reload: true, Help: "private key for `tls_cert`",
		ptr: func(c *Config) any { return &c.Guard.TLSKey }},
	{Key: "security.allow_insecure_listen", Default: "false", Reload: true, Help: "silence the warning for a non-loopback `listen` without TLS",
		ptr: func(c *Config) any { return &c.Guard.AllowInsecureListen }},
	{Key: "security.read_header_timeout", Default: "10s", Help: "header read (slowloris)",
		ptr: func(c *Config) any { return &c.Guard.ReadHeaderTimeout }},
	{Key: "security.idle_timeout", Default: "2m", Help: "keep-alive idle",
		ptr: func(c *Config) any { return &c.Guard.IdleTimeout }},
	{Key: "security.write_timeout", Default: "2m", Reload: true, Help: "the longest one write to a client may block (a client that stopped reading)",
		ptr: func(c *Config) any { return &c.Guard.WriteTimeout }},
	{Key: "security.request_timeout", Default: "0s", Reload: true, Help: "whole request; `0` = no bound",
		ptr: func(c *Config) any { return &c.Guard.RequestTimeout }},
	{Key: "security.max_header_bytes", Default: "32KiB", Arg: "SIZE", Help: "request header block limit (`431`); at most `1GiB`",
		ptr: func(c *Config) any { return &c.Guard.MaxHeaderBytes }, parse: parseHeaderBytes},
	{Key: "security.max_uri_length", Default: "4096", Reload: true, Help: "request target limit (`414`)",
		ptr: func(c *Config) any { return &c.Guard.MaxURILength }},

	{Key: "doctor.cri_endpoint", Default: `""`, Arg: "SOCKET", Help: "repeat `shoal doctor`'s CRI check through this socket (`unix:///run/containerd/containerd.sock`) and export `shoal_doctor_in_path`; `\"\"` = off (opt in: the socket is root-equivalent)",
		ptr: func(c *Config) any { return &c.Doctor.CRIEndpoint }},
	{Key: "doctor.interval", Default: "5m", Help: "time between those checks (at least `1s`)",
		ptr: func(c *Config) any { return &c.Doctor.Interval }},
	{Key: "doctor.containerd_config", Default: `""`, Arg: "FILE", Help: "containerd's `config.toml` (as the daemon sees it), to explain a bypass in the log",
		ptr: func(c *Config) any { return &c.Doctor.ContainerdConfig }},
}

// Setting is one configuration key: where it lives in the YAML file, on the command line and
// in the environment, its default and what it means.
type Setting struct {
	Key     string // YAML path, "p2p.lookup_timeout"
	Default string // YAML text of the default, `""` for an empty string
	Help    string // one sentence or a few; `code` in backticks
	Flag    string // CLI flag without "--"; "" derives it from Key
	Arg     string // the flag's argument in help, "FILE"; "" = by type
	Reload  bool   // SIGHUP applies it; otherwise a change waits for a restart
	ptr     func(*Config) any
	parse   func(string) (int64, error) // text form of a size held as a number
}

// Kind names the type of a setting's value, as the CLI needs it to build a flag.
type Kind int

// The kinds of settings.
const (
	KindString Kind = iota
	KindBool
	KindInt
	KindFloat
	KindDuration
	KindList       // []string: repeatable flag, comma-separated variable
	KindRegistries // registries: the flag takes HOST=URL
)

// Settings returns the table, each entry with its flag and variable filled in.
func Settings() []Setting { return slices.Clone(settings) }

func init() {
	for i := range settings {
		s := &settings[i]
		if s.Flag == "" {
			s.Flag = strings.NewReplacer(".", "-", "_", "-").Replace(strings.TrimPrefix(s.Key, "security."))
		}
	}
}

// Env is the setting's variable, SHOAL_ and the flag in capitals.
func (s Setting) Env() string {
	return "SHOAL_" + strings.ToUpper(strings.ReplaceAll(s.Flag, "-", "_"))
}

// Kind is the type of the setting's value as the CLI takes it (a size is a string).
func (s Setting) Kind() Kind {
	if s.parse != nil {
		return KindString
	}
	switch s.ptr(&Config{}).(type) {
	case *bool:
		return KindBool
	case *int:
		return KindInt
	case *float64:
		return KindFloat
	case *time.Duration:
		return KindDuration
	case *[]string:
		return KindList
	case *map[string]upstream.RegistryConfig:
		return KindRegistries
	}
	return KindString
}

// Set gives the setting the value v from a flag or variable: a string, bool, int, float64,
// time.Duration or []string as Kind says. The error names the flag.
func (s Setting) Set(c *Config, v any) error {
	err := s.set(c, v)
	if err != nil {
		return &ConfigError{Key: "--" + s.Flag, Err: err}
	}
	return nil
}

func (s Setting) set(c *Config, v any) error {
	c.given(s.Key)
	if s.parse != nil {
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("want a size, got %T", v)
		}
		n, err := s.parse(str)
		if err != nil {
			return err
		}
		reflect.ValueOf(s.ptr(c)).Elem().SetInt(n)
		return nil
	}
	if regs, ok := s.ptr(c).(*map[string]upstream.RegistryConfig); ok {
		list, _ := v.([]string)
		for _, hv := range list {
			host, u, ok := strings.Cut(hv, "=")
			if !ok || host == "" || u == "" {
				return fmt.Errorf("%q: want HOST=URL, e.g. docker.io=https://registry-1.docker.io", hv)
			}
			setRegistry(regs, host, upstream.RegistryConfig{URL: u})
		}
		return nil
	}
	dst := reflect.ValueOf(s.ptr(c)).Elem()
	val := reflect.ValueOf(v)
	if !val.Type().AssignableTo(dst.Type()) {
		return fmt.Errorf("want %s, got %T", dst.Type(), v)
	}
	dst.Set(val)
	return nil
}

// decode sets the setting from its YAML node. A null node (`key:` with nothing) keeps the
// value as it was.
func (s Setting) decode(c *Config, n *yaml.Node) error {
	if n.Tag == "!!null" {
		return nil
	}
	c.given(s.Key)
	if s.parse != nil {
		if n.Kind != yaml.ScalarNode {
			return fmt.Errorf("line %d: %s: want a size such as 10GiB", n.Line, s.Key)
		}
		v, err := s.parse(n.Value)
		if err != nil {
			return &ConfigError{Key: s.Key, Err: err}
		}
		reflect.ValueOf(s.ptr(c)).Elem().SetInt(v)
		return nil
	}
	if regs, ok := s.ptr(c).(*map[string]upstream.RegistryConfig); ok {
		var m map[string]upstream.RegistryConfig
		if err := n.Decode(&m); err != nil {
			return yamlError(s.Key, err)
		}
		for host, rc := range m {
			setRegistry(regs, host, rc)
		}
		return nil
	}
	// Decode into a fresh value so that a type error leaves the old one.
	dst := reflect.ValueOf(s.ptr(c)).Elem()
	fresh := reflect.New(dst.Type())
	if err := n.Decode(fresh.Interface()); err != nil {
		return yamlError(s.Key, err)
	}
	dst.Set(fresh.Elem())
	return nil
}

// yamlError turns a yaml.v3 error about one value into one line naming its key:
// "line 4: tag_ttl: cannot unmarshal !!str `soon` into time.Duration".
func yamlError(key string, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("%s: %s", key, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var out []string
	for _, e := range te.Errors {
		if m := yamlAtLine.FindStringSubmatch(e); m != nil {
			out = append(out, fmt.Sprintf("line %s: %s: %s", m[1], key, m[2]))
			continue
		}
		out = append(out, key+": "+e)
	}
	return errors.New(strings.Join(out, "; "))
}

// given records that a file, variable or flag set key.
func (c *Config) given(key string) {
	if c.explicit == nil {
		c.explicit = map[string]bool{}
	}
	c.explicit[key] = true
}

// value is the setting's current value in c, for comparing two configurations.
func (s Setting) value(c *Config) any { return reflect.ValueOf(s.ptr(c)).Elem().Interface() }

func parseSize(emptyIsZero bool) func(string) (int64, error) {
	return func(v string) (int64, error) {
		if v == "" {
			return 0, nil
		}
		n, err := store.ParseSize(v)
		if err != nil {
			return 0, err
		}
		if n == 0 && !emptyIsZero {
			return 0, errors.New(`0: want a size such as 10GiB, or "" for the store's budget`)
		}
		return n, nil
	}
}

func parseHeaderBytes(v string) (int64, error) {
	n, err := store.ParseSize(v)
	if err != nil {
		return 0, err
	}
	if n > 1<<30 {
		return 0, errors.New("must be at most 1GiB")
	}
	return n, nil
}

// applyYAML overlays the YAML document b on c. Unknown keys are errors naming their line.
func (c *Config) applyYAML(b []byte, name string) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return &ConfigError{Key: name, Err: errors.New(strings.ReplaceAll(strings.TrimPrefix(err.Error(), "yaml: "), "\n", "; "))}
	}
	if len(doc.Content) == 0 {
		return nil
	}
	if err := c.applyNode(doc.Content[0], ""); err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			return err
		}
		return &ConfigError{Key: name, Err: err}
	}
	return nil
}

func (c *Config) applyNode(n *yaml.Node, prefix string) error {
	if n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		where := prefix
		if where == "" {
			where = "the file"
		}
		return fmt.Errorf("line %d: %s: want a mapping of keys", n.Line, where)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		if prefix != "" {
			key = prefix + "." + k.Value
		}
		if s, ok := settingByKey(key); ok {
			if err := s.decode(c, v); err != nil {
				return err
			}
			continue
		}
		if isSection(key) {
			if err := c.applyNode(v, key); err != nil {
				return err
			}
			continue
		}
		if prefix != "" {
			return fmt.Errorf("line %d: %s: unknown key %q", k.Line, prefix, k.Value)
		}
		return fmt.Errorf("line %d: unknown key %q", k.Line, k.Value)
	}
	return nil
}

func settingByKey(key string) (Setting, bool) {
	for _, s := range settings {
		if s.Key == key {
			return s, true
		}
	}
	return Setting{}, false
}

func isSection(key string) bool {
	for _, s := range settings {
		if strings.HasPrefix(s.Key, key+".") {
			return true
		}
	}
	return false
}

// defaultsFromTable writes the table's defaults as the YAML file `shoal config default`
// prints, each key under its section with its help as a comment.
func defaultsFromTable() []byte {
	var b strings.Builder
	b.WriteString("# shoal's built-in configuration. `shoal config default` prints it; a --config file uses the\n")
	b.WriteString("# same keys and overrides these; SHOAL_* environment variables override the file; flags override all.\n")
	b.WriteString("# Every key: docs/configuration.md.\n")
	section := ""
	for _, s := range settings {
		sec, name, nested := strings.Cut(s.Key, ".")
		if !nested {
			sec, name = "", s.Key
		}
		if sec != section {
			section = sec
			if sec != "" {
				fmt.Fprintf(&b, "%s:\n", sec)
			}
		}
		indent := ""
		if sec != "" {
			indent = "  "
		}
		fmt.Fprintf(&b, "%s%s: %s\n", indent, name, s.Default)
	}
	return []byte(b.String())
}

// SettingsMarkdown is the reference table of docs/configuration.md.
func SettingsMarkdown() string {
	var b strings.Builder
	b.WriteString("| YAML key | flag | env | default | reload | meaning |\n|---|---|---|---|---|---|\n")
	for _, s := range settings {
		arg := s.Arg
		if arg == "" {
			arg = argByKind(s.Kind())
		}
		flag := "`--" + s.Flag
		if arg != "" {
			flag += " " + arg
		}
		flag += "`"
		if s.Kind() == KindList || s.Kind() == KindRegistries {
			flag += " (repeatable)"
		}
		reload := "restart"
		if s.Reload {
			reload = "SIGHUP"
		}
		fmt.Fprintf(&b, "| `%s` | %s | `%s` | `%s` | %s | %s |\n", s.Key, strings.ReplaceAll(flag, "|", `\|`), s.Env(),
			strings.ReplaceAll(s.Default, "|", `\|`), reload, strings.ReplaceAll(s.Help, "|", `\|`))
	}
	return b.String()
}

func argByKind(k Kind) string {
	switch k {
	case KindDuration:
		return "DURATION"
	case KindInt, KindFloat:
		return "N"
	}
	return ""
}

// restartNeeded lists the settings that differ between the running and the new
// configuration but cannot change while running.
func restartNeeded(old, cur Config) []string {
	var keys []string
	for _, s := range settings {
		if !s.Reload && !reflect.DeepEqual(s.value(&old), s.value(&cur)) {
			keys = append(keys, s.Key)
		}
	}
	return keys
}
