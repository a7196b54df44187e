package daemon

import (
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/shoal-mirror/shoal/upstream"
)

// requestDone describes a finished request to the access log's observers (the metrics).
type requestDone struct {
	path           string
	status         int
	bytes          int64
	source         string
	duration       time.Duration
	upstreamStatus int // last upstream HTTP status for this request, 0 if the upstream was not asked
}

// accessLog writes one line per request: route, status, bytes, duration, where the answer
// came from and the upstream's status when it was asked, then tells the observers. It never
// logs headers or the query beyond ns (they may carry credentials).
func accessLog(log *slog.Logger, next http.Handler, observers ...func(requestDone)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		note := &upstream.StatusNote{}
		r = r.WithContext(upstream.WithStatusNote(r.Context(), note))
		defer func() {
			rd := requestDone{path: r.URL.Path, status: rec.status, bytes: rec.bytes, source: w.Header().Get(hdrSource),
				duration: time.Since(start), upstreamStatus: note.Status()}
			log.Info("request", "method", r.Method, "path", r.URL.Path, "ns", r.URL.Query().Get("ns"),
				"status", rd.status, "bytes", rd.bytes, "source", rd.source, "upstream_status", rd.upstreamStatus,
				"duration", rd.duration.Round(time.Microsecond), "remote", r.RemoteAddr)
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
