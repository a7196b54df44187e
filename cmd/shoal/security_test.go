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

// TestSIGHUPReloadsSecurity runs the daemon binary, changes its config file's address lists,
// sends SIGHUP and sees the new lists applied; a broken file on SIGHUP is refused and the
// running settings stay.
func TestSIGHUPReloadsSecurity(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(dir, "shoal.yaml")
	write := func(s string) {
		if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("security:\n  deny_cidr: [127.0.0.2]\n")
	cmd := exec.Command(shoalBin, "daemon", "--config", cfg, "--listen", addr, "--data-dir", filepath.Join(dir, "data"),
		"--p2p=false", "--metrics-listen", "off", "--admin-listen", "off")
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
	url := "http://" + addr + "/v2/"
	waitStatus := func(src string, want int) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			got := statusFrom(src, url)
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET /v2/ from %s: %d, want %d", src, got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitStatus("127.0.0.1", 200)
	waitStatus("127.0.0.2", 403)

	write("security:\n  deny_cidr: [127.0.0.3]\n")
	cmd.Process.Signal(syscall.SIGHUP)
	waitStatus("127.0.0.2", 200)
	waitStatus("127.0.0.3", 403)

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
