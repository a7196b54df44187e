package main

import (
	"bufio"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const nobody = 65534

// README's first command, run by a user who cannot write /var/lib/shoal (nobody), starts a
// mirror that keeps its state under ~/.local/state/shoal (or $XDG_STATE_HOME/shoal), says so
// in its start-up line, and `shoal status` run by the same user finds that daemon's socket.
// Before, it stopped at once: "open store in /var/lib/shoal: open /var/lib/shoal/LOCK:
// permission denied".
func TestNobodyRunsTheFirstCommand(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test runs the daemon as nobody: it needs root (the CI runs as root)")
	}
	// Only the listen address differs from README's command: tests run side by side on this
	// machine, and 127.0.0.1:5000 may be someone's. The metrics port likewise.
	for _, tc := range []struct {
		name string
		xdg  bool
	}{{"home", false}, {"xdg_state_home", true}} {
		t.Run(tc.name, func(t *testing.T) {
			home := nobodyDir(t)
			env := []string{"HOME=" + home, "PATH=/usr/bin:/bin", "SHOAL_LISTEN=" + freeAddr(t), "SHOAL_METRICS_LISTEN=off"}
			want := filepath.Join(home, ".local", "state", "shoal")
			if tc.xdg {
				env = append(env, "XDG_STATE_HOME="+filepath.Join(home, "state"))
				want = filepath.Join(home, "state", "shoal")
			}
			line := startAsNobody(t, env, "daemon")
			if !strings.Contains(line, "data_dir="+want+" ") || !strings.Contains(line, `data_dir_why="/var/lib/shoal is not writable for uid 65534"`) {
				t.Fatalf("start-up line does not name %s and why:\n%s", want, line)
			}
			if fi, err := os.Stat(want); err != nil || fi.Mode().Perm() != 0o700 {
				t.Fatalf("per-user data dir %s: %v, want mode 0700 (XDG base directory spec)", want, err)
			}
			addr := strings.TrimPrefix(env[2], "SHOAL_LISTEN=")
			resp, err := http.Get("http://" + addr + "/v2/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("GET /v2/: %s", resp.Status)
			}
			out, code := runAsNobody(t, env, "status")
			if code != 0 || !strings.Contains(out, want) {
				t.Fatalf("shoal status as nobody: exit %d\n%s", code, out)
			}
			// A data dir the user names is used as named: no silent move.
			out, code = runAsNobody(t, append(env[:len(env):len(env)], "SHOAL_DATA_DIR=/var/lib/shoal", "SHOAL_LISTEN="+freeAddr(t)), "daemon")
			if code == 0 || !strings.Contains(out, "/var/lib/shoal") || !strings.Contains(out, "permission denied") {
				t.Fatalf("--data-dir /var/lib/shoal as nobody: exit %d\n%s", code, out)
			}
		})
	}
}

// nobodyDir is a fresh directory nobody owns, under a parent nobody can enter.
func nobodyDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "shoal-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(d, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	// The test binary's directory is 0700; nobody must be able to run it.
	if err := os.Chmod(filepath.Dir(shoalBin), 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func asNobody(cmd *exec.Cmd, env []string) {
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
}

// startAsNobody starts shoal as nobody and returns its "shoal mirror listening" line; the
// process is stopped at cleanup.
func startAsNobody(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(shoalBin, args...)
	asNobody(cmd, env)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var seen []string
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("shoal exited before listening:\n%s", strings.Join(seen, "\n"))
			}
			seen = append(seen, l)
			if strings.Contains(l, `msg="shoal mirror listening"`) {
				go func() { // keep draining so the daemon never blocks on stderr
					for range lines {
					}
				}()
				return l
			}
		case <-deadline:
			t.Fatalf("no start-up line in 20 s:\n%s", strings.Join(seen, "\n"))
		}
	}
}

func runAsNobody(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(shoalBin, args...)
	asNobody(cmd, env)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}
