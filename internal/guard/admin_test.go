package guard

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/shoal-mirror/shoal/adminapi"
)

// Admin on its own, over a real loopback listener: what a web page can send is refused with the
// admin API's JSON error and never reaches the handler; shoal's client and curl get through.
// (TestAdminTCPRefusesWebPages in package daemon runs the same against a whole daemon.)
func TestAdminRefusesWebPages(t *testing.T) {
	t.Parallel()
	var reached atomic.Int32
	srv := httptest.NewServer(Admin(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached.Add(1) }), true))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	for _, tc := range []struct {
		name, method, host string
		header             map[string]string
		status             int
	}{
		{"curl GET", "GET", "", nil, 200},
		{"client POST with the header", "POST", "", map[string]string{adminapi.Header: "1"}, 200},
		{"by localhost", "GET", "localhost", nil, 200},
		{"own page", "GET", "", map[string]string{"Origin": "http://" + host, "Sec-Fetch-Site": "same-origin"}, 200},
		{"form POST without the header", "POST", "", nil, 403},
		{"foreign origin", "POST", "", map[string]string{"Origin": "http://evil.example", adminapi.Header: "1"}, 403},
		{"same-site page", "GET", "", map[string]string{"Sec-Fetch-Site": "same-site"}, 403},
		{"rebound name", "GET", "rebind.evil.example", nil, 421},
		{"name that looks like an address", "GET", "127.0.0.1.nip.io", nil, 421},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), tc.method, srv.URL+"/v1/status", nil)
		if tc.host != "" {
			req.Host = tc.host
		}
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		before := reached.Load()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var eb adminapi.ErrorBody
		jerr := json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		switch {
		case resp.StatusCode != tc.status:
			t.Errorf("%s: %d, want %d", tc.name, resp.StatusCode, tc.status)
		case tc.status == 200 && reached.Load() != before+1:
			t.Errorf("%s: allowed but the handler did not run", tc.name)
		case tc.status != 200 && (reached.Load() != before || jerr != nil || eb.Code != adminapi.CodeForbidden || eb.Error == "" ||
			resp.Header.Get("Content-Type") != "application/json"):
			t.Errorf("%s: handler ran %v, body %+v (%v), Content-Type %q; want a JSON %s error and no handler",
				tc.name, reached.Load() != before, eb, jerr, resp.Header.Get("Content-Type"), adminapi.CodeForbidden)
		}
	}
}
