package upstream

import (
	"context"
	"io"
	"log/slog"

	clog "github.com/containerd/log"
	"github.com/sirupsen/logrus"
)

// withContainerdLog hands containerd's token helpers (which log through logrus, found in
// the context by log.G) a logger of their own that forwards to this client's slog logger,
// so that their lines come out formatted like shoal's and at shoal's level, and no global
// logrus setting is touched.
func (c *Client) withContainerdLog(ctx context.Context) context.Context {
	return clog.WithLogger(ctx, c.clog)
}

func containerdLogger(log *slog.Logger) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.DebugLevel)
	l.AddHook(slogHook{log.With("from", "containerd")})
	return logrus.NewEntry(l)
}

// slogHook writes a logrus entry to slog: debug and info stay debug (they name hosts and
// scopes, noise at info), warnings and errors keep their level.
type slogHook struct{ log *slog.Logger }

func (slogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h slogHook) Fire(e *logrus.Entry) error {
	lv := slog.LevelDebug
	switch {
	case e.Level <= logrus.ErrorLevel:
		lv = slog.LevelError
	case e.Level == logrus.WarnLevel:
		lv = slog.LevelWarn
	}
	ctx := e.Context
	if ctx == nil {
		ctx = context.Background()
	}
	if !h.log.Enabled(ctx, lv) {
		return nil
	}
	attrs := make([]any, 0, 2*len(e.Data))
	for k, v := range e.Data {
		attrs = append(attrs, k, v)
	}
	h.log.Log(ctx, lv, e.Message, attrs...)
	return nil
}
