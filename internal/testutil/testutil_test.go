package testutil

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	n := 0
	if err := Poll(time.Second, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}, nil); err != nil || n != 3 {
		t.Fatalf("Poll = %v after %d calls", err, n)
	}
	err := Poll(20*time.Millisecond, func() error { return errors.New("never") }, nil)
	if err == nil || !strings.Contains(err.Error(), "never") {
		t.Fatalf("timeout: %v", err)
	}
	gone := errors.New("process exited")
	err = Poll(time.Minute, func() error { return errors.New("no answer") }, func(last error) error { return fmt.Errorf("%w: %v", gone, last) })
	if !errors.Is(err, gone) || !strings.Contains(err.Error(), "no answer") {
		t.Fatalf("abort: %v", err)
	}
}

// Two bodies over one link take as long as both one after the other: the rate is shared.
func TestLinkSharesTheRate(t *testing.T) {
	const rate, size = 8 << 20, 1 << 20
	l := NewLink(rate)
	start := time.Now()
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			n, err := io.Copy(io.Discard, l.Body(io.NopCloser(strings.NewReader(strings.Repeat("x", size)))))
			if err != nil || n != size {
				t.Errorf("copy: %d, %v", n, err)
			}
		})
	}
	wg.Wait()
	if took, floor := time.Since(start), 2*size*time.Second/rate*9/10; took < floor {
		t.Fatalf("2 MiB over an 8 MiB/s link took %s, want ≥ %s", took, floor)
	}
}

func TestReverseProxy(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Host+r.URL.Path)
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	px := httptest.NewServer(ReverseProxy(u, func(r *http.Response) error { r.Header.Set("X-Seen", "1"); return nil }))
	defer px.Close()
	resp, err := http.Get(px.URL + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if string(b) != u.Host+"/v2/" || resp.Header.Get("X-Seen") != "1" {
		t.Fatalf("got %q, X-Seen %q", b, resp.Header.Get("X-Seen"))
	}
}
