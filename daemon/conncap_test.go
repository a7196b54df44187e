package daemon

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// dialFrom opens a real TCP connection to addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ping sends GET /v2/ on c and reads the answer, leaving the connection open (keep-alive).
func ping(c net.Conn, br *bufio.Reader) error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

// One address cannot hold more than max_conns_per_client mirror connections: the next ones
// are closed unanswered, counted and logged once; other addresses, the connections already
// held and /metrics keep working, and a closed connection frees its slot.
func TestMirrorConnectionCapPerClient(t *testing.T) {
	up := newUpstream(t)
	d, logs := startDaemonLogged(t, up, func(c *Config) { c.Guard.MaxConnsPerClient = 4; c.MetricsListen = "127.0.0.1:0" })

	type held struct {
		c  net.Conn
		br *bufio.Reader
	}
	var hs []held
	for range 4 { // idle keep-alive connections, each after one request
		c := dialFrom(t, "127.0.0.1", d.Addr())
		h := held{c, bufio.NewReader(c)}
		if err := ping(h.c, h.br); err != nil {
			t.Fatalf("connection %d: %v", len(hs)+1, err)
		}
		hs = append(hs, h)
	}
	for i := range 3 {
		c := dialFrom(t, "127.0.0.1", d.Addr())
		err := ping(c, bufio.NewReader(c))
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection %d over the cap: %v, want it closed at once", 5+i, err)
		}
	}
	if err := ping(hs[0].c, hs[0].br); err != nil {
		t.Errorf("a held connection stopped working: %v", err)
	}
	other := dialFrom(t, "127.0.0.2", d.Addr())
	if err := ping(other, bufio.NewReader(other)); err != nil {
		t.Errorf("another address is refused too: %v", err)
	}
	mfs := scrape(t, d.MetricsAddr())
	if v, _ := metricValue(mfs, "shoal_guard_connections_refused_total", nil); v != 3 {
		t.Errorf("shoal_guard_connections_refused_total = %v, want 3", v)
	}
	if v, _ := metricValue(mfs, "shoal_http_open_connections", nil); v != 5 {
		t.Errorf("shoal_http_open_connections = %v, want 5", v)
	}
	if n := strings.Count(logs.String(), "mirror connection refused"); n != 1 {
		t.Errorf("%d log lines about refused connections, want 1 (once a minute):\n%s", n, logs.String())
	}

	hs[1].c.Close()
	waitFor(t, func() bool {
		c := dialFrom(t, "127.0.0.1", d.Addr())
		defer c.Close()
		return ping(c, bufio.NewReader(c)) == nil
	})
}
