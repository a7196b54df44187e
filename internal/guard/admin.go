package guard

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/shoal-mirror/shoal/adminapi"
)

// Admin keeps web pages away from the admin API. A page open in a browser on the node
// can send requests to 127.0.0.1: a form POST or a fetch with no custom header needs no CORS
// preflight, and a name the attacker controls can be re-pointed at 127.0.0.1 (DNS
// rebinding) so that even the answer can be read. The API has no authentication, so it
// refuses:
//
//   - on TCP, a Host that is not a loopback address or localhost (rebinding: the browser sends
//     the attacker's name), with 421;
//   - an Origin other than the API's own (http://HOST as sent) and a Sec-Fetch-Site other
//     than same-origin or none: a request another page made, same-site pages (another
//     loopback port) included, with 403;
//   - on TCP, a request other than GET or HEAD without the adminapi.Header header: a browser
//     sends a custom header cross-origin only after a preflight, which is never granted
//     (no Access-Control-* header is ever set), with 403.
//
// The unix socket cannot be reached by a browser and its file mode is its access control: it
// needs neither a loopback Host nor the header (clients send whatever Host they like there).
//
// A refusal is the admin API's JSON error (adminapi.ErrorBody) with code adminapi.CodeForbidden.
func Admin(next http.Handler, tcp bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := checkAdminRequest(r, tcp); f != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(f.status)
			_ = json.NewEncoder(w).Encode(adminapi.ErrorBody{Error: f.err.Error(), Code: adminapi.CodeForbidden})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// refusal is why the admin API refused a request, and the status it answers with.
type refusal struct {
	status int
	err    error
}

func forbidden(status int, format string, a ...any) *refusal {
	return &refusal{status: status, err: fmt.Errorf(format, a...)}
}

func checkAdminRequest(r *http.Request, tcp bool) *refusal {
	if tcp && !loopbackHost(r.Host) {
		return forbidden(http.StatusMisdirectedRequest, "admin API: Host %q refused: only a loopback address or localhost (a page on another name may have been pointed at this node)", r.Host)
	}
	if o := r.Header.Values("Origin"); len(o) > 0 && (len(o) > 1 || !strings.EqualFold(o[0], "http://"+r.Host)) {
		return forbidden(http.StatusForbidden, "admin API: Origin %q refused: requests made by web pages are not served", strings.Join(o, ", "))
	}
	switch s := r.Header.Get("Sec-Fetch-Site"); s {
	case "", "same-origin", "none":
	default:
		return forbidden(http.StatusForbidden, "admin API: Sec-Fetch-Site %q refused: requests made by web pages are not served", s)
	}
	if tcp && r.Method != http.MethodGet && r.Method != http.MethodHead && r.Header.Get(adminapi.Header) == "" {
		return forbidden(http.StatusForbidden, "admin API: %s %s needs the header %q (shoal's client sends it; with curl: -H '%s: 1')", r.Method, r.URL.Path, adminapi.Header, adminapi.Header)
	}
	return nil
}

// loopbackHost reports whether a Host header names this node by a loopback address or
// localhost, with or without a port.
func loopbackHost(h string) bool {
	host := h
	switch {
	case strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]"): // [::1]
		host = h[1 : len(h)-1]
	case strings.HasPrefix(h, "[") || strings.Count(h, ":") == 1: // [::1]:PORT, 127.0.0.1:PORT
		var err error
		if host, _, err = net.SplitHostPort(h); err != nil {
			return false
		}
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Zone() == "" && ip.Unmap().IsLoopback()
}
