package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/shoal-mirror/shoal/internal/testutil"
)

// upstreamProxy is a reverse proxy in front of an upstream registry that records every request
// shoal makes upstream, so that tests can count them. It can also corrupt, slow down or hold a
// blob's bytes, and be stopped to play an upstream that went down.
type upstreamProxy struct {
	Addr string // 127.0.0.1:PORT, also used as the registry's name in shoal's --registry
	URL  string

	srv *http.Server

	mu      sync.Mutex
	reqs    []*proxyReq
	corrupt map[string]bool  // blob digest -> flip one byte of its body
	rate    int64            // blob body bytes per second; 0 = unlimited
	holds   map[string]*hold // blob digest -> stop after some bytes until released
	link    *testutil.Link   // one slow link shared by all blob bodies (swarm_link_test.go); nil = none
}

// proxyReq is one request seen by the proxy. Status, Bytes and Done are filled in when the
// response has been sent (or aborted).
type proxyReq struct {
	Method, Path, Query string
	Local               string // the proxy's address the request came in on (see listenOn)
	Status              int
	Bytes               int64
	Done                bool
}

// hold pauses a blob's body after the first n bytes until release is closed.
type hold struct {
	n       int64
	release chan struct{}
	reached chan struct{} // closed when the proxy has sent n bytes and waits
	once    sync.Once
	reachO  sync.Once
}

func startUpstreamProxy(s scope, target string) *upstreamProxy {
	s.Helper()
	tu, err := url.Parse(target)
	if err != nil {
		s.Fatalf("proxy target: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.Fatalf("proxy: %v", err)
	}
	p := &upstreamProxy{Addr: ln.Addr().String(), corrupt: map[string]bool{}, holds: map[string]*hold{}}
	p.URL = "http://" + p.Addr
	rp := testutil.ReverseProxy(tu, p.modifyResponse)
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &proxyReq{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery}
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			rec.Local = a.String()
		}
		p.mu.Lock()
		p.reqs = append(p.reqs, rec)
		p.mu.Unlock()
		cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
		// Deferred: when the client goes away mid-body, ReverseProxy ends with
		// panic(http.ErrAbortHandler), and the request must still count as done.
		defer func() {
			p.mu.Lock()
			rec.Status, rec.Bytes, rec.Done = cw.status, cw.n, true
			p.mu.Unlock()
		}()
		rp.ServeHTTP(cw, r)
	}), ReadHeaderTimeout: 10 * time.Second}
	go p.srv.Serve(ln)
	s.Cleanup(p.stop)
	return p
}

// stop closes the listener and every open connection: the upstream is now unreachable.
func (p *upstreamProxy) stop() { p.srv.Close() }

// corruptBlob makes the proxy flip one byte in the body of every GET of blob d (on=true).
func (p *upstreamProxy) corruptBlob(d string, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.corrupt[d] = on
}

// throttle limits blob bodies to bytesPerSec (0 = unlimited), so that concurrent clients overlap.
func (p *upstreamProxy) throttle(bytesPerSec int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rate = bytesPerSec
}

// holdBlob makes the next GETs of blob d stop after n bytes until the returned hold is released.
func (p *upstreamProxy) holdBlob(d string, n int64) *hold {
	h := &hold{n: n, release: make(chan struct{}), reached: make(chan struct{})}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holds[d] = h
	return h
}

func (h *hold) Release() { h.once.Do(func() { close(h.release) }) }

func (p *upstreamProxy) modifyResponse(resp *http.Response) error {
	if resp.Request.Method != http.MethodGet || resp.StatusCode >= 300 {
		return nil
	}
	d, ok := blobDigestOf(resp.Request.URL.Path)
	if !ok {
		return nil
	}
	p.mu.Lock()
	corrupt, rate, h, link := p.corrupt[d], p.rate, p.holds[d], p.link
	p.mu.Unlock()
	if corrupt {
		at := resp.ContentLength / 2
		resp.Body = &flipReader{r: resp.Body, at: at}
	}
	if h != nil {
		resp.Body = &holdReader{r: resp.Body, h: h, ctx: resp.Request.Context()}
	}
	if rate > 0 {
		resp.Body = &rateReader{r: resp.Body, rate: rate, start: time.Now()}
	}
	if link != nil {
		resp.Body = link.Body(resp.Body)
	}
	return nil
}

// blobDigestOf returns the digest of a /v2/<name>/blobs/<digest> path.
func blobDigestOf(path string) (string, bool) {
	i := strings.LastIndex(path, "/blobs/")
	if i < 0 {
		return "", false
	}
	return path[i+len("/blobs/"):], true
}

// requests returns a snapshot of all requests seen so far.
func (p *upstreamProxy) requests() []proxyReq {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]proxyReq, len(p.reqs))
	for i, r := range p.reqs {
		out[i] = *r
	}
	return out
}

// since returns the requests seen after the first n (n from an earlier len(requests())).
func (p *upstreamProxy) since(n int) []proxyReq { return p.requests()[n:] }

// count counts requests with the given method whose path ends with suffix.
func count(reqs []proxyReq, method, suffix string) int {
	n := 0
	for _, r := range reqs {
		if r.Method == method && strings.HasSuffix(r.Path, suffix) {
			n++
		}
	}
	return n
}

// describe formats requests for failure messages.
func describe(reqs []proxyReq) string {
	var b strings.Builder
	for _, r := range reqs {
		q := ""
		if r.Query != "" {
			q = "?" + r.Query
		}
		fmt.Fprintf(&b, "  %s %s%s -> %d (%d bytes, done=%v)\n", r.Method, r.Path, q, r.Status, r.Bytes, r.Done)
	}
	if b.Len() == 0 {
		return "  (none)\n"
	}
	return b.String()
}

type countingWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	n           int64
}

func (w *countingWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// flipReader inverts the byte at offset at.
type flipReader struct {
	r   io.ReadCloser
	at  int64
	off int64
}

func (f *flipReader) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	if f.at >= f.off && f.at < f.off+int64(n) {
		b[f.at-f.off] ^= 0xff
	}
	f.off += int64(n)
	return n, err
}

func (f *flipReader) Close() error { return f.r.Close() }

// holdReader passes the first h.n bytes, then waits for h.release (or the request to end).
type holdReader struct {
	r   io.ReadCloser
	h   *hold
	ctx context.Context
	off int64
}

func (hr *holdReader) Read(b []byte) (int, error) {
	if hr.off >= hr.h.n {
		select {
		case <-hr.h.release:
		default:
			hr.h.reachedOnce()
			select {
			case <-hr.h.release:
			case <-hr.ctx.Done():
				return 0, hr.ctx.Err()
			}
		}
	} else if rest := hr.h.n - hr.off; int64(len(b)) > rest {
		b = b[:rest]
	}
	n, err := hr.r.Read(b)
	hr.off += int64(n)
	return n, err
}

func (hr *holdReader) Close() error { return hr.r.Close() }

func (h *hold) reachedOnce() { h.reachO.Do(func() { close(h.reached) }) }

// rateReader limits throughput to rate bytes per second.
type rateReader struct {
	r     io.ReadCloser
	rate  int64
	start time.Time
	n     int64
}

func (rr *rateReader) Read(b []byte) (int, error) {
	if len(b) > 64<<10 {
		b = b[:64<<10]
	}
	n, err := rr.r.Read(b)
	rr.n += int64(n)
	due := rr.start.Add(time.Duration(float64(rr.n) / float64(rr.rate) * float64(time.Second)))
	time.Sleep(time.Until(due)) // pacing, not synchronisation
	return n, err
}

func (rr *rateReader) Close() error { return rr.r.Close() }
