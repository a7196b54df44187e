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
