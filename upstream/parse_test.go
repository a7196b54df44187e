package upstream

import (
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker/auth"
)

func TestParseRateLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		limit, remaining string
		want             RateLimit
		ok               bool
	}{
		{"100;w=21600", "76;w=21600", RateLimit{Limit: 100, Remaining: 76, Window: 6 * time.Hour}, true},
		{"200", "199", RateLimit{Limit: 200, Remaining: 199}, true},
		{" 100 ; w = 21600 ", "5", RateLimit{Limit: 100, Remaining: 5, Window: 6 * time.Hour}, true},
		{"100, 100;w=21600", "99", RateLimit{Limit: 100, Remaining: 99}, true}, // several policies: first one
		{"100;W=60;burst=5", "1;w=60", RateLimit{Limit: 100, Remaining: 1, Window: time.Minute}, true},
		{"100;w=\"60\"", "", RateLimit{Limit: 100, Remaining: -1, Window: time.Minute}, true},
		{"", "7;w=3600", RateLimit{Limit: -1, Remaining: 7, Window: time.Hour}, true},
		{"100;w=abc", "x", RateLimit{Limit: 100, Remaining: -1}, true},
		{"100;w=-5", "1", RateLimit{Limit: 100, Remaining: 1}, true},
		{"", "", RateLimit{}, false},
		{"unlimited", "lots", RateLimit{}, false},
		{"-1", "-1", RateLimit{}, false},
		{"99999999999999999999999", "", RateLimit{}, false},
		{";w=21600", "", RateLimit{}, false},
	} {
		got, ok := parseRateLimit(tc.limit, tc.remaining)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseRateLimit(%q, %q) = %+v, %v; want %+v, %v", tc.limit, tc.remaining, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzParseRateLimit(f *testing.F) {
	for _, s := range [][2]string{
		{"100;w=21600", "76;w=21600"}, {"", ""}, {"100, 100;w=21600", "0"}, {";;;w=", "w=1"},
		{"100;w=9999999999999999999", "1;w=0"}, {"\xff;w=\x00", "1,2,3"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, limit, remaining string) {
		rl, ok := parseRateLimit(limit, remaining)
		if !ok {
			if rl != (RateLimit{}) {
				t.Fatalf("not ok but %+v", rl)
			}
			return
		}
		if rl.Limit < -1 || rl.Remaining < -1 || (rl.Limit == -1 && rl.Remaining == -1) {
			t.Fatalf("bad values %+v", rl)
		}
		if rl.Window < 0 || rl.Window > 366*24*time.Hour {
			t.Fatalf("bad window %+v", rl)
		}
	})
}

func TestParseChallenge(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		headers []string
		want    challenge
		ok      bool
	}{
		{[]string{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`},
			challenge{auth.BearerAuth, "https://auth.docker.io/token", "registry.docker.io", "repository:library/alpine:pull"}, true},
		{[]string{`Bearer realm="https://auth.example.com/token?a=1,2",service="svc"`},
			challenge{auth.BearerAuth, "https://auth.example.com/token?a=1,2", "svc", ""}, true},
		{[]string{`bearer REALM="https://x.example/t\"q\"",Service=s`},
			challenge{auth.BearerAuth, `https://x.example/t"q"`, "s", ""}, true},
		{[]string{`Basic realm="Registry Realm"`, `Bearer realm="https://a.example/t"`},
			challenge{auth.BearerAuth, "https://a.example/t", "", ""}, true},
		{[]string{`Basic realm="Registry Realm"`}, challenge{scheme: auth.BasicAuth}, true},
		{[]string{`Bearer service="no realm"`}, challenge{}, false},
		{[]string{`Bearer service="no realm"`, `Basic`}, challenge{scheme: auth.BasicAuth}, true},
		{[]string{`Negotiate abc`}, challenge{}, false},
		{[]string{``}, challenge{}, false},
	} {
		h := http.Header{"Www-Authenticate": tc.headers}
		got, ok := parseChallenge(h)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseChallenge(%q) = %+v, %v; want %+v, %v", tc.headers, got, ok, tc.want, tc.ok)
		}
	}
}

// FuzzChallenge feeds arbitrary WWW-Authenticate values through the challenge parser and
// the realm check: nothing may panic, and a realm that passes for a public upstream is
// never a local or private address.
func FuzzChallenge(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`,
		`Bearer realm="https://auth.docker.io/token?a=1,2",service="x,y"`,
		`Bearer realm="http://169.254.169.254/latest",service="x"`,
		`Bearer realm="https://[::ffff:10.0.0.1]/t"`,
		`Bearer realm="https://user:pw@auth.docker.io/t"`,
		`Bearer realm="https://auth.docker.io\"/t`,
		`Basic realm="x"`, `Bearer realm=`, `Bearer ,,,,`, `Bearer realm="\`,
	} {
		f.Add(s)
	}
	pub, _ := parseEndpoint(DockerHubEndpoint)
	priv, _ := parseEndpoint("http://127.0.0.1:5001")
	public := &registry{host: DockerHub, endpoint: pub}
	private := &registry{host: "127.0.0.1:5001", endpoint: priv, private: true}
	f.Fuzz(func(t *testing.T, header string) {
		ch, ok := parseChallenge(http.Header{"Www-Authenticate": {header}})
		if !ok || ch.scheme != auth.BearerAuth {
			return
		}
		if ch.realm == "" {
			t.Fatal("bearer challenge without realm accepted")
		}
		u, err := url.Parse(ch.realm)
		if err != nil {
			return
		}
		if checkTarget(public, u, true) == nil {
			if u.Scheme != "https" || u.User != nil {
				t.Fatalf("public upstream accepted realm %q", ch.realm)
			}
			if c, _ := hostClass(u.Hostname()); c != classPublic {
				t.Fatalf("public upstream accepted local realm %q", ch.realm)
			}
		}
		if checkTarget(private, u, true) == nil {
			if c, _ := hostClass(u.Hostname()); c == classForbidden {
				t.Fatalf("private upstream accepted forbidden realm %q", ch.realm)
			}
		}
	})
}

func TestParseContentRange(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		v            string
		start, total int64
		ok           bool
	}{
		{"bytes 100-999/1000", 100, 1000, true},
		{"bytes 0-0/1", 0, 1, true},
		{"bytes 5-9/*", 5, -1, true},
		{"bytes 5-9/9", 0, 0, false},
		{"bytes 9-5/100", 0, 0, false},
		{"bytes -5/100", 0, 0, false},
		{"items 0-1/2", 0, 0, false},
		{"bytes */100", 0, 0, false},
		{"", 0, 0, false},
	} {
		s, tot, ok := ParseContentRange(tc.v)
		if ok != tc.ok || (ok && (s != tc.start || tot != tc.total)) {
			t.Errorf("ParseContentRange(%q) = %d, %d, %v; want %d, %d, %v", tc.v, s, tot, ok, tc.start, tc.total, tc.ok)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		v    string
		want time.Duration
	}{
		{"2", 2 * time.Second},
		{"0", 0},
		{"-3", 0},
		{"soon", 0},
		{"", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{"99999999", 24 * time.Hour},
	} {
		if got := parseRetryAfter(tc.v, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tc.v, got, tc.want)
		}
	}
}

func TestParseOCIError(t *testing.T) {
	t.Parallel()
	code, msg := parseOCIError([]byte(`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown\n\u001b[31m"},{"code":"X"}]}`))
	if code != "MANIFEST_UNKNOWN" || msg != "manifest unknown[31m" {
		t.Errorf("parseOCIError = %q, %q", code, msg)
	}
	if code, msg := parseOCIError([]byte(`<html>nope</html>`)); code != "" || msg != "" {
		t.Errorf("parseOCIError(html) = %q, %q", code, msg)
	}
}
