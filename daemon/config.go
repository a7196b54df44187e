package daemon

import (
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/shoal-mirror/shoal/files"
	"github.com/shoal-mirror/shoal/internal/guard"
	"github.com/shoal-mirror/shoal/internal/oci"
	"github.com/shoal-mirror/shoal/internal/settings"
	"github.com/shoal-mirror/shoal/p2p"
	"github.com/shoal-mirror/shoal/push"
	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// DefaultsYAML returns the built-in configuration as `shoal config default` prints it, made
// from the settings table.
func DefaultsYAML() []byte { return table.DefaultsYAML() }

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
	// Guard is the mirror listener's access controls and limits (package guard).
	Guard guard.Config
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
	// endpoint, HOST:PORT or "off". See internal/admin.
	AdminListen   string
	MetricsListen string
	// Doctor is the periodic canary pull through CRI (doctor.go); off by default.
	Doctor DoctorConfig
	// ShutdownTimeout bounds each of the two waits on stop: for requests in progress, then
	// for downloads that outlive their clients.
	ShutdownTimeout time.Duration
	// Files is the Hugging Face and GitHub file endpoints (files_config.go, docs/files.md).
	Files files.Config
	// Console is the web console and its search (console_config.go).
	Console ConsoleConfig
	// Push is the cluster-local namespace clients push to (push_config.go, package push).
	Push push.Config
	// Version is what the admin API and metrics report; main sets it from its build stamp.
	Version string

	// explicit holds the keys a file, variable or flag gave (not the defaults); dataDirWhy
	// says why data_dir is not the default one (datadir.go).
	explicit   map[string]bool
	dataDirWhy string
}

// table is every configuration key, declared once. The YAML file's decoding, the embedded
// defaults (`shoal config default`), the CLI flags and their SHOAL_* variables, the reload
// rules and the reference table in docs/configuration.md are all made from it (the machinery:
// internal/settings).
//
// Adding a setting: one entry here and its field in Config above (this file), its use, its
// test; then `SHOAL_WRITE_DOCS=1 go test ./daemon -run TestDocsTable` rewrites the reference
// in docs/configuration.md and the `config` part of the Helm chart's values.schema.json (the
// chart's values.yaml lists no setting it does not itself need). The flag is the key with "."
// and "_" turned into "-" (and "security." dropped) unless flag names another; the variable is
// SHOAL_ and the flag in capitals.
var table = settings.NewTable([]Setting{
	{Key: "listen", Default: "127.0.0.1:5000", Arg: "ADDR", Help: "mirror API address",
		Ptr: func(c *Config) any { return &c.Listen }},
	{Key: "data_dir", Default: "/var/lib/shoal", Arg: "DIR", Help: "store and state; when the default is not writable for the user running shoal, `$XDG_STATE_HOME/shoal` (else `~/.local/state/shoal`)",
		Ptr: func(c *Config) any { return &c.DataDir }},
	{Key: "default_registry", Default: "docker.io", Arg: "HOST", Help: "registry for requests that name none",
		Ptr: func(c *Config) any { return &c.DefaultRegistry }},
	{Key: "tag_ttl", Default: "30s", Help: "how long a tag → digest mapping is used without an upstream `HEAD`; `0s` = always ask",
		Ptr: func(c *Config) any { return &c.TagTTL }},
	{Key: "log_format", Default: "text", Help: "`text` or `json`",
		Ptr: func(c *Config) any { return &c.LogFormat }},
	{Key: "log_level", Default: "info", Help: "`debug`, `info`, `warn`, `error`",
		Ptr: func(c *Config) any { return &c.LogLevel }},
	{Key: "shutdown_timeout", Default: "30s", Help: "on SIGTERM, how long to wait for requests in progress, then as long again for downloads that outlive their clients, before the store closes (Kubernetes kills a pod 30 s after SIGTERM by default: keep 2 × this under terminationGracePeriodSeconds)",
		Ptr: func(c *Config) any { return &c.ShutdownTimeout }},
	{Key: "admin_listen", Default: `""`, Arg: "ADDR", Help: "admin API: `unix:/path` (mode 0660), loopback `HOST:PORT`, or `off`; `\"\"` = `unix:<data_dir>/admin.sock`",
		Ptr: func(c *Config) any { return &c.AdminListen }},
	{Key: "metrics_listen", Default: "127.0.0.1:9095", Arg: "HOST:PORT", Help: "Prometheus `/metrics`, `/healthz`, `/readyz`; `off` disables. If the *default* port is taken the daemon runs without it and logs a warning; an address you set must be free",
		Ptr: func(c *Config) any { return &c.MetricsListen }},
	{Key: "registries", Default: "{docker.io: {url: https://registry-1.docker.io}}", Flag: "registry", Arg: "HOST=URL", Reload: true,
		Help: "per registry HOST: `url` (unnamed hosts use `https://HOST`; plain `http://` only when named), `username`, `password` / `password_file` (never logged; the file is read at start), `write_through` (accept pushes and forward them, docs/push.md); the flag and variable set `url` only (repeatable, comma-separated)",
		Ptr:  func(c *Config) any { return &c.Upstream.Registries }},
	{Key: "docker_config", Default: `""`, Arg: "FILE", Reload: true, Help: "also read credentials from a Docker `config.json` (`auths`)",
		Ptr: func(c *Config) any { return &c.Upstream.DockerConfig }},

	{Key: "upstream.only_configured", Default: "false", Flag: "only-configured-registries", Help: "refuse registries that `registries` does not name (`404 NAME_UNKNOWN`)",
		Ptr: func(c *Config) any { return &c.Upstream.OnlyConfigured }},
	{Key: "upstream.timeout", Default: "30s", Help: "upstream response-header timeout",
		Ptr: func(c *Config) any { return &c.Upstream.Timeout }},
	{Key: "upstream.retries", Default: "3", Help: "retries (with back-off) of idempotent upstream requests",
		Ptr: func(c *Config) any { return &c.Upstream.Retries }},
	{Key: "upstream.proxy", Default: `""`, Arg: "URL", Help: "send upstream requests through an `http://`, `https://`, `socks5://` or `socks5h://` proxy; `none` = always direct, ignoring the environment; `\"\"` = `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`",
		Ptr: func(c *Config) any { return &c.Upstream.Proxy }},

	{Key: "p2p.enabled", Default: "true", Flag: "p2p", Help: "join the swarm; `--p2p=false` makes a purely local mirror",
		Ptr: func(c *Config) any { return &c.P2PEnabled }},
	{Key: "p2p.share_private", Default: "false", Help: "also share content from repositories that needed credentials",
		Ptr: func(c *Config) any { return &c.P2PSharePrivate }},
	{Key: "p2p.verify_before_serving", Default: "true", Help: "hold bytes from peers back from this node's clients until the whole blob verified; `false` streams them as they arrive (faster rollouts; a lying peer cuts those downloads, see docs/peers.md)",
		Ptr: func(c *Config) any { return &c.P2PVerifyBeforeServing }},
	{Key: "p2p.verify_max_wait", Default: "30s", Help: "with `verify_before_serving`, a client that got no byte for this long gets the peer's bytes as they arrive (never the last one before the check; a lying peer cuts it), so that a big blob from a slow peer does not trip the client's no-progress timeout; `0` = hold for as long as it takes",
		Ptr: func(c *Config) any { return &c.P2PVerifyMaxWait }},
	{Key: "p2p.listen", Default: "[]", Arg: "MULTIADDR", Help: "libp2p listen addresses (TCP); `[]` = `/ip4/0.0.0.0/tcp/5001` with a bootstrap source or mDNS, none without (a node with no `bootstrap`, `bootstrap_dns` or `mdns` listens only where this says)",
		Ptr: func(c *Config) any { return &c.P2P.Listen }},
	{Key: "p2p.bootstrap", Default: "[]", Flag: "bootstrap", Arg: "MULTIADDR", Help: "peers to join through, `/ip4/10.0.0.5/tcp/5001/p2p/12D3…`",
		Ptr: func(c *Config) any { return &c.P2P.Bootstrap }},
	{Key: "p2p.bootstrap_dns", Default: `""`, Flag: "bootstrap-dns", Arg: "NAME[:PORT]", Help: "a DNS name whose A/AAAA records are peers (a Kubernetes headless Service); peer IDs are learnt from the handshake",
		Ptr: func(c *Config) any { return &c.P2P.BootstrapDNS }},
	{Key: "p2p.bootstrap_sample", Default: "8", Help: "bootstrap sources (`bootstrap` peers and `bootstrap_dns` addresses, picked at random) a node connects to when it joins; the DHT finds the rest. Once in, it tops up to this many when its routing table or connections fall below it, and probes one random `bootstrap_dns` address a minute",
		Ptr: func(c *Config) any { return &c.P2P.BootstrapSample }},
	{Key: "p2p.mdns", Default: "false", Flag: "mdns", Help: "multicast DNS discovery on a plain LAN",
		Ptr: func(c *Config) any { return &c.P2P.MDNS }},
	{Key: "p2p.swarm_key_file", Default: `""`, Flag: "swarm-key", Arg: "FILE", Help: "libp2p private-network key: only nodes with the same key can connect",
		Ptr: func(c *Config) any { return &c.P2P.SwarmKeyFile }},
	{Key: "p2p.lookup_timeout", Default: "300ms", Help: "budget for finding a provider before going to the upstream",
		Ptr: func(c *Config) any { return &c.P2P.LookupTimeout }},
	{Key: "p2p.provide_timeout", Default: "2s", Help: "deadline for announcing content to the DHT",
		Ptr: func(c *Config) any { return &c.P2P.ProvideTimeout }},
	{Key: "p2p.stall_timeout", Default: "5s", Help: "a transfer with no byte for this long moves to the next source",
		Ptr: func(c *Config) any { return &c.P2P.StallTimeout }},
	{Key: "p2p.record_ttl", Default: "30m", Help: "provider-record validity (re-provided every half)",
		Ptr: func(c *Config) any { return &c.P2P.RecordTTL }},
	{Key: "p2p.ban_duration", Default: "10m", Help: "how long a peer that sent wrong bytes is banned",
		Ptr: func(c *Config) any { return &c.P2P.BanDuration }},
	{Key: "p2p.designated_timeout", Default: "500ms", Help: "how long to wait for the swarm's designated fetcher to accept a request before going to the upstream directly (once it accepted, its upstream may take up to `stall_timeout` to start)",
		Ptr: func(c *Config) any { return &c.P2P.DesignatedTimeout }},
	{Key: "p2p.max_uploads_per_blob", Default: "4", Help: "peers streaming one blob from this node at once; more are redirected to those peers, which follow the download (`0` = no limit)",
		Ptr: func(c *Config) any { return &c.P2P.MaxUploadsPerBlob }},
	{Key: "p2p.direct_port", Default: "0", Help: "TCP port, on the IP of each `listen` address, where peers fetch blob bytes on a TLS connection of their own (libp2p's TLS handshake, no muxer; with a swarm key one cipher instead of two; see docs/peers.md); `0` = the libp2p port + 1 (5002 by default), `-1` = off (blobs go over libp2p streams)",
		Ptr: func(c *Config) any { return &c.P2P.DirectPort }},

	{Key: "store.max_size", Default: `""`, Arg: "SIZE", Help: "content budget (`50GiB`, `512MiB`); least recently used blobs are evicted first; `\"\"` = half of (free space + what the store holds), computed at start",
		Ptr: func(c *Config) any { return &c.Store.MaxSize }, Parse: parseSize(true)},
	{Key: "store.max_blob_size", Default: `""`, Arg: "SIZE", Help: "the largest blob a download may grow to, whatever its source says (see docs/security.md, *Upstream egress*); `\"\"` = `store.max_size` (the budget, as computed at start)",
		Ptr: func(c *Config) any { return &c.StoreMaxBlobSize }, Parse: parseSize(false)},
	{Key: "store.min_free", Default: "10%", Arg: "SIZE|PCT", Help: "free space kept on the filesystem, on top of the index's headroom (16 MiB + the index's size); the kubelet starts evicting pods below 10% free",
		Ptr: func(c *Config) any { return &c.Store.MinFree }},
	{Key: "store.ttl", Default: "720h", Help: "evict content not read for this long; `0` = never",
		Ptr: func(c *Config) any { return &c.Store.TTL }},
	{Key: "store.gc_interval", Default: "1h", Help: "how often the TTL sweep runs",
		Ptr: func(c *Config) any { return &c.Store.GCInterval }},

	{Key: "security.allow_cidr", Default: "[]", Arg: "CIDR", Reload: true, Help: "client networks served (others: `403 DENIED`); a bare address is one host",
		Ptr: func(c *Config) any { return &c.Guard.AllowCIDR }},
	{Key: "security.deny_cidr", Default: "[]", Arg: "CIDR", Reload: true, Help: "client networks refused (`403 DENIED`); wins over `allow_cidr`",
		Ptr: func(c *Config) any { return &c.Guard.DenyCIDR }},
	{Key: "security.allow_repo", Default: "[]", Arg: "PATTERN", Reload: true, Help: "`REGISTRY/REPO` patterns served (`docker.io/library/*`, `ghcr.io/myorg/*`; `*` spans `/`, `?` one character; printable ASCII only); others: `403 DENIED`",
		Ptr: func(c *Config) any { return &c.Guard.AllowRepo }},
	{Key: "security.deny_repo", Default: "[]", Arg: "PATTERN", Reload: true, Help: "`REGISTRY/REPO` patterns refused (`403 DENIED`); wins over `allow_repo`",
		Ptr: func(c *Config) any { return &c.Guard.DenyRepo }},
	{Key: "security.rate_limit", Default: "0", Reload: true, Help: "requests per second per client (IPv4 address, IPv6 /64); over it: `429 TOOMANYREQUESTS` with `Retry-After`; `0` = off",
		Ptr: func(c *Config) any { return &c.Guard.RateLimit }},
	{Key: "security.rate_burst", Default: "0", Reload: true, Help: "burst of the rate limit; `0` = max(10, 2 × `rate_limit`)",
		Ptr: func(c *Config) any { return &c.Guard.RateBurst }},
	{Key: "security.max_concurrent_per_client", Default: "128", Reload: true, Help: "requests in progress per client under `/v2/<name>`; over it: `429` with `Retry-After: 1`; `0` = no bound",
		Ptr: func(c *Config) any { return &c.Guard.MaxConcurrent }},
	{Key: "security.max_conns_per_client", Default: "512", Reload: true, Help: "open mirror connections per client (IPv4 address, IPv6 /64); one more is closed as soon as accepted, unanswered (all of a node's own clients are 127.0.0.1); `0` = no bound",
		Ptr: func(c *Config) any { return &c.Guard.MaxConnsPerClient }},
	{Key: "security.htpasswd", Default: `""`, Arg: "FILE", Reload: true, Help: "bcrypt htpasswd (`htpasswd -B`); clients outside `auth_exempt_cidr` must log in (HTTP Basic, `401 UNAUTHORIZED`)",
		Ptr: func(c *Config) any { return &c.Guard.Htpasswd }},
	{Key: "security.auth_exempt_cidr", Default: `[127.0.0.0/8, "::1/128"]`, Arg: "CIDR", Reload: true, Help: "clients that need no login",
		Ptr: func(c *Config) any { return &c.Guard.AuthExemptCIDR }},
	{Key: "security.tls_cert", Default: `""`, Arg: "FILE", Reload: true, Help: "serve the mirror API over TLS (1.2+) with this certificate (PEM, chain); the pair is re-read on SIGHUP",
		Ptr: func(c *Config) any { return &c.Guard.TLSCert }},
	{Key: "security.tls_key", Default: `""`, Arg: "FILE", Reload: true, Help: "private key for `tls_cert`",
		Ptr: func(c *Config) any { return &c.Guard.TLSKey }},
	{Key: "security.allow_insecure_listen", Default: "false", Reload: true, Help: "silence the warning for a non-loopback `listen` without TLS",
		Ptr: func(c *Config) any { return &c.Guard.AllowInsecureListen }},
	{Key: "security.read_header_timeout", Default: "10s", Help: "header read (slowloris)",
		Ptr: func(c *Config) any { return &c.Guard.ReadHeaderTimeout }},
	{Key: "security.idle_timeout", Default: "2m", Help: "keep-alive idle",
		Ptr: func(c *Config) any { return &c.Guard.IdleTimeout }},
	{Key: "security.write_timeout", Default: "2m", Reload: true, Help: "the longest one write to a client may block (a client that stopped reading)",
		Ptr: func(c *Config) any { return &c.Guard.WriteTimeout }},
	{Key: "security.request_timeout", Default: "0s", Reload: true, Help: "whole request; `0` = no bound",
		Ptr: func(c *Config) any { return &c.Guard.RequestTimeout }},
	{Key: "security.max_header_bytes", Default: "32KiB", Arg: "SIZE", Help: "request header block limit (`431`); at most `1GiB`",
		Ptr: func(c *Config) any { return &c.Guard.MaxHeaderBytes }, Parse: parseHeaderBytes},
	{Key: "security.max_uri_length", Default: "4096", Reload: true, Help: "request target limit (`414`)",
		Ptr: func(c *Config) any { return &c.Guard.MaxURILength }},

	{Key: "doctor.cri_endpoint", Default: `""`, Arg: "SOCKET", Help: "repeat `shoal doctor`'s CRI check through this socket (`unix:///run/containerd/containerd.sock`) and export `shoal_doctor_in_path`; `\"\"` = off (opt in: the socket is root-equivalent)",
		Ptr: func(c *Config) any { return &c.Doctor.CRIEndpoint }},
	{Key: "doctor.interval", Default: "5m", Help: "time between those checks (at least `1s`)",
		Ptr: func(c *Config) any { return &c.Doctor.Interval }},
	{Key: "doctor.containerd_config", Default: `""`, Arg: "FILE", Help: "containerd's `config.toml` (as the daemon sees it), to explain a bypass in the log",
		Ptr: func(c *Config) any { return &c.Doctor.ContainerdConfig }},

	{Key: "files.enabled", Default: "true", Help: "Hugging Face (`HF_ENDPOINT=http://127.0.0.1:5000/hf`) and GitHub release files (`http://127.0.0.1:5000/https://github.com/…`) through the store and swarm (docs/files.md)",
		Ptr: func(c *Config) any { return &c.Files.Enabled }},
	{Key: "files.hosts", Default: "{}", Flag: "file-host", Arg: "HOST=URL", Help: "adds to the built-in file hosts (huggingface.co and its CDNs, github.com and its download hosts): `HOST: URL`; `-` removes one (repeatable flag)",
		Ptr: func(c *Config) any { return &c.Files.Hosts }},
	{Key: "files.hf_token", Default: `""`, Help: "Hugging Face token for gated and private repos (never logged, sent to the Hub only)",
		Ptr: func(c *Config) any { return &c.Files.HFToken }},
	{Key: "files.hf_token_file", Default: `""`, Flag: "hf-token-file", Arg: "FILE", Help: "read `hf_token` from this file",
		Ptr: func(c *Config) any { return &c.Files.HFTokenFile }},
	{Key: "files.github_token", Default: `""`, Help: "GitHub token (API rate limits, private releases; never logged, sent to GitHub only)",
		Ptr: func(c *Config) any { return &c.Files.GitHubToken }},
	{Key: "files.github_token_file", Default: `""`, Flag: "github-token-file", Arg: "FILE", Help: "read `github_token` from this file",
		Ptr: func(c *Config) any { return &c.Files.GitHubTokenFile }},
	{Key: "files.meta_ttl", Default: "5m", Help: "API answers and branch → commit are reused this long; commit-pinned answers are kept; stale when the upstream fails",
		Ptr: func(c *Config) any { return &c.Files.MetaTTL }},
	{Key: "files.max_local_size", Default: "4GiB", Arg: "SIZE", Help: "largest file kept on the node only (no sha256 digest to share it by)",
		Ptr: func(c *Config) any { return &c.Files.MaxLocalSize }, Parse: store.ParseSize},
	{Key: "files.local_max_total", Default: "20GiB", Arg: "SIZE", Help: "all such node-only files together; the least recently served go first",
		Ptr: func(c *Config) any { return &c.Files.LocalMaxTotal }, Parse: store.ParseSize},

	{Key: "console.listen", Default: "127.0.0.1:9097", Arg: "HOST:PORT", Help: "the web console (docs/console.md), or `off`; off loopback it needs `console.htpasswd`. If the *default* port is taken the daemon runs without it and says so",
		Ptr: func(c *Config) any { return &c.Console.Listen }},
	{Key: "console.htpasswd", Default: `""`, Arg: "FILE", Help: "bcrypt htpasswd (`htpasswd -B`): console users must log in",
		Ptr: func(c *Config) any { return &c.Console.Htpasswd }},
	{Key: "console.hub_search_url", Default: "https://index.docker.io", Arg: "URL", Help: "Docker Hub's search API (`GET /v1/search?q=TERM`)",
		Ptr: func(c *Config) any { return &c.Console.HubSearchURL }},
	{Key: "console.search_cache_ttl", Default: "5m", Help: "a search's answer is reused this long",
		Ptr: func(c *Config) any { return &c.Console.SearchCacheTTL }},
	{Key: "console.search_per_minute", Default: "30", Help: "searches per client per minute (burst 10); `0` = no limit",
		Ptr: func(c *Config) any { return &c.Console.SearchPerMinute }},

	{Key: "push.namespace", Default: "shoal.local", Arg: "NAME", Help: "the cluster-local namespace clients push to: `HOST:5000/shoal.local/REPO:TAG` (docs/push.md); `\"\"` = pushes off (`405`)",
		Ptr: func(c *Config) any { return &c.Push.Namespace }},
	{Key: "push.upload_timeout", Default: "15m", Help: "an upload idle this long is dropped with its temporary data",
		Ptr: func(c *Config) any { return &c.Push.UploadTimeout }},
	{Key: "push.allow_delete", Default: "true", Help: "`DELETE` of pushed tags (cluster-wide), manifests and blobs",
		Ptr: func(c *Config) any { return &c.Push.AllowDelete }},
	{Key: "push.tag_ttl", Default: "1s", Help: "a node answers a pushed tag from its own record this long, then asks the swarm",
		Ptr: func(c *Config) any { return &c.Push.TagTTL }},
	{Key: "push.local_replicas", Default: "2", Flag: "local-replicas", Help: "nodes holding a pushed image, this one included, before the push answers (fewer when the swarm is smaller)",
		Ptr: func(c *Config) any { return &c.Push.LocalReplicas }},
	{Key: "push.repair_interval", Default: "10s", Help: "how often holders restore missing copies",
		Ptr: func(c *Config) any { return &c.Push.RepairInterval }},
	{Key: "push.trusted_cidr", Default: `[127.0.0.0/8, "::1/128"]`, Arg: "CIDR", Help: "clients that may push without a login",
		Ptr: func(c *Config) any { return &c.Push.TrustedCIDR }},
	{Key: "push.users", Default: "[]", Arg: "USER=PATTERN", Help: "htpasswd users and the repositories they may push to",
		Ptr: func(c *Config) any { return &c.Push.Users }},
}, "security.", func(c *Config, key string) { // flags drop "security."
	if c.explicit == nil {
		c.explicit = map[string]bool{}
	}
	c.explicit[key] = true
})

// Setting is one entry of the settings table; Kind the type of its value as the CLI takes it.
type (
	Setting = settings.Setting[Config]
	Kind    = settings.Kind
)

// The kinds of settings (internal/settings).
const (
	KindString     = settings.KindString
	KindBool       = settings.KindBool
	KindInt        = settings.KindInt
	KindFloat      = settings.KindFloat
	KindDuration   = settings.KindDuration
	KindList       = settings.KindList
	KindRegistries = settings.KindRegistries
	KindHosts      = settings.KindHosts
)

// ConfigError names the key that is wrong; the CLI prints it on one line and exits with 2.
type ConfigError = settings.ConfigError

// Settings returns the table, each entry with its flag and variable filled in.
func Settings() []Setting { return table.All() }

// SettingsMarkdown is the reference table of docs/configuration.md.
func SettingsMarkdown() string { return table.Markdown() }

// ConfigSchema is the JSON schema (draft-07) of the configuration file, made from the table
// (the Helm chart's values.schema.json holds it as its `config` value's schema).
func ConfigSchema() []byte { return table.Schema() }

func (c *Config) applyYAML(b []byte, name string) error { return table.ApplyYAML(c, b, name) }

func settingByKey(key string) (Setting, bool) { return table.Lookup(key) }

// restartNeeded lists the settings that differ but cannot change while running.
func restartNeeded(old, cur Config) []string { return table.RestartNeeded(&old, &cur) }

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

// DefaultConfig returns the built-in defaults of the settings table. It panics only if the
// table's defaults are broken, which the tests catch.
func DefaultConfig() Config {
	c := Config{Upstream: upstream.DefaultConfig(), Store: store.DefaultConfig(), P2P: p2p.DefaultConfig(), Guard: guard.DefaultConfig(), Files: files.DefaultConfig(), Push: push.DefaultConfig()}
	if err := c.applyYAML(table.DefaultsYAML(), "settings table"); err != nil {
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

// SetRegistry merges rc into the configuration for host: fields given in rc win, the rest stay.
func (c *Config) SetRegistry(host string, rc upstream.RegistryConfig) {
	settings.MergeRegistry(&c.Upstream.Registries, host, rc)
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
	if err := c.Files.Validate(); err != nil {
		return &ConfigError{Key: "files", Err: err}
	}
	if err := c.Console.validate(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return &ConfigError{Key: "listen", Err: fmt.Errorf("%q: %w", c.Listen, err)}
	}
	if c.DataDir == "" {
		return &ConfigError{Key: "data_dir", Err: errors.New("must not be empty")}
	}
	if !oci.ValidHost(c.DefaultRegistry) {
		return &ConfigError{Key: "default_registry", Err: fmt.Errorf("%q is not a registry host", c.DefaultRegistry)}
	}
	if c.ShutdownTimeout < 0 {
		return &ConfigError{Key: "shutdown_timeout", Err: errors.New("must not be negative")}
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
	if err := c.validateOps(); err != nil { // admin_wiring.go
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
		if !oci.ValidHost(host) {
			return &ConfigError{Key: fmt.Sprintf("registries.%q", host), Err: errors.New("not a registry host (want HOST or HOST:PORT)")}
		}
	}
	if err := c.Upstream.Validate(); err != nil {
		return &ConfigError{Key: "upstream", Err: err}
	}
	if err := c.validateSecurity(); err != nil { // security.go
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
