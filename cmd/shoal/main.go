// Command shoal is the node-local, P2P-assisted registry mirror: `shoal daemon` runs it, the
// other commands talk to a running daemon or print its configuration.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/shoal-mirror/shoal/daemon"
)

// version is stamped at build time: -ldflags "-X main.version=v0.1.0".
var version = "dev"

func main() {
	unsetEmptyEnv(os.Environ())
	app := &cli.App{
		Name:    "shoal",
		Usage:   "node-local, P2P-assisted container registry mirror",
		Version: version,
		Commands: []*cli.Command{
			withSecurityFlags(daemonCommand()), // security.go
			setupCommand(), healthcheckCommand(),
			{
				Name:  "config",
				Usage: "configuration helpers",
				Subcommands: []*cli.Command{{
					Name:  "default",
					Usage: "print the embedded default configuration (a starting point for --config)",
					Action: func(c *cli.Context) error {
						_, err := os.Stdout.Write(daemon.DefaultsYAML())
						return err
					},
				}},
			},
		},
		Flags:                clientFlags(), // admin_cli.go: --admin, --json for the operator commands
		EnableBashCompletion: true,
		// An unknown command is a usage error (2); urfave/cli would exit 3, which means "daemon
		// not reachable" for the operator commands.
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(os.Stderr, "shoal: no such command %q (see shoal --help)\n", name)
			os.Exit(exitUsage)
		},
		// Exit codes are handled below, once, so that every failure is one line on stderr.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	ops := append(operatorCommands(), withClientFlags(doctorCommand())) // admin_*.go, doctor.go
	app.Commands = append(app.Commands, ops...)
	if err := app.Run(hoistFlags(ops, os.Args)); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			if msg := ec.Error(); msg != "" {
				fmt.Fprintln(os.Stderr, "shoal:", msg)
			}
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "shoal:", err)
		os.Exit(1)
	}
}

func env(name string) []string { return []string{"SHOAL_" + name} }

// unsetEmptyEnv makes an empty (or blank) SHOAL_* variable mean "not set". urfave/cli counts it
// as set, so SHOAL_HTPASSWD= or SHOAL_ALLOW_REPO= left empty in a manifest template would
// override the config file with nothing: authentication or an allow list gone without a word.
func unsetEmptyEnv(environ []string) {
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "SHOAL_") && strings.TrimSpace(v) == "" {
			os.Unsetenv(k)
		}
	}
}

func daemonCommand() *cli.Command {
	return &cli.Command{
		Name:  "daemon",
		Usage: "run the mirror (flags > SHOAL_* environment > --config file > built-in defaults)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", EnvVars: env("CONFIG"), Usage: "YAML configuration `FILE`"},
			&cli.StringFlag{Name: "listen", EnvVars: env("LISTEN"), Usage: "mirror API address (default 127.0.0.1:5000)"},
			&cli.StringFlag{Name: "data-dir", EnvVars: env("DATA_DIR"), Usage: "state directory (default /var/lib/shoal)"},
			&cli.StringSliceFlag{Name: "registry", EnvVars: env("REGISTRY"), Usage: "upstream endpoint for a registry, `HOST=URL` (repeatable)"},
			&cli.StringFlag{Name: "default-registry", EnvVars: env("DEFAULT_REGISTRY"), Usage: "registry for requests that name none (default docker.io)"},
			&cli.DurationFlag{Name: "tag-ttl", EnvVars: env("TAG_TTL"), Usage: "how long a tag is served without asking the upstream (default 30s)"},
			&cli.StringFlag{Name: "docker-config", EnvVars: env("DOCKER_CONFIG"), Usage: "read upstream credentials from this Docker config.json"},
			&cli.BoolFlag{Name: "only-configured-registries", EnvVars: env("ONLY_CONFIGURED_REGISTRIES"), Usage: "refuse registries not named in the configuration"},
			&cli.StringFlag{Name: "store-max-size", EnvVars: env("STORE_MAX_SIZE"), Usage: "content budget, e.g. 50GiB (default: half of the free space plus what the store holds)"},
			&cli.StringFlag{Name: "store-max-blob-size", EnvVars: env("STORE_MAX_BLOB_SIZE"), Usage: "largest blob a download may grow to, e.g. 10GiB (default: the content budget)"},
			&cli.StringFlag{Name: "store-min-free", EnvVars: env("STORE_MIN_FREE"), Usage: "free space to keep on the filesystem, SIZE or PERCENT (default 10%)"},
			&cli.DurationFlag{Name: "store-ttl", EnvVars: env("STORE_TTL"), Usage: "evict content not read for this long, 0 = never (default 720h)"},
			&cli.DurationFlag{Name: "store-gc-interval", EnvVars: env("STORE_GC_INTERVAL"), Usage: "how often the TTL sweep runs (default 1h)"},
			&cli.BoolFlag{Name: "p2p", EnvVars: env("P2P"), Usage: "join the P2P swarm; --p2p=false for a purely local mirror (default true)"},
			&cli.StringSliceFlag{Name: "p2p-listen", EnvVars: env("P2P_LISTEN"), Usage: "libp2p listen `MULTIADDR` (repeatable; default /ip4/0.0.0.0/tcp/5001 with a bootstrap source or mDNS, none without)"},
			&cli.StringSliceFlag{Name: "bootstrap", EnvVars: env("BOOTSTRAP"), Usage: "peer to join through, full `MULTIADDR` with /p2p/ID (repeatable)"},
			&cli.StringFlag{Name: "bootstrap-dns", EnvVars: env("BOOTSTRAP_DNS"), Usage: "DNS `NAME[:PORT]` whose addresses are peers (Kubernetes headless Service)"},
			&cli.BoolFlag{Name: "mdns", EnvVars: env("MDNS"), Usage: "discover peers with multicast DNS on the local link (default false)"},
			&cli.StringFlag{Name: "swarm-key", EnvVars: env("SWARM_KEY"), Usage: "libp2p private-network key `FILE`: only nodes with the same key can join"},
			&cli.DurationFlag{Name: "p2p-lookup-timeout", EnvVars: env("P2P_LOOKUP_TIMEOUT"), Usage: "budget for finding a peer before going upstream (default 300ms)"},
			&cli.DurationFlag{Name: "p2p-designated-timeout", EnvVars: env("P2P_DESIGNATED_TIMEOUT"), Usage: "wait this long for the swarm's designated fetcher before going upstream (default 500ms)"},
			&cli.IntFlag{Name: "local-replicas", EnvVars: env("LOCAL_REPLICAS"), Usage: "nodes holding an image pushed to the local namespace before the push answers, this one included (default 2; fewer when the swarm is smaller)"},
			&cli.IntFlag{Name: "p2p-max-uploads-per-blob", EnvVars: env("P2P_MAX_UPLOADS_PER_BLOB"), Usage: "peers streaming one blob from this node at once; more are redirected to them (0 = no limit, default 4)"},
			&cli.BoolFlag{Name: "p2p-share-private", EnvVars: env("P2P_SHARE_PRIVATE"), Usage: "share content from repositories that needed credentials (default false)"},
			&cli.DurationFlag{Name: "p2p-verify-max-wait", EnvVars: env("P2P_VERIFY_MAX_WAIT"), Usage: "with --p2p-verify-before-serving, a client waiting this long for peer bytes gets them as they arrive (never the last byte unverified); 0 = no limit (default 30s)"},
			&cli.BoolFlag{Name: "p2p-verify-before-serving", EnvVars: env("P2P_VERIFY_BEFORE_SERVING"), Usage: "hold bytes from peers back from clients until the blob verified; =false streams them (faster rollouts, a lying peer cuts downloads) (default true)"},
			&cli.StringFlag{Name: "log-format", EnvVars: env("LOG_FORMAT"), Usage: "text or json (default text)"},
			&cli.StringFlag{Name: "log-level", EnvVars: env("LOG_LEVEL"), Usage: "debug, info, warn or error (default info)"},
			&cli.StringFlag{Name: "admin-listen", EnvVars: env("ADMIN_LISTEN"), Usage: "admin API `ADDR`: unix:/path, HOST:PORT or off (default unix:<data-dir>/admin.sock)"},
			&cli.StringFlag{Name: "metrics-listen", EnvVars: env("METRICS_LISTEN"), Usage: "Prometheus /metrics, /healthz, /readyz on `HOST:PORT`, or off (default 127.0.0.1:9095)"},
			&cli.StringFlag{Name: "doctor-cri-endpoint", EnvVars: env("DOCTOR_CRI_ENDPOINT"), Usage: "repeat `shoal doctor`'s CRI check through this `SOCKET` (unix:///run/containerd/containerd.sock) and export shoal_doctor_in_path (default off: the socket is root-equivalent)"},
			&cli.DurationFlag{Name: "doctor-interval", EnvVars: env("DOCTOR_INTERVAL"), Usage: "time between the daemon's doctor checks (default 5m)"},
		},
		Action: runDaemon,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return cli.Exit("daemon: "+err.Error(), 2)
		},
	}
}

// loadConfig applies the precedence: defaults, then the file, then env and flags (urfave/cli
// reports both as set; a flag wins over its env variable).
func loadConfig(c *cli.Context) (daemon.Config, error) {
	cfg := daemon.DefaultConfig()
	if p := c.String("config"); p != "" {
		if err := cfg.LoadFile(p); err != nil {
			return cfg, err
		}
	}
	str := func(flag string, dst *string) {
		if c.IsSet(flag) {
			*dst = c.String(flag)
		}
	}
	str("listen", &cfg.Listen)
	str("data-dir", &cfg.DataDir)
	str("default-registry", &cfg.DefaultRegistry)
	str("docker-config", &cfg.Upstream.DockerConfig)
	str("store-min-free", &cfg.Store.MinFree)
	str("log-format", &cfg.LogFormat)
	str("log-level", &cfg.LogLevel)
	str("admin-listen", &cfg.AdminListen)
	str("metrics-listen", &cfg.MetricsListen)
	str("doctor-cri-endpoint", &cfg.Doctor.CRIEndpoint)
	if c.IsSet("doctor-interval") {
		cfg.Doctor.Interval = c.Duration("doctor-interval")
	}
	cfg.Version = version
	if c.IsSet("tag-ttl") {
		cfg.TagTTL = c.Duration("tag-ttl")
	}
	if c.IsSet("only-configured-registries") {
		cfg.Upstream.OnlyConfigured = c.Bool("only-configured-registries")
	}
	if c.IsSet("store-ttl") {
		cfg.Store.TTL = c.Duration("store-ttl")
	}
	if c.IsSet("store-gc-interval") {
		cfg.Store.GCInterval = c.Duration("store-gc-interval")
	}
	if c.IsSet("store-max-size") {
		if err := cfg.SetStoreMaxSize(c.String("store-max-size")); err != nil {
			return cfg, &daemon.ConfigError{Key: "--store-max-size", Err: err}
		}
	}
	if c.IsSet("store-max-blob-size") {
		if err := cfg.SetStoreMaxBlobSize(c.String("store-max-blob-size")); err != nil {
			return cfg, &daemon.ConfigError{Key: "--store-max-blob-size", Err: err}
		}
	}
	if c.IsSet("p2p") {
		cfg.P2PEnabled = c.Bool("p2p")
	}
	if c.IsSet("p2p-listen") {
		cfg.P2P.Listen = c.StringSlice("p2p-listen")
	}
	if c.IsSet("bootstrap") {
		cfg.P2P.Bootstrap = c.StringSlice("bootstrap")
	}
	str("bootstrap-dns", &cfg.P2P.BootstrapDNS)
	str("swarm-key", &cfg.P2P.SwarmKeyFile)
	if c.IsSet("mdns") {
		cfg.P2P.MDNS = c.Bool("mdns")
	}
	if c.IsSet("p2p-lookup-timeout") {
		cfg.P2P.LookupTimeout = c.Duration("p2p-lookup-timeout")
	}
	if c.IsSet("p2p-designated-timeout") {
		cfg.P2P.DesignatedTimeout = c.Duration("p2p-designated-timeout")
	}
	if c.IsSet("local-replicas") {
		cfg.Push.LocalReplicas = c.Int("local-replicas")
	}
	if c.IsSet("p2p-max-uploads-per-blob") {
		cfg.P2P.MaxUploadsPerBlob = c.Int("p2p-max-uploads-per-blob")
	}
	if c.IsSet("p2p-share-private") {
		cfg.P2PSharePrivate = c.Bool("p2p-share-private")
	}
	if c.IsSet("p2p-verify-before-serving") {
		cfg.P2PVerifyBeforeServing = c.Bool("p2p-verify-before-serving")
	}
	if c.IsSet("p2p-verify-max-wait") {
		cfg.P2PVerifyMaxWait = c.Duration("p2p-verify-max-wait")
	}
	for _, v := range c.StringSlice("registry") {
		if err := cfg.SetRegistryFlag(v); err != nil {
			return cfg, err
		}
	}
	if err := applySecurityFlags(c, &cfg); err != nil { // security.go
		return cfg, err
	}
	return cfg, cfg.Validate()
}

func newLogger(format, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(strings.ToUpper(level)))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func runDaemon(c *cli.Context) error {
	cfg, err := loadConfig(c)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	log := newLogger(cfg.LogFormat, cfg.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := daemon.New(ctx, cfg, log)
	if err != nil {
		var ce *daemon.ConfigError
		if errors.As(err, &ce) {
			return cli.Exit(err.Error(), 2)
		}
		return cli.Exit(err.Error(), 1)
	}
	reloadOnHangup(ctx, c, d, log) // security.go: SIGHUP reloads the reloadable settings
	if err := d.Run(ctx); err != nil {
		return cli.Exit(err.Error(), 1)
	}
	return nil
}
