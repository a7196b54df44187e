package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpproxy"
)

// ProxyNone as Config.Proxy sends every upstream request directly, whatever the proxy
// environment variables say.
const ProxyNone = "none"

// egress decides whether an upstream request goes out through a proxy. With a proxy the
// dial guard only sees the proxy's address, so the target is judged before CONNECT (see
// Client.proxyFunc); the proxy itself, named by the operator, may be on any address.
type egress struct {
	fn    func(*url.URL) (*url.URL, error) // nil: always direct
	addrs map[string]bool                  // host:port of each proxy, as the transport dials it
	shown string                           // for the start-up log line, password redacted
}

// newEgress reads Config.Proxy: "" takes HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and their
// lower-case forms) from the environment, ProxyNone goes direct, anything else is the URL
// of an HTTP, HTTPS or SOCKS5 proxy used for every upstream request (NO_PROXY still
// applies). getenv is os.Getenv outside tests.
func newEgress(setting string, getenv func(string) string) (*egress, error) {
	var cfg httpproxy.Config
	switch setting {
	case ProxyNone:
		return &egress{}, nil
	case "":
		cfg = httpproxy.Config{
			HTTPProxy:  firstEnv(getenv, "HTTP_PROXY", "http_proxy"),
			HTTPSProxy: firstEnv(getenv, "HTTPS_PROXY", "https_proxy"),
			NoProxy:    firstEnv(getenv, "NO_PROXY", "no_proxy"),
		}
	default:
		cfg = httpproxy.Config{HTTPProxy: setting, HTTPSProxy: setting, NoProxy: firstEnv(getenv, "NO_PROXY", "no_proxy")}
	}
	e := &egress{addrs: map[string]bool{}}
	var shown []string
	for _, raw := range []string{cfg.HTTPProxy, cfg.HTTPSProxy} {
		if raw == "" {
			continue
		}
		u, err := parseProxyURL(raw)
		if err != nil {
			return nil, err
		}
		e.addrs[proxyAddr(u)] = true
		shown = append(shown, u.Redacted())
	}
	if len(e.addrs) == 0 {
		return &egress{}, nil
	}
	e.fn = cfg.ProxyFunc()
	e.shown = strings.Join(shown, ", ")
	return e, nil
}

func firstEnv(getenv func(string) string, names ...string) string {
	for _, n := range names {
		if v := getenv(n); v != "" {
			return v
		}
	}
	return ""
}

// parseProxyURL checks a proxy setting the way net/http will read it: a bare host:port
// means an HTTP proxy. Error messages never show a password.
func parseProxyURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || u.Host == "" {
		if u2, err2 := url.Parse("http://" + raw); err2 == nil && u2.Host != "" {
			u, err = u2, nil
		}
	}
	if err != nil || u == nil || u.Host == "" {
		return nil, errors.New("proxy: not a URL (want http://HOST:PORT or socks5://HOST:PORT)")
	}
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
	default:
		return nil, fmt.Errorf("proxy %s: scheme must be http, https, socks5 or socks5h", u.Redacted())
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		return nil, fmt.Errorf("proxy %s: must not have a path or query", u.Redacted())
	}
	if err := validHostPort(u.Host); err != nil {
		return nil, fmt.Errorf("proxy %s: %v", u.Redacted(), err)
	}
	return u, nil
}

// proxyAddr is the host:port net/http dials for a proxy URL (its default ports).
func proxyAddr(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443", "socks5": "1080", "socks5h": "1080"}[u.Scheme]
	}
	return net.JoinHostPort(u.Hostname(), port)
}

func (e *egress) isProxy(addr string) bool { return e != nil && e.addrs[addr] }

// proxyFunc is the transport's Proxy hook for one dial policy. When a request goes through
// the proxy, the proxy (not shoal) connects to the target, so the target is judged here,
// before any byte is sent to the proxy.
func (c *Client) proxyFunc(allow dialPolicy) func(*http.Request) (*url.URL, error) {
	if c.egress == nil || c.egress.fn == nil {
		return nil
	}
	return func(req *http.Request) (*url.URL, error) {
		pu, err := c.egress.fn(req.URL)
		if err != nil || pu == nil {
			return pu, err
		}
		if err := c.checkViaProxy(req.Context(), req.URL.Hostname(), allow); err != nil {
			return nil, err
		}
		return pu, nil
	}
}

// checkViaProxy judges a target host that a proxy will resolve and dial. IP literals and
// local-only names are judged by themselves; other names are resolved here and every
// address must pass. A name shoal cannot resolve (common behind a proxy: no outside DNS) is
// left to the proxy, which is the one place such a lookup can happen.
func (c *Client) checkViaProxy(ctx context.Context, host string, allow dialPolicy) error {
	if allow == allowAll {
		return nil
	}
	refuse := func(what string) error {
		return fmt.Errorf("%w: %s is %s, which this upstream may not reach (through the proxy either)", ErrRefused, host, what)
	}
	class, literal := hostClass(host)
	if literal {
		if class > addrClass(allow) {
			return refuse("a local, private or link-local address")
		}
		return nil
	}
	ips, err := c.resolve(ctx, host)
	if err != nil || len(ips) == 0 {
		if localName(host) && allow < allowPrivate {
			return refuse("a local name")
		}
		return nil
	}
	for _, ip := range ips {
		if !allow.allows(ip) {
			return fmt.Errorf("%w: %s resolves to %s, which this upstream may not reach (through the proxy either)", ErrRefused, host, ip)
		}
	}
	return nil
}
