package daemon

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/shoal-mirror/shoal/adminapi"
)

// adminRequest is one raw request to the admin API, as a web page (or curl) would send it.
type adminRequest struct {
	method, path, body string
	host               string            // "" = the listener's address
	header             map[string]string // Origin, Sec-Fetch-Site, X-Shoal-Admin
}

func (q adminRequest) send(t *testing.T, hc *http.Client, addr string) (int, adminapi.ErrorBody) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), q.method, "http://"+addr+q.path, strings.NewReader(q.body))
	if err != nil {
		t.Fatal(err)
	}
	if q.host != "" {
		req.Host = q.host
	}
	for k, v := range q.header {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var eb adminapi.ErrorBody
	if resp.StatusCode >= 300 {
		if err := json.Unmarshal(b, &eb); err != nil {
			t.Errorf("%s %s: %s with a body that is not a JSON error: %q", q.method, q.path, resp.Status, b)
		}
	}
	return resp.StatusCode, eb
}

// A web page open in a browser on the node must not drive the TCP admin API: cross-site and
// same-site requests, rebound Host names and state-changing requests without the admin header
// are refused with a JSON error and not carried out; shoal's own client keeps working.
func TestAdminTCPRefusesWebPages(t *testing.T) {
	up := newUpstream(t)
	keep := pushRandom(t, up, "test/keep", 32<<10, 2)
	pushRandom(t, up, "test/new", 32<<10, 1)
	d := startDaemon(t, up, withOps, func(c *Config) { c.AdminListen = "127.0.0.1:0" })
	addr := d.AdminAddr()
	_, port, err := net.SplitHostPort(addr)
	if err != nil || strings.HasPrefix(addr, "unix:") {
		t.Fatalf("admin address %q: want TCP", addr)
	}
	cl := adminFor(t, d)
	pull(t, cl, adminapi.PullRequest{Images: []string{"test/keep"}})
	kept := append(imageBlobs(t, keep), digest.Digest(mustDigest(t, keep).String()))
	up.reset()

	evil := map[string]string{"Origin": "http://evil.example", adminapi.Header: "1"}
	refused := []struct {
		name   string
		req    adminRequest
		status int
	}{
		{"pull from a foreign origin", adminRequest{method: "POST", path: "/v1/pull", body: `{"images":["test/new"]}`, header: evil}, 403},
		{"pull as a form post (no header)", adminRequest{method: "POST", path: "/v1/pull", body: `{"images":["test/new"]}`}, 403},
		{"rm from a foreign origin", adminRequest{method: "POST", path: "/v1/cache/rm?target=test/keep", header: evil}, 403},
		{"rm without the header", adminRequest{method: "POST", path: "/v1/cache/rm?target=test/keep"}, 403},
		{"rm from an opaque origin", adminRequest{method: "POST", path: "/v1/cache/rm?target=test/keep",
			header: map[string]string{"Origin": "null", adminapi.Header: "1"}}, 403},
		{"rm from another loopback port", adminRequest{method: "POST", path: "/v1/cache/rm?target=test/keep",
			header: map[string]string{"Origin": "http://127.0.0.1:1", adminapi.Header: "1"}}, 403},
		{"rm marked same-site", adminRequest{method: "POST", path: "/v1/cache/rm?target=test/keep",
			header: map[string]string{"Sec-Fetch-Site": "same-site", adminapi.Header: "1"}}, 403},
		{"rm marked cross-site", adminRequest{method: "POST", path: "/v1/cache/rm?target=test/keep",
			header: map[string]string{"Sec-Fetch-Site": "cross-site", adminapi.Header: "1"}}, 403},
		{"status through a rebound name", adminRequest{method: "GET", path: "/v1/status", host: "rebind.evil.example:" + port}, 421},
		{"export through a rebound name", adminRequest{method: "GET", path: "/v1/export?image=test/keep", host: "rebind.evil.example:" + port}, 421},
		{"export through a name under localhost", adminRequest{method: "GET", path: "/_shoal/export?images=test/keep", host: "localhost.evil.example"}, 421},
		{"status through a name that looks like an address", adminRequest{method: "GET", path: "/v1/status", host: "127.0.0.1.nip.io:" + port}, 421},
		{"status from a cross-site page", adminRequest{method: "GET", path: "/v1/status", header: map[string]string{"Sec-Fetch-Site": "cross-site"}}, 403},
		{"rm through a rebound name", adminRequest{method: "POST", path: "/v1/cache/rm?target=test/keep", host: "rebind.evil.example", header: map[string]string{adminapi.Header: "1"}}, 421},
	}
	hc := &http.Client{}
	for _, tc := range refused {
		status, eb := tc.req.send(t, hc, addr)
		if status != tc.status || eb.Code != adminapi.CodeForbidden || eb.Error == "" {
			t.Errorf("%s: %d %+v, want %d with code %q", tc.name, status, eb, tc.status, adminapi.CodeForbidden)
		}
	}
	if n := up.count("GET", "test/new"); n != 0 {
		t.Errorf("refused pulls reached the upstream: %d GETs of test/new", n)
	}
	for _, b := range kept {
		if _, err := d.store.Stat(t.Context(), b); err != nil {
			t.Errorf("%s gone after refused removals: %v", b, err)
		}
	}

	allowed := []struct {
		name string
		req  adminRequest
	}{
		{"status as curl sends it", adminRequest{method: "GET", path: "/v1/status"}},
		{"status by localhost", adminRequest{method: "GET", path: "/v1/status", host: "localhost:" + port}},
		{"status by another loopback address", adminRequest{method: "GET", path: "/v1/status", host: "127.0.0.2:" + port}},
		{"status by [::1]", adminRequest{method: "GET", path: "/v1/status", host: "[::1]:" + port}},
		{"status from its own page", adminRequest{method: "GET", path: "/v1/status",
			header: map[string]string{"Origin": "http://" + addr, "Sec-Fetch-Site": "same-origin"}}},
		{"status typed into the address bar", adminRequest{method: "GET", path: "/v1/status", header: map[string]string{"Sec-Fetch-Site": "none"}}},
		{"gc with the header", adminRequest{method: "POST", path: "/v1/cache/gc", header: map[string]string{adminapi.Header: "1"}}},
	}
	for _, tc := range allowed {
		if status, eb := tc.req.send(t, hc, addr); status != http.StatusOK {
			t.Errorf("%s: %d %+v, want 200", tc.name, status, eb)
		}
	}

	// shoal's client sends the header and the address as Host.
	if s, err := cl.Status(t.Context()); err != nil || s.Admin != addr {
		t.Errorf("status over TCP: %+v, %v", s, err)
	}
	if r, err := cl.CacheRemove(t.Context(), "test/keep"); err != nil || len(r.Removed) != len(kept) {
		t.Errorf("cache rm over TCP: %+v, %v; want %d items removed", r, err, len(kept))
	}
}

// The unix socket is out of a browser's reach: it needs no header, but still refuses what a
// browser marks as another site's request (a proxy in front of it).
func TestAdminSocketNeedsNoHeader(t *testing.T) {
	up := newUpstream(t)
	d := startDaemon(t, up, withOps)
	sock := strings.TrimPrefix(d.AdminAddr(), "unix:")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	if status, eb := (adminRequest{method: "POST", path: "/v1/cache/gc"}).send(t, hc, "admin"); status != http.StatusOK {
		t.Errorf("gc on the socket without the header: %d %+v, want 200", status, eb)
	}
	req := adminRequest{method: "POST", path: "/v1/cache/gc", header: map[string]string{"Origin": "http://evil.example"}}
	if status, eb := req.send(t, hc, "admin"); status != http.StatusForbidden || eb.Code != adminapi.CodeForbidden {
		t.Errorf("gc on the socket from a foreign origin: %d %+v, want 403", status, eb)
	}
}
