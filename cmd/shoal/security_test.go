package main

import (
	"bytes"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// statusFrom is the status of GET url from a given loopback source address (-1: no answer).
func statusFrom(src, url string) int {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return -1
	}
	resp.Body.Close()
	return resp.StatusCode
}

// startDaemon runs the shoal binary with config file cfg on a free loopback port (P2P, metrics
// and admin off) and returns its mirror address and output; it is stopped at cleanup.
func startDaemon(t *testing.T, cfg string, env ...string) (string, *lockedBuffer, *exec.Cmd) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(shoalBin, "daemon", "--config", cfg, "--listen", addr, "--data-dir", filepath.Join(t.TempDir(), "data"),
		"--p2p=false", "--metrics-listen", "off", "--admin-listen", "off")
	cmd.Env = append(os.Environ(), env...)
	logs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("daemon output:\n%s", logs)
		}
	})
	return addr, logs, cmd
}

// waitStatus polls GET url from src until it answers want (15 s at most).
func waitStatus(t *testing.T, src, url string, want int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := statusFrom(src, url)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s from %s: %d, want %d", url, src, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSIGHUPReloadsSecurity runs the daemon binary, changes its config file's address lists,
// sends SIGHUP and sees the new lists applied; a broken file on SIGHUP is refused and the
// running settings stay.
func TestSIGHUPReloadsSecurity(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "shoal.yaml")
	write := func(s string) {
		if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("security:\n  deny_cidr: [127.0.0.2]\n")
	addr, logs, cmd := startDaemon(t, cfg)
	url := "http://" + addr + "/v2/"
	expect := func(src string, want int) { t.Helper(); waitStatus(t, src, url, want) }
	expect("127.0.0.1", 200)
	expect("127.0.0.2", 403)

	write("security:\n  deny_cidr: [127.0.0.3]\n")
	cmd.Process.Signal(syscall.SIGHUP)
	expect("127.0.0.2", 200)
	expect("127.0.0.3", 403)

	write("security:\n  deny_cidr: [not-an-address]\n")
	cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(logs.String(), "reload refused") {
		if time.Now().After(deadline) {
			t.Fatal("a broken config on SIGHUP was not reported")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := statusFrom("127.0.0.3", url); got != 403 {
		t.Errorf("after a refused reload, 127.0.0.3 gets %d; the running lists should stay", got)
	}
	if cmd.ProcessState != nil {
		t.Fatal("the daemon exited")
	}
}

// An empty SHOAL_* variable (an unset value in a manifest template) must not override the
// config file: here SHOAL_DENY_CIDR= would otherwise empty the deny list.
func TestEmptyEnvDoesNotOverrideConfig(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "shoal.yaml")
	if err := os.WriteFile(cfg, []byte("security:\n  deny_cidr: [127.0.0.2]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, _, _ := startDaemon(t, cfg, "SHOAL_DENY_CIDR=", "SHOAL_ALLOW_CIDR= ", "SHOAL_HTPASSWD=")
	url := "http://" + addr + "/v2/"
	waitStatus(t, "127.0.0.1", url, 200)
	if got := statusFrom("127.0.0.2", url); got != 403 {
		t.Fatalf("127.0.0.2 got %d, want 403: an empty SHOAL_DENY_CIDR emptied the config file's deny list", got)
	}
}
