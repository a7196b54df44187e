package daemon

// Reload applies the reloadable parts of cfg to the running daemon (SIGHUP): the guard's
// address and repository lists, rate and concurrency limits, htpasswd users and TLS
// certificate, and the upstream registries' endpoints and credentials. Settings that need a
// restart are named in a warning and keep their running values. On error nothing changes.
func (d *Daemon) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	// The guard's new policy is compiled before it replaces the old one, so a bad file leaves
	// the daemon as it was.
	if err := d.guard.Reload(cfg.Guard); err != nil {
		return guardError(err)
	}
	if err := d.up.Reload(cfg.Upstream); err != nil {
		return &ConfigError{Key: "registries", Err: err}
	}
	if keys := restartNeeded(d.cfg, cfg); len(keys) > 0 {
		d.log.Warn("configuration reloaded, but these settings only change with a restart", "keys", keys)
	} else {
		d.log.Info("configuration reloaded")
	}
	return nil
}
