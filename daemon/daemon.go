package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/shoal-mirror/shoal/store"
	"github.com/shoal-mirror/shoal/upstream"
)

// Daemon is one running shoal: its store, its upstream client and its listeners.
type Daemon struct {
	cfg   Config
	log   *slog.Logger
	store *store.Store
	up    *upstream.Client
	srv   *http.Server
	ln    net.Listener
}

// New builds the daemon from a validated configuration and opens its listener, so that a port
// already in use is reported before Run.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	up, err := upstream.New(cfg.Upstream, log.With("component", "upstream"))
	if err != nil {
		return nil, &ConfigError{Key: "registries", Err: err}
	}
	st, err := store.Open(ctx, cfg.Store, log.With("component", "store"))
	if err != nil {
		return nil, fmt.Errorf("open store in %s: %w", cfg.DataDir, err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("mirror listener: %w", err)
	}
	mlog := log.With("component", "mirror")
	m := &mirror{
		defaultRegistry: canonicalRegistry(cfg.DefaultRegistry),
		tagTTL:          cfg.TagTTL,
		store:           st,
		up:              up,
		spool:           newSpool(st, mlog),
		log:             mlog,
		staleLog:        logEvery{every: time.Minute},
	}
	d := &Daemon{cfg: cfg, log: log, store: st, up: up, ln: ln}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ready\n")) })
	mux.Handle("/", m) // everything else gets an OCI error from the mirror
	d.srv = &http.Server{
		Handler:           accessLog(mlog, routeRoot(mux, m)),
		ReadHeaderTimeout: 30 * time.Second,
		MaxHeaderBytes:    64 << 10,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(mlog.Handler(), slog.LevelDebug),
	}
	return d, nil
}

// routeRoot sends /v2 and everything below it to the mirror without ServeMux's path
// cleaning (which would turn "/v2/../x" into a redirect instead of a NAME_INVALID).
func routeRoot(mux *http.ServeMux, m http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2" || len(r.URL.Path) >= 4 && r.URL.Path[:4] == "/v2/" {
			m.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// Addr is the mirror API's listening address.
func (d *Daemon) Addr() string { return d.ln.Addr().String() }

// Run serves until ctx is cancelled, then shuts down gracefully.
func (d *Daemon) Run(ctx context.Context) error {
	d.log.Info("shoal mirror listening", "addr", d.Addr(), "data_dir", d.cfg.DataDir, "default_registry", d.cfg.DefaultRegistry)
	errc := make(chan error, 1)
	go func() { errc <- d.srv.Serve(d.ln) }()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		err = d.srv.Shutdown(sctx)
		cancel()
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if cerr := d.store.Close(); cerr != nil && err == nil {
		err = cerr
	}
	d.log.Info("shoal stopped")
	return err
}
