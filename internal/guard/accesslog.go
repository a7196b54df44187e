package guard

import (
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/shoal-mirror/shoal/upstream"
)

// Served describes a finished request to the access log's observers (the metrics).
type Served struct {
	Path           string
	Status         int
	Bytes          int64
	Source         string // the response's source header (AccessLog's sourceHeader)
	Duration       time.Duration
	UpstreamStatus int // last upstream HTTP status for this request, 0 if the upstream was not asked
}

// AccessLog writes one line per request: route, status, bytes, duration, where the answer
// came from (the response header sourceHeader, which the mirror sets) and the upstream's
// status when it was asked, then tells the observers. It never logs headers or the query
// beyond ns (they may carry credentials).
func AccessLog(log *slog.Logger, sourceHeader string, next http.Handler, observers ...func(Served)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		note := &upstream.StatusNote{}
		r = r.WithContext(upstream.WithStatusNote(r.Context(), note))
		defer func() {
			rd := Served{Path: r.URL.Path, Status: rec.status, Bytes: rec.bytes, Source: w.Header().Get(sourceHeader),
				Duration: time.Since(start), UpstreamStatus: note.Status()}
			if log.Enabled(r.Context(), slog.LevelInfo) { // the arguments cost allocations even when not logged
				ns := ""
				if r.URL.RawQuery != "" {
					ns = r.URL.Query().Get("ns")
				}
				log.Info("request", "method", r.Method, "path", r.URL.Path, "ns", ns,
					"status", rd.Status, "bytes", rd.Bytes, "source", rd.Source, "upstream_status", rd.UpstreamStatus,
					"duration", rd.Duration.Round(time.Microsecond), "remote", r.RemoteAddr)
			}
			for _, o := range observers {
				o(rd)
			}
		}()
		next.ServeHTTP(rec, r)
	})
}

// recorder counts what a handler writes. It keeps io.ReaderFrom so that sendfile still works.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) { r.status = code; r.ResponseWriter.WriteHeader(code) }

func (r *recorder) Write(p []byte) (int, error) {
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	n, err := r.ResponseWriter.(io.ReaderFrom).ReadFrom(src)
	r.bytes += n
	return n, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
