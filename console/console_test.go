package console

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/shoal-mirror/shoal/adminapi"
)

func TestSameOrigin(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header map[string]string
		ok     bool
	}{
		{"browser form, same origin", map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:9097"}, true},
		{"fetch, same origin, no Origin", map[string]string{"Sec-Fetch-Site": "same-origin"}, true},
		{"old browser: Origin only", map[string]string{"Origin": "http://127.0.0.1:9097"}, true},
		{"https behind a proxy", map[string]string{"Origin": "https://127.0.0.1:9097"}, true},
		{"nothing (curl)", nil, false},
		{"another site", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, false},
		{"another loopback port", map[string]string{"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:8080"}, false},
		{"typed into the address bar", map[string]string{"Sec-Fetch-Site": "none"}, false},
		{"foreign Origin, no Sec-Fetch-Site", map[string]string{"Origin": "http://127.0.0.1:8080"}, false},
		{"same-origin but a foreign Origin", map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://evil.example"}, false},
		{"opaque Origin", map[string]string{"Origin": "null"}, false},
	} {
		r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:9097/act/rm", nil)
		for k, v := range tc.header {
			r.Header.Set(k, v)
		}
		if err := sameOrigin(r); (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestLoopbackHost(t *testing.T) {
	for h, want := range map[string]bool{
		"127.0.0.1:9097": true, "localhost:9097": true, "LOCALHOST": true, "[::1]:9097": true, "[::1]": true,
		"127.8.9.10": true, "10.0.0.1:9097": false, "evil.example:9097": false, "localhost.evil.example": false,
		"[fe80::1%eth0]:1": false, "": false,
	} {
		if got := loopbackHost(h); got != want {
			t.Errorf("loopbackHost(%q) = %v, want %v", h, got, want)
		}
	}
}

// The chart draws one bar segment per source and minute with answers, scaled to the busiest
// minute, and nothing for an idle hour.
func TestChart(t *testing.T) {
	now := time.Now().Truncate(time.Minute)
	tl := adminapi.Timeline{}
	for i := range 60 {
		tl.Minutes = append(tl.Minutes, adminapi.TimelineMinute{Start: now.Add(time.Duration(i-59) * time.Minute), Requests: map[string]int64{}, Bytes: map[string]int64{}})
	}
	if svg := string(chart(tl, false)); strings.Contains(svg, "<rect") || !strings.Contains(svg, `data-max="0"`) {
		t.Errorf("idle hour: %s", svg)
	}
	tl.Minutes[10].Requests["store"], tl.Minutes[10].Requests["upstream"] = 3, 1
	tl.Minutes[59].Requests["peer"] = 8
	svg := string(chart(tl, false))
	if n := strings.Count(svg, "<rect"); n != 3 || !strings.Contains(svg, `data-max="8"`) {
		t.Errorf("%d bars, want 3, max 8: %s", n, svg)
	}
	for _, want := range []string{`class="bar src-store"`, `class="bar src-upstream"`, `class="bar src-peer"`} {
		if !strings.Contains(svg, want) {
			t.Errorf("no %s", want)
		}
	}
}
