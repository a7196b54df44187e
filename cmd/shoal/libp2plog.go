package main

import (
	"context"
	"log/slog"

	"github.com/libp2p/go-libp2p/gologshim"
)

// routeLibp2pLogs sends go-libp2p's and kad-dht's loggers (gologshim, process-wide) through
// shoal's handler, tagged component=libp2p: without it they write their own format ("ts=…
// level=error") to stderr. Their lines below warn show only at log_level debug, and fx's
// lines (the dependency injection libp2p builds its host with, which logs a failed start
// three times at error) are debug: the error is shoal's to report, once.
func routeLibp2pLogs(h slog.Handler) {
	gologshim.SetDefaultHandler(&libp2pHandler{inner: h.WithAttrs([]slog.Attr{slog.String("component", "libp2p")})})
}

type libp2pHandler struct {
	inner slog.Handler
	fx    bool // a logger With("system", "fx")
}

func (h *libp2pHandler) level(ctx context.Context, l slog.Level) (slog.Level, bool) {
	if h.fx {
		l = slog.LevelDebug
	}
	if l < slog.LevelWarn && !h.inner.Enabled(ctx, slog.LevelDebug) {
		return l, false
	}
	return l, h.inner.Enabled(ctx, l)
}

func (h *libp2pHandler) Enabled(ctx context.Context, l slog.Level) bool {
	_, ok := h.level(ctx, l)
	return ok
}

func (h *libp2pHandler) Handle(ctx context.Context, r slog.Record) error {
	l, ok := h.level(ctx, r.Level)
	if !ok {
		return nil
	}
	r.Level = l
	return h.inner.Handle(ctx, r)
}

func (h *libp2pHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	fx := h.fx
	for _, a := range attrs {
		if a.Key == "system" && a.Value.String() == "fx" {
			fx = true
		}
	}
	return &libp2pHandler{inner: h.inner.WithAttrs(attrs), fx: fx}
}

func (h *libp2pHandler) WithGroup(name string) slog.Handler {
	return &libp2pHandler{inner: h.inner.WithGroup(name), fx: h.fx}
}
