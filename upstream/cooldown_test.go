package upstream

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestBackOffAfter429 checks the per-registry back-off: after the client gives up on a 429,
// no request reaches that registry until the back-off ends (Retry-After when given, else
// an exponential back-off), other registries are unaffected, and a success ends it.
func TestBackOffAfter429(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		retryAfter string
		wait       time.Duration // how long the back-off must last
	}{
		{"without Retry-After", "", cooldownBase},
		{"with Retry-After", "40", 40 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := newUpstream(t, nil)
			other := newUpstream(t, nil)
			up.image("library/alpine", "latest")
			other.image("library/alpine", "latest")
			var mu sync.Mutex
			busy := true
			up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
				mu.Lock()
				defer mu.Unlock()
				if !busy {
					return false
				}
				if tc.retryAfter != "" {
					w.Header().Set("Retry-After", tc.retryAfter)
				}
				w.WriteHeader(http.StatusTooManyRequests)
				io.WriteString(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit"}]}`)
				return true
			})
			cfg := cfgFor(up, RegistryConfig{})
			cfg.Retries = 0
			cfg.Registries[other.host] = RegistryConfig{URL: other.srv.URL}
			c := newTestClient(t, cfg, nil)
			ctx := t.Context()

			_, err := c.HeadManifest(ctx, up.host, "library/alpine", "latest")
			var ue *Error
			if !errors.As(err, &ue) || ue.Status != http.StatusTooManyRequests {
				t.Fatalf("err = %v, want 429", err)
			}
			n := len(up.requests())
			for _, step := range []time.Duration{0, tc.wait / 2, tc.wait/2 - time.Second} {
				c.clock.Advance(step)
				_, err = c.HeadManifest(ctx, up.host, "library/alpine", "latest")
				if !errors.As(err, &ue) || ue.Status != http.StatusTooManyRequests || ue.RetryAfter <= 0 || ue.RetryAfter > tc.wait {
					t.Fatalf("during back-off: err = %v, want a 429 with Retry-After in (0, %s]", err, tc.wait)
				}
				if got := len(up.requests()); got != n {
					t.Fatalf("during back-off the registry got %d more requests", got-n)
				}
			}
			if left, ok := c.BackingOff(up.host); !ok || left > time.Second {
				t.Errorf("BackingOff = %s, %v; want ≤1s left", left, ok)
			}
			if _, err := c.HeadManifest(ctx, other.host, "library/alpine", "latest"); err != nil {
				t.Fatalf("another registry was held back too: %v", err)
			}

			// Still busy when the back-off ends: it starts again (longer without Retry-After).
			c.clock.Advance(time.Second)
			_, err = c.HeadManifest(ctx, up.host, "library/alpine", "latest")
			if got := len(up.requests()); got != n+1 || !errors.As(err, &ue) {
				t.Fatalf("after the back-off: %d requests, err %v; want one more request and a 429", got-n, err)
			}
			left, _ := c.BackingOff(up.host)
			if want := tc.wait; tc.retryAfter == "" {
				want = 2 * cooldownBase
				if left != want {
					t.Errorf("second back-off %s, want %s", left, want)
				}
			}
			c.clock.Advance(left)
			mu.Lock()
			busy = false
			mu.Unlock()
			if _, err := c.HeadManifest(ctx, up.host, "library/alpine", "latest"); err != nil {
				t.Fatalf("after recovery: %v", err)
			}
			if _, ok := c.BackingOff(up.host); ok {
				t.Error("success did not end the back-off")
			}
		})
	}
}

// FuzzTokenResponse feeds arbitrary token-server answers (status and body) to the token
// fetch, over an in-memory transport: nothing may panic, a token is never taken from an
// error status (≥ 400), its lifetime is positive, and the password never appears in an error, even when the
// server echoes it back.
func FuzzTokenResponse(f *testing.F) {
	const secret = "hunter2-very-secret"
	for _, s := range []struct {
		status int
		body   string
	}{
		{200, `{"token":"abc","expires_in":300}`},
		{200, `{"access_token":"abc","expires_in":300}`},
		{200, `{"token":"abc","access_token":"def","expires_in":-5,"issued_at":"2030-01-01T00:00:00Z"}`},
		{200, `{"token":""}`},
		{200, `{"token":"abc","expires_in":1e999}`},
		{200, `{"token":` + strings.Repeat("[", 10000)},
		{200, `not json`},
		{200, ``},
		{401, `{"errors":[{"code":"UNAUTHORIZED","message":"bad password ` + secret + `"}]}`},
		{404, ``},
		{405, `{"details":"` + secret + `"}`},
		{500, strings.Repeat("x", 70000)},
		{302, ``},
	} {
		f.Add(s.status, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		if status < 100 || status > 999 {
			return
		}
		cfg := Config{Registries: map[string]RegistryConfig{"registry.example.com": {
			URL: "https://registry.example.com", Username: "bob", Password: secret}}, OnlyConfigured: true}
		c, err := newClient(cfg, slog.New(slog.DiscardHandler), nil)
		if err != nil {
			t.Fatal(err)
		}
		c.tokenHTTP = &http.Client{Transport: limitBody{n: maxTokenBody, base: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			return &http.Response{StatusCode: status, Status: strconv.Itoa(status), Header: http.Header{"Content-Type": {"application/json"}},
				Body: io.NopCloser(strings.NewReader(string(body))), ContentLength: int64(len(body)), Request: r}, nil
		})}, CheckRedirect: checkRedirect}
		reg, _ := c.registry("registry.example.com")
		ch := challenge{realm: "https://auth.example.com/token", service: "registry.example.com"}
		ctx, cancel := context.WithTimeout(withRegistry(context.Background(), reg), 5*time.Second)
		defer cancel()
		tok, lifetime, err := c.fetchToken(ctx, reg, ch, pullScope("library/alpine"))
		if err != nil {
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error shows the password: %v", err)
			}
			return
		}
		if status >= 400 || tok == "" || lifetime <= 0 {
			t.Fatalf("status %d: accepted token %q with lifetime %s", status, tok, lifetime)
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
