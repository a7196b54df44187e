package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/shoal-mirror/shoal/daemon"
)

// withSecurityFlags adds the mirror API's access-control flags and --upstream-proxy to the
// daemon command.
func withSecurityFlags(cmd *cli.Command) *cli.Command {
	cmd.Flags = append(cmd.Flags,
		&cli.StringSliceFlag{Name: "allow-cidr", EnvVars: env("ALLOW_CIDR"), Usage: "serve only clients in this `CIDR` (repeatable)"},
		&cli.StringSliceFlag{Name: "deny-cidr", EnvVars: env("DENY_CIDR"), Usage: "refuse clients in this `CIDR` (repeatable; wins over --allow-cidr)"},
		&cli.StringSliceFlag{Name: "allow-repo", EnvVars: env("ALLOW_REPO"), Usage: "serve only repositories matching `REGISTRY/REPO` patterns such as docker.io/library/* (repeatable)"},
		&cli.StringSliceFlag{Name: "deny-repo", EnvVars: env("DENY_REPO"), Usage: "refuse repositories matching `REGISTRY/REPO` patterns (repeatable; wins over --allow-repo)"},
		&cli.Float64Flag{Name: "rate-limit", EnvVars: env("RATE_LIMIT"), Usage: "requests per second per client address (IPv6: per /64); 0 = no limit"},
		&cli.IntFlag{Name: "rate-burst", EnvVars: env("RATE_BURST"), Usage: "burst of the per-client rate limit (default max(10, 2 x rate))"},
		&cli.StringFlag{Name: "htpasswd", EnvVars: env("HTPASSWD"), Usage: "bcrypt htpasswd `FILE`: clients other than loopback must log in"},
		&cli.StringFlag{Name: "tls-cert", EnvVars: env("TLS_CERT"), Usage: "serve the mirror API over TLS with this certificate `FILE` (PEM, chain)"},
		&cli.StringFlag{Name: "tls-key", EnvVars: env("TLS_KEY"), Usage: "private key `FILE` for --tls-cert"},
		&cli.BoolFlag{Name: "allow-insecure-listen", EnvVars: env("ALLOW_INSECURE_LISTEN"), Usage: "do not warn about a non-loopback listener without TLS"},
		&cli.StringFlag{Name: "upstream-proxy", EnvVars: env("UPSTREAM_PROXY"), Usage: "send upstream requests through this `URL` (http://, https://, socks5://); none = ignore HTTPS_PROXY/HTTP_PROXY"},
	)
	return cmd
}

// applySecurityFlags overlays the flags withSecurityFlags added.
func applySecurityFlags(c *cli.Context, cfg *daemon.Config) error {
	g := &cfg.Guard
	for flag, dst := range map[string]*[]string{"allow-cidr": &g.AllowCIDR, "deny-cidr": &g.DenyCIDR, "allow-repo": &g.AllowRepo, "deny-repo": &g.DenyRepo} {
		if c.IsSet(flag) {
			*dst = c.StringSlice(flag)
		}
	}
	for flag, dst := range map[string]*string{"htpasswd": &g.Htpasswd, "tls-cert": &g.TLSCert, "tls-key": &g.TLSKey, "upstream-proxy": &cfg.Upstream.Proxy} {
		if c.IsSet(flag) {
			*dst = c.String(flag)
		}
	}
	if c.IsSet("rate-limit") {
		g.RateLimit = c.Float64("rate-limit")
	}
	if c.IsSet("rate-burst") {
		g.RateBurst = c.Int("rate-burst")
	}
	if c.IsSet("allow-insecure-listen") {
		g.AllowInsecureListen = c.Bool("allow-insecure-listen")
	}
	return nil
}

// reloadOnHangup re-reads the configuration (file and flags) on SIGHUP and applies what can
// change while running; a configuration that does not validate is logged and ignored.
func reloadOnHangup(ctx context.Context, c *cli.Context, d *daemon.Daemon, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			cfg, err := loadConfig(c)
			if err == nil {
				err = d.Reload(cfg)
			}
			if err != nil {
				log.Error("reload refused; the running configuration stays", "err", err)
			}
		}
	}()
}
