package upstream

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	clog "github.com/containerd/log"
)

// Building a client leaves containerd's global log level alone (it used to set it to warn),
// and what containerd's token helpers log in the client's context reaches the client's slog
// logger, formatted like shoal's lines, and not logrus's standard logger.
func TestContainerdLogGoesThroughSlog(t *testing.T) {
	before := clog.GetLevel()
	t.Cleanup(func() { clog.L.Logger.SetLevel(before) })
	if err := clog.SetLevel("debug"); err != nil {
		t.Fatal(err)
	}
	var std bytes.Buffer
	out := clog.L.Logger.Out
	clog.L.Logger.SetOutput(&std)
	t.Cleanup(func() { clog.L.Logger.SetOutput(out) })

	var buf bytes.Buffer
	c, err := New(DefaultConfig(), slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	if got := clog.GetLevel(); got.String() != "debug" {
		t.Fatalf("upstream.New changed containerd's global log level to %s", got)
	}
	ctx := c.withContainerdLog(context.Background())
	clog.G(ctx).WithField("host", "registry.example").Debug("no scope specified for token auth challenge")
	clog.G(ctx).Warn("something odd")
	got := buf.String()
	if !strings.Contains(got, `level=DEBUG msg="no scope specified for token auth challenge" from=containerd host=registry.example`) ||
		!strings.Contains(got, `level=WARN msg="something odd" from=containerd`) {
		t.Fatalf("client's log:\n%s", got)
	}
	if std.Len() != 0 {
		t.Fatalf("logrus's standard logger wrote:\n%s", std.String())
	}
}
