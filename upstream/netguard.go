package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"golang.org/x/net/publicsuffix"
)

// addrClass sorts addresses by where shoal may go when an upstream sends it there.
type addrClass int

const (
	classPublic    addrClass = iota
	classPrivate             // loopback, RFC 1918, ULA, CGNAT: only when the upstream is private too
	classForbidden           // link-local (cloud metadata), unspecified, multicast, reserved: never
)

var (
	privatePrefixes = mustPrefixes("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
		"198.18.0.0/15", "127.0.0.0/8", "::1/128", "fc00::/7")
	forbiddenPrefixes = mustPrefixes("0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
		"192.0.0.0/24", "::/128", "fe80::/10", "ff00::/8", "100::/64", "2001:db8::/32")
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func classify(ip netip.Addr) addrClass {
	ip = ip.Unmap()
	if !ip.IsValid() {
		return classForbidden
	}
	for _, p := range forbiddenPrefixes {
		if p.Contains(ip) {
			return classForbidden
		}
	}
	// NAT64 (64:ff9b::/96) embeds an IPv4 address; judge that one.
	if ip.Is6() && netip.MustParsePrefix("64:ff9b::/96").Contains(ip) {
		b := ip.As16()
		return classify(netip.AddrFrom4([4]byte(b[12:])))
	}
	for _, p := range privatePrefixes {
		if p.Contains(ip) {
			return classPrivate
		}
	}
	return classPublic
}

// hostClass classifies a host without resolving it: IP literals by address, names that
// can only be local by name, every other name as public (the dialer checks what it
// resolves to). literal reports whether the class is final.
func hostClass(host string) (c addrClass, literal bool) {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if i := strings.IndexByte(host, '%'); i >= 0 { // zone: only link-local addresses carry one
		return classForbidden, true
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return classify(ip), true
	}
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return classPrivate, true
	}
	return classPublic, false
}

// localName reports whether a host name can only mean something on a local network.
func localName(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if !strings.Contains(h, ".") {
		return true
	}
	for _, s := range []string{".localhost", ".local", ".internal", ".localdomain", ".lan", ".home.arpa", ".intranet", ".corp"} {
		if strings.HasSuffix(h, s) {
			return true
		}
	}
	return false
}

// endpointIsPrivate reports whether an endpoint is on a loopback or private address, which
// makes loopback and private token realms and redirect targets acceptable.
func endpointIsPrivate(u *url.URL) bool {
	c, literal := hostClass(u.Hostname())
	return literal && c == classPrivate
}

// checkTarget decides, before any dial, whether shoal may follow an upstream to u as a token
// realm (realm true) or a redirect target.
func checkTarget(reg *registry, u *url.URL, realm bool) error {
	what := "redirect"
	if realm {
		what = "token realm"
	}
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s %s://%s: %s", ErrRefused, what, u.Scheme, u.Host, fmt.Sprintf(format, args...))
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%w: %s: scheme must be http or https, got %q", ErrRefused, what, u.Scheme)
	case u.User != nil:
		return fmt.Errorf("%w: %s carries credentials in the URL", ErrRefused, what)
	case u.Hostname() == "":
		return fmt.Errorf("%w: %s has no host", ErrRefused, what)
	case reg.endpoint.Scheme == "https" && u.Scheme == "http":
		return refuse("downgrade from https")
	}
	class, literal := hostClass(u.Hostname())
	switch class {
	case classForbidden:
		return refuse("link-local, unspecified or reserved address")
	case classPrivate:
		if !reg.private {
			return refuse("loopback or private address for an upstream on a public address")
		}
		if realm {
			return nil // private upstream: its token server may be any local host (tests, LANs)
		}
	}
	if !realm {
		return nil // CDNs live on other sites; the dialer checks the address it resolves to
	}
	host := strings.ToLower(u.Hostname())
	ep := strings.ToLower(reg.endpoint.Hostname())
	if host == ep || slices.ContainsFunc(reg.realmHosts, func(h string) bool {
		return strings.EqualFold(h, u.Host) || strings.EqualFold(h, host)
	}) {
		return nil
	}
	if !literal {
		a, errA := publicsuffix.EffectiveTLDPlusOne(host)
		b, errB := publicsuffix.EffectiveTLDPlusOne(ep)
		if errA == nil && errB == nil && a == b {
			return nil
		}
	}
	return refuse("not on the site of %s (add it to realm_hosts to allow)", reg.endpoint.Host)
}

// dialPolicy says which addresses a transport may connect to: the most local class it
// accepts. Being a class rather than a function, it can also judge a host that a proxy will
// resolve (see checkViaProxy).
type dialPolicy addrClass

const (
	allowPublicOnly = dialPolicy(classPublic)
	allowPrivate    = dialPolicy(classPrivate)
	allowAll        = dialPolicy(classForbidden)
)

func (p dialPolicy) allows(ip netip.Addr) bool { return classify(ip) <= addrClass(p) }

// resolver resolves a host name; tests replace it so that no public name is ever looked up.
type resolver func(ctx context.Context, host string) ([]netip.Addr, error)

func systemResolver(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// guardedDialer resolves the host itself, checks every address against the policy and dials
// only an allowed address, so a name that resolves (or re-resolves) to a forbidden address
// never gets a packet.
func (c *Client) guardedDialer(allow dialPolicy) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: c.timeout}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else if ips, err = c.resolve(ctx, host); err != nil {
			return nil, err
		}
		policy := allow
		if c.egress.isProxy(addr) {
			policy = allowAll // the operator named this proxy; the target was judged before CONNECT
		}
		var errs []error
		for _, ip := range ips {
			if !policy.allows(ip) {
				errs = append(errs, fmt.Errorf("%w: %s resolves to %s, which this upstream may not reach", ErrRefused, host, ip))
				continue
			}
			target := net.JoinHostPort(ip.Unmap().String(), port)
			if c.dialHook != nil {
				if err := c.dialHook(network, target); err != nil {
					errs = append(errs, err)
					continue
				}
			}
			conn, err := d.DialContext(ctx, network, target)
			if err == nil {
				return conn, nil
			}
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
		if len(errs) == 0 {
			return nil, fmt.Errorf("%s: no addresses", host)
		}
		return nil, errors.Join(errs...)
	}
}

// reqInfoKey carries the registry a request is made for, so the transport and the redirect
// check can apply that registry's policy.
type reqInfoKey struct{}

func withRegistry(ctx context.Context, reg *registry) context.Context {
	return context.WithValue(ctx, reqInfoKey{}, reg)
}

func registryFrom(ctx context.Context) *registry {
	reg, _ := ctx.Value(reqInfoKey{}).(*registry)
	return reg
}

// dispatch picks a transport per request by policy. Keeping one transport (and so one
// connection pool) per policy means a connection dialled under a loose policy is never
// reused under a strict one.
type dispatch struct {
	trusted, private, public http.RoundTripper
}

// CloseIdleConnections closes the idle connections of each transport (http.Client's
// CloseIdleConnections reaches a RoundTripper only through this method).
func (d dispatch) CloseIdleConnections() {
	for _, rt := range []http.RoundTripper{d.trusted, d.private, d.public} {
		if c, ok := rt.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
}

func (d dispatch) RoundTrip(req *http.Request) (*http.Response, error) {
	reg := registryFrom(req.Context())
	switch {
	case reg != nil && reg.trusted && req.URL.Scheme == reg.endpoint.Scheme && req.URL.Host == reg.endpoint.Host:
		return d.trusted.RoundTrip(req) // the endpoint the operator named: dial wherever it is
	case reg != nil && reg.private:
		return d.private.RoundTrip(req)
	default:
		return d.public.RoundTrip(req)
	}
}

// maxRedirects bounds a redirect chain (blob → CDN usually takes one hop).
const maxRedirects = 5

// checkRedirect validates each hop before it is dialled and drops Authorization whenever
// the target is not the original host: a token for the registry must never reach a CDN.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("%w: more than %d redirects", ErrRefused, maxRedirects)
	}
	reg := registryFrom(req.Context())
	if reg == nil {
		return fmt.Errorf("%w: redirect outside a registry request", ErrRefused)
	}
	if err := checkTarget(reg, req.URL, false); err != nil {
		return err
	}
	if orig := via[0].URL; req.URL.Host != orig.Host || req.URL.Scheme != orig.Scheme {
		if req.GetBody != nil && via[0].Method == http.MethodPost {
			// A 307/308 would replay the OAuth form, password included, to another host.
			return fmt.Errorf("%w: token POST redirected to another host", ErrRefused)
		}
		req.Header.Del("Authorization")
	}
	return nil
}

// limitBody caps response bodies of a transport (token responses): reading past n bytes
// fails instead of buffering whatever a hostile server sends.
type limitBody struct {
	base http.RoundTripper
	n    int64
}

func (l limitBody) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &cappedBody{rc: resp.Body, left: l.n}
	return resp, nil
}

// ErrBodyTooLarge is returned when an upstream response (a token response) is larger than
// shoal reads.
var ErrBodyTooLarge = errors.New("upstream response body too large")

var errBodyTooLarge = ErrBodyTooLarge

type cappedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		var one [1]byte
		if n, err := b.rc.Read(one[:]); n == 0 && err != nil {
			return 0, err // the body ended exactly at the cap
		}
		return 0, errBodyTooLarge
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *cappedBody) Close() error { return b.rc.Close() }
