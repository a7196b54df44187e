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
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

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
			daemonCommand(),
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
	flags := []cli.Flag{&cli.StringFlag{Name: "config", EnvVars: env("CONFIG"), Usage: "YAML configuration `FILE` (keys: shoal config default, docs/configuration.md)"}}
	for _, s := range daemon.Settings() {
		flags = append(flags, settingFlag(s))
	}
	return &cli.Command{
		Name:   "daemon",
		Usage:  "run the mirror (flags > SHOAL_* environment > --config file > built-in defaults)",
		Flags:  flags,
		Action: runDaemon,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return cli.Exit("daemon: "+err.Error(), 2)
		},
	}
}

// settingFlag is the flag of one entry of the settings table, its default the table's.
func settingFlag(s daemon.Setting) cli.Flag {
	usage := strings.ReplaceAll(s.Help, "`", "")
	if s.Arg != "" {
		usage = "`" + s.Arg + "`: " + usage
	}
	envs := []string{s.Env()}
	// The default is shown as the table writes it (30m, not 30m0s), the same text as in
	// `shoal config default`; an empty one is not shown (the help says what it means).
	shown := s.Default
	if shown == `""` || shown == "[]" {
		shown = ""
	}
	var def any
	_ = yaml.Unmarshal([]byte(s.Default), &def)
	str, _ := def.(string)
	switch s.Kind() {
	case daemon.KindBool:
		b, _ := def.(bool)
		return &cli.BoolFlag{Name: s.Flag, EnvVars: envs, Usage: usage, Value: b, DefaultText: shown}
	case daemon.KindInt:
		n, _ := def.(int)
		return &cli.IntFlag{Name: s.Flag, EnvVars: envs, Usage: usage, Value: n, DefaultText: shown}
	case daemon.KindFloat:
		var f float64
		_ = yaml.Unmarshal([]byte(s.Default), &f)
		return &cli.Float64Flag{Name: s.Flag, EnvVars: envs, Usage: usage, Value: f, DefaultText: shown}
	case daemon.KindDuration:
		var d time.Duration
		_ = yaml.Unmarshal([]byte(s.Default), &d)
		return &cli.DurationFlag{Name: s.Flag, EnvVars: envs, Usage: usage, Value: d, DefaultText: shown}
	case daemon.KindList:
		var l []string
		_ = yaml.Unmarshal([]byte(s.Default), &l)
		f := &cli.StringSliceFlag{Name: s.Flag, EnvVars: envs, Usage: usage, DefaultText: shown}
		if len(l) > 0 {
			f.Value = cli.NewStringSlice(l...)
		}
		return f
	case daemon.KindHosts:
		return &cli.StringSliceFlag{Name: s.Flag, EnvVars: envs, Usage: usage}
	case daemon.KindRegistries:
		var m map[string]struct{ URL string }
		_ = yaml.Unmarshal([]byte(s.Default), &m)
		var d []string
		for h, r := range m {
			d = append(d, h+"="+r.URL)
		}
		return &cli.StringSliceFlag{Name: s.Flag, EnvVars: envs, Usage: usage, DefaultText: strings.Join(d, ", ")}
	}
	return &cli.StringFlag{Name: s.Flag, EnvVars: envs, Usage: usage, Value: str, DefaultText: shown}
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
	cfg.Version = version
	for _, s := range daemon.Settings() {
		if !c.IsSet(s.Flag) {
			continue
		}
		var v any
		switch s.Kind() {
		case daemon.KindBool:
			v = c.Bool(s.Flag)
		case daemon.KindInt:
			v = c.Int(s.Flag)
		case daemon.KindFloat:
			v = c.Float64(s.Flag)
		case daemon.KindDuration:
			v = c.Duration(s.Flag)
		case daemon.KindList, daemon.KindRegistries, daemon.KindHosts:
			v = c.StringSlice(s.Flag)
		default:
			v = c.String(s.Flag)
		}
		if err := s.Set(&cfg, v); err != nil {
			return cfg, err
		}
	}
	return cfg, cfg.Validate()
}

func newLogger(format, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(strings.ToUpper(level)))
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	routeLibp2pLogs(h) // libp2plog.go
	return slog.New(h)
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
