package daemon

import (
	"io"
	"log/slog"
	"net/http"
	"time"
)

// accessLog writes one line per request: route, status, bytes, duration and where the answer
// came from. It never logs headers (they may carry credentials).
func accessLog(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			log.Info("request", "method", r.Method, "path", r.URL.Path, "ns", r.URL.Query().Get("ns"),
				"status", rec.status, "bytes", rec.bytes, "source", w.Header().Get(hdrSource),
				"duration", time.Since(start).Round(time.Microsecond), "remote", r.RemoteAddr)
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
