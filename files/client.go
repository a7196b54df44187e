package files

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-mirror/shoal/upstream"
)

// ErrRefused is returned for a request or redirect to a host shoal must not contact.
var ErrRefused = errors.New("file host refused")

// client talks to the file hosts: only those configured, each at its mapped endpoint, a token
// only to the host it belongs to.
type client struct {
	hosts   map[string]*url.URL // logical host → endpoint
	tokens  map[string]string   // logical host → bearer token
	follow  *http.Client
	noRedir *http.Client
}

func newClient(cfg Config) (*client, error) {
	c := &client{hosts: map[string]*url.URL{}, tokens: map[string]string{}}
	private := map[netip.Addr]bool{} // addresses named in the configuration may be private
	for h, ep := range cfg.Hosts {
		if ep == "" {
			ep = "https://" + h
		}
		u, err := parseEndpoint(ep)
		if err != nil {
			return nil, fmt.Errorf("files.hosts.%q: %w", h, err)
		}
		c.hosts[strings.ToLower(h)] = u
		if a, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]")); err == nil {
			private[a.Unmap()] = true
		}
	}
	if t := token(cfg.HFToken, cfg.HFTokenFile); t != "" {
		c.tokens[HostHF] = t
	}
	if t := token(cfg.GitHubToken, cfg.GitHubTokenFile); t != "" {
		c.tokens[HostGHAPI] = t
		c.tokens[HostGitHub] = t
	}
	d := &net.Dialer{Timeout: 10 * time.Second, Control: func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("%w: %s", ErrRefused, address)
		}
		a := ap.Addr().Unmap()
		if private[a] {
			return nil
		}
		if !a.IsGlobalUnicast() || a.IsPrivate() || a.IsLoopback() {
			return fmt.Errorf("%w: %s is not a public address", ErrRefused, a)
		}
		return nil
	}}
	tr := &http.Transport{
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}
	rt := &mapping{c: c, next: tr}
	c.follow = &http.Client{Transport: rt, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return errors.New("too many redirects")
		}
		if _, ok := c.hosts[strings.ToLower(req.URL.Hostname())]; !ok {
			return fmt.Errorf("%w: redirect to %s", ErrRefused, req.URL.Host)
		}
		return nil
	}}
	c.noRedir = &http.Client{Transport: rt, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return c, nil
}

// mapping sends a request for a logical host to its configured endpoint and adds that host's
// token when asked for (authKey in the context). Redirects between hosts pass through here
// again, so a token never reaches a CDN.
type mapping struct {
	c    *client
	next http.RoundTripper
}

type authKey struct{}

// CloseIdleConnections closes the transport's idle keep-alive connections (http.Client's
// CloseIdleConnections reaches a RoundTripper only through this method).
func (m *mapping) CloseIdleConnections() {
	if c, ok := m.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

func withAuth(ctx context.Context) context.Context { return context.WithValue(ctx, authKey{}, true) }

func (m *mapping) RoundTrip(req *http.Request) (*http.Response, error) {
	host := strings.ToLower(req.URL.Hostname())
	ep, ok := m.c.hosts[host]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrRefused, req.URL.Host)
	}
	out := req.Clone(req.Context())
	out.URL.Scheme, out.URL.Host = ep.Scheme, ep.Host
	out.URL.Path = ep.Path + req.URL.Path
	if req.URL.RawPath != "" {
		out.URL.RawPath = ep.Path + req.URL.RawPath
	}
	out.Host = ep.Host
	out.Header.Del("Authorization")
	if t := m.c.tokens[host]; t != "" && req.Context().Value(authKey{}) != nil {
		out.Header.Set("Authorization", "Bearer "+t)
	}
	return m.next.RoundTrip(out)
}

func (c *client) hasToken(host string) bool { return c.tokens[host] != "" }

// get sends a request to a logical URL (https://huggingface.co/...).
func (c *client) do(ctx context.Context, method, rawURL string, hdr http.Header, body io.Reader, follow bool) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, rawURL, body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "shoal")
	}
	hc := c.noRedir
	if follow {
		hc = c.follow
	}
	return hc.Do(req)
}

// statusError turns a non-success answer into the upstream package's typed error (the
// daemon maps it to the client's status), keeping the Hub's X-Error-Code.
func statusError(resp *http.Response) error {
	e := &upstream.Error{Host: resp.Request.URL.Host, Status: resp.StatusCode, Code: resp.Header.Get("X-Error-Code")}
	if s := resp.Header.Get("Retry-After"); s != "" {
		if n, err := strconv.Atoi(s); err == nil {
			e.RetryAfter = time.Duration(n) * time.Second
		}
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	e.Message = strings.TrimSpace(string(b))
	if len(e.Message) > 200 {
		e.Message = e.Message[:200]
	}
	return e
}

// unavailable reports an upstream failure that a stale cached answer may cover.
func unavailable(err error) bool {
	if err == nil {
		return false
	}
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return ue.Status >= 500 || ue.Status == http.StatusTooManyRequests
	}
	return !errors.Is(err, context.Canceled)
}
