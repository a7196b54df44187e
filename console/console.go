package console

import (
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/shoal-mirror/shoal/adminapi"
)

//go:embed assets templates
var files embed.FS

// Options configures the console.
type Options struct {
	// Admin is the daemon's admin API.
	Admin *adminapi.Client
	// Loopback: the console listens on a loopback address, so only a loopback Host or
	// localhost is served (a page on another name pointed at 127.0.0.1 is refused).
	Loopback bool
	// Authenticate checks HTTP Basic credentials; nil means no login.
	Authenticate func(user, password string) bool
	Log          *slog.Logger
}

// Console serves the pages.
type Console struct {
	opt   Options
	admin *adminapi.Client
	log   *slog.Logger
	pages map[string]*template.Template
	mux   *http.ServeMux
}

// New builds the console's handler.
func New(opt Options) (*Console, error) {
	if opt.Admin == nil {
		return nil, errors.New("console: no admin API client")
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	c := &Console{opt: opt, admin: opt.Admin, log: opt.Log, pages: map[string]*template.Template{}}
	for _, p := range []string{"overview", "peers", "cache", "pulls", "explain", "search", "image", "error"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/"+p+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", p, err)
		}
		c.pages[p] = t
	}
	assets, _ := fs.Sub(files, "assets")
	mux := http.NewServeMux()
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", cacheAssets(http.FileServerFS(assets))))
	mux.HandleFunc("GET /{$}", c.overview)
	mux.HandleFunc("GET /peers", c.peers)
	mux.HandleFunc("GET /cache", c.cache)
	mux.HandleFunc("GET /pulls", c.pulls)
	mux.HandleFunc("GET /explain", c.explain)
	mux.HandleFunc("GET /search", c.search)
	mux.HandleFunc("GET /image", c.image)
	mux.HandleFunc("POST /act/pin", c.pin(true))
	mux.HandleFunc("POST /act/unpin", c.pin(false))
	mux.HandleFunc("POST /act/rm", c.remove)
	mux.HandleFunc("POST /act/pull", c.pull)
	mux.HandleFunc("POST /act/export", c.export)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, http.StatusNotFound, fmt.Errorf("no page %s", r.URL.Path))
	})
	c.mux = mux
	return c, nil
}

// ServeHTTP checks Host, login and (for POST) the same-origin proof, then serves the page.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	if c.opt.Loopback && !loopbackHost(r.Host) {
		http.Error(w, fmt.Sprintf("console: Host %q refused: open it as http://127.0.0.1:PORT or http://localhost:PORT", r.Host), http.StatusMisdirectedRequest)
		return
	}
	if c.opt.Authenticate != nil {
		user, pass, ok := r.BasicAuth()
		if !ok || !c.opt.Authenticate(user, pass) {
			h.Set("WWW-Authenticate", `Basic realm="shoal console", charset="UTF-8"`)
			http.Error(w, "console: log in (console.htpasswd)", http.StatusUnauthorized)
			return
		}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if err := sameOrigin(r); err != nil {
			c.log.Warn("console: refused a request", "method", r.Method, "path", r.URL.Path, "err", err)
			http.Error(w, "console: "+err.Error(), http.StatusForbidden)
			return
		}
	}
	c.mux.ServeHTTP(w, r)
}

// sameOrigin is the proof a POST comes from one of the console's own pages: browsers send
// Sec-Fetch-Site (all current ones) or at least Origin with every POST, and a page elsewhere
// cannot forge either. A request with neither is not from a browser page: tools use the admin
// API, not the console.
func sameOrigin(r *http.Request) error {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" {
		if s != "same-origin" {
			return fmt.Errorf("%s %s: Sec-Fetch-Site %q: only the console's own pages may act", r.Method, r.URL.Path, s)
		}
	}
	o := r.Header.Values("Origin")
	if len(o) == 0 {
		if r.Header.Get("Sec-Fetch-Site") == "same-origin" {
			return nil
		}
		return fmt.Errorf("%s %s: no Origin or Sec-Fetch-Site: only the console's own pages may act (scripts: use the admin API)", r.Method, r.URL.Path)
	}
	u, err := url.Parse(o[0])
	if len(o) > 1 || err != nil || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, r.Host) {
		return fmt.Errorf("%s %s: Origin %q is not this console", r.Method, r.URL.Path, strings.Join(o, ", "))
	}
	return nil
}

// loopbackHost reports whether a Host header names this node by a loopback address or
// localhost, with or without a port.
func loopbackHost(h string) bool {
	host := h
	if hp, _, err := net.SplitHostPort(h); err == nil {
		host = hp
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Zone() == "" && ip.Unmap().IsLoopback()
}

func cacheAssets(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		h.ServeHTTP(w, r)
	})
}

// page is what every template gets.
type page struct {
	Title   string
	Nav     string
	Msg     string // a notice after an action (shown as text)
	Err     string
	Refresh bool // refresh while visible
	Now     time.Time
	Data    any
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, code int, name string, p page) {
	p.Nav, p.Now = name, time.Now()
	if p.Msg == "" {
		p.Msg = r.URL.Query().Get("msg")
	}
	if p.Err == "" {
		p.Err = r.URL.Query().Get("err")
	}
	var b strings.Builder
	if err := c.pages[name].Execute(&b, p); err != nil {
		c.log.Error("console: render", "page", name, "err", err)
		http.Error(w, "console: page failed to render: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(b.String()))
}

func (c *Console) fail(w http.ResponseWriter, r *http.Request, status int, err error) {
	c.render(w, r, status, "error", page{Title: http.StatusText(status), Err: err.Error()})
}

// status maps an admin API error to an HTTP status.
func status(err error) int {
	var ae *adminapi.APIError
	if errors.As(err, &ae) && ae.Status >= 400 {
		return ae.Status
	}
	return http.StatusBadGateway
}
