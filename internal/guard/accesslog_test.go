package guard

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The access log writes one line per request with the route, ns and status at info level, and
// none below it; the observers (the metrics) hear of every request either way.
func TestAccessLogLineAndObservers(t *testing.T) {
	t.Parallel()
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelWarn} {
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: level}))
		var seen []Served
		h := AccessLog(log, "X-Source", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Source", "store")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "hello")
		}), func(s Served) { seen = append(seen, s) })
		srv := httptest.NewServer(h)
		for _, q := range []string{"?ns=ghcr.io", ""} {
			resp, err := http.Get(srv.URL + "/v2/a/b/blobs/sha256:00" + q)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		srv.Close()
		out := buf.String()
		if level == slog.LevelInfo {
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 2 || !strings.Contains(lines[0], "ns=ghcr.io") || !strings.Contains(lines[1], `ns=""`) ||
				!strings.Contains(lines[0], "status=200") || !strings.Contains(lines[0], "bytes=5") || !strings.Contains(lines[0], "source=store") {
				t.Errorf("access log at info:\n%s", out)
			}
		} else if out != "" {
			t.Errorf("access log at warn wrote:\n%s", out)
		}
		if len(seen) != 2 || seen[0].Status != 200 || seen[0].Bytes != 5 || seen[0].Source != "store" {
			t.Errorf("observers at %v saw %+v", level, seen)
		}
	}
}
