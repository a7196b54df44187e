package admin

import (
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/shoal-mirror/shoal/adminapi"
)

// The admin API has no authentication: whoever builds the Options, New never listens for it
// on TCP off loopback.
func TestAdminListensOnLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		spec string
		ok   bool
	}{
		{"", true}, {"off", true}, {"unix:/run/shoal/admin.sock", true},
		{"127.0.0.1:0", true}, {"127.0.0.9:0", true}, {"localhost:0", true}, {"[::1]:0", true},
		{"0.0.0.0:0", false}, {":0", false}, {"192.0.2.1:9096", false}, {"[::]:0", false},
	} {
		if err := CheckAdminListen(tc.spec); (err == nil) != tc.ok {
			t.Errorf("CheckAdminListen(%q) = %v, want ok=%v", tc.spec, err, tc.ok)
		}
	}
	log := slog.New(slog.DiscardHandler)
	_, err := New(Options{Log: log, AdminListen: "0.0.0.0:0", MetricsListen: "off"})
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Key != "admin_listen" {
		t.Fatalf("New with admin on 0.0.0.0: %v, want a config error for admin_listen", err)
	}

	s, err := New(Options{Log: log, AdminListen: "127.0.0.1:0", MetricsListen: "off"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := adminapi.ParseAddr(s.AdminAddr())
	if err != nil || a.Network != "tcp" {
		t.Fatalf("AdminAddr %q: %v", s.AdminAddr(), err)
	}
	host, _, _ := net.SplitHostPort(a.Address)
	if host != "127.0.0.1" || s.MetricsAddr() != "" || s.ConsoleAddr() != "" {
		t.Errorf("addresses: admin %s, metrics %q, console %q", s.AdminAddr(), s.MetricsAddr(), s.ConsoleAddr())
	}
	s.close()
}

func TestParseImageRef(t *testing.T) {
	for _, tc := range []struct {
		in, want, familiar string
	}{
		{"alpine", "docker.io/library/alpine:latest", "alpine:latest"},
		{"alpine:3", "docker.io/library/alpine:3", "alpine:3"},
		{"ghcr.io/org/app:v1", "ghcr.io/org/app:v1", "ghcr.io/org/app:v1"},
		{"localhost:5001/app@sha256:" + sixtyFourA, "localhost:5001/app@sha256:" + sixtyFourA, "localhost:5001/app"},
	} {
		r, err := parseImageRef(tc.in, "docker.io")
		if err != nil || r.String() != tc.want || r.familiar() != tc.familiar {
			t.Errorf("parseImageRef(%q) = %s / %s (%v), want %s / %s", tc.in, r, r.familiar(), err, tc.want, tc.familiar)
		}
	}
	for _, bad := range []string{"", "Alpine", "app@sha256:short", "app:bad tag"} {
		if _, err := parseImageRef(bad, "docker.io"); err == nil {
			t.Errorf("parseImageRef(%q): accepted", bad)
		}
	}
}

const sixtyFourA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// The route label stays within a small set whatever path a client sends.
func TestRouteOf(t *testing.T) {
	for path, want := range map[string]string{
		"/v2/": "base", "/v2": "base", "/healthz": "health", "/v2/x/manifests/latest": "manifest",
		"/v2/x/blobs/sha256:" + sixtyFourA: "blob", "/v2/x/tags/list": "tags", "/v2/x/referrers/sha256:1": "referrers",
		"/hf/api/models/a/b": "file_meta", "/anything/else": "other", "/v2/x/y": "other",
	} {
		if got := routeOf(path); got != want {
			t.Errorf("routeOf(%q) = %q, want %q", path, got, want)
		}
	}
}

// The timeline keeps the last hour by minute and forgets what is older.
func TestTimelineLastHour(t *testing.T) {
	var tl timeline
	now := time.Date(2026, 12, 6, 8, 30, 10, 0, time.UTC)
	tl.add(now.Add(-61*time.Minute), "upstream", 100) // same ring slot as a minute ago, an hour older
	tl.add(now.Add(-time.Minute), "peer", 7)
	tl.add(now, "store", 5)
	tl.add(now, "store", 6)
	got := tl.minutes(now)
	if len(got.Minutes) != timelineMinutes {
		t.Fatalf("%d minutes, want %d", len(got.Minutes), timelineMinutes)
	}
	last, prev := got.Minutes[timelineMinutes-1], got.Minutes[timelineMinutes-2]
	if last.Requests["store"] != 2 || last.Bytes["store"] != 11 || prev.Requests["peer"] != 1 || prev.Requests["upstream"] != 0 {
		t.Errorf("last minutes: %+v, %+v", prev, last)
	}
	if !last.Start.Equal(now.Truncate(time.Minute)) {
		t.Errorf("last minute starts %s, want %s", last.Start, now.Truncate(time.Minute))
	}
}
