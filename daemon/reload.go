package daemon

import (
	"reflect"
)

// Reload applies the reloadable parts of cfg to the running daemon (SIGHUP): the guard's
// address and repository lists, rate and concurrency limits, htpasswd users and TLS
// certificate, and the upstream registries' endpoints and credentials. Settings that need a
// restart are named in a warning and keep their running values. On error nothing changes.
func (d *Daemon) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	// Compile both before swapping either, so a bad file leaves the daemon as it was.
	if _, err := compileGuard(cfg.Guard, d.log); err != nil {
		return err
	}
	if err := d.guard.reload(cfg.Guard); err != nil {
		return err
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

// restartNeeded lists the settings that differ between the running and the new
// configuration but cannot change while running.
func restartNeeded(old, cur Config) []string {
	var keys []string
	for _, c := range []struct {
		key  string
		a, b any
	}{
		{"listen", old.Listen, cur.Listen},
		{"data_dir", old.DataDir, cur.DataDir},
		{"default_registry", old.DefaultRegistry, cur.DefaultRegistry},
		{"tag_ttl", old.TagTTL, cur.TagTTL},
		{"log_format", old.LogFormat, cur.LogFormat},
		{"log_level", old.LogLevel, cur.LogLevel},
		{"upstream.timeout", old.Upstream.Timeout, cur.Upstream.Timeout},
		{"upstream.retries", old.Upstream.Retries, cur.Upstream.Retries},
		{"upstream.proxy", old.Upstream.Proxy, cur.Upstream.Proxy},
		{"upstream.only_configured", old.Upstream.OnlyConfigured, cur.Upstream.OnlyConfigured},
		{"store", old.Store, cur.Store},
		{"store.max_blob_size", old.StoreMaxBlobSize, cur.StoreMaxBlobSize},
		{"p2p", old.P2P, cur.P2P},
		{"p2p.enabled", old.P2PEnabled, cur.P2PEnabled},
		{"security.read_header_timeout", old.Guard.ReadHeaderTimeout, cur.Guard.ReadHeaderTimeout},
		{"security.idle_timeout", old.Guard.IdleTimeout, cur.Guard.IdleTimeout},
		{"security.max_header_bytes", old.Guard.MaxHeaderBytes, cur.Guard.MaxHeaderBytes},
	} {
		if !reflect.DeepEqual(c.a, c.b) {
			keys = append(keys, c.key)
		}
	}
	return keys
}
