package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestPullProgressBarsInTerminal runs `shoal pull` inside a real terminal (a detached tmux
// session) and reads the screen with capture-pane: one progress bar per blob that fills while
// the (throttled) upstream sends, each finishing once at 100%, redrawn in place (no duplicated
// lines, no escape codes left on screen). The plain, non-terminal output is checked by
// TestOperatorCLI.
func TestPullProgressBarsInTerminal(t *testing.T) {
	t.Parallel()
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Fatal("tmux not found on PATH: run `bash .ci/run` once, or `apt-get install tmux`")
	}
	up := upstreams(t)
	hub := startUpstreamProxy(t, up.Open.URL)
	hub.throttle(4 << 20) // 6 MiB layers take about 1.5 s: long enough to see bars mid-way
	d := startOpsShoal(t, shoalOpts{registries: []string{"docker.io=" + hub.URL}})
	img := up.Img.Conc

	sock := filepath.Join(t.TempDir(), "tmux.sock")
	env := []string{"TERM=xterm-256color"}
	tm := func(args ...string) (string, error) {
		return runCmd(t.Context(), 20*time.Second, env, append([]string{tmux, "-S", sock}, args...)...)
	}
	script := fmt.Sprintf("%s --admin %s pull %s; echo EXIT=$?; sleep 600", shoalBin, d.Admin, img.Ref())
	if out, err := tm("new-session", "-d", "-s", "pull", "-x", "200", "-y", "40", "sh", "-c", script); err != nil {
		t.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	// Not tm: t.Context() is already cancelled when cleanups run, and a tmux server left behind
	// keeps the test's `sleep 600` (and any fd it inherited, such as a flock) for ten minutes.
	t.Cleanup(func() { _, _ = runCmd(context.Background(), 10*time.Second, env, tmux, "-S", sock, "kill-server") })

	partial := regexp.MustCompile(`\[=*>\s*\]\s+([1-9]|[1-9][0-9])%`)
	var screen string
	sawPartial := false
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, err := tm("capture-pane", "-p", "-t", "pull")
		if err != nil {
			t.Fatalf("tmux capture-pane: %v\n%s", err, out)
		}
		screen = out
		if partial.MatchString(screen) {
			sawPartial = true
		}
		if strings.Contains(screen, "EXIT=") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pull did not finish in the terminal within 90 s; screen:\n%s", screen)
		}
		time.Sleep(50 * time.Millisecond) // polling the screen, not synchronisation
	}
	t.Logf("final screen:\n%s", strings.TrimRight(screen, "\n "))
	if !strings.Contains(screen, "EXIT=0") {
		t.Fatalf("pull in a terminal failed:\n%s", screen)
	}
	if !sawPartial {
		t.Errorf("never saw a bar between 1%% and 99%% while the throttled pull ran")
	}
	if strings.Contains(screen, "\x1b") || strings.Contains(screen, "[2K") || strings.Contains(screen, "[A") {
		t.Errorf("escape sequences visible on screen:\n%q", screen)
	}
	full := "[" + strings.Repeat("=", 30) + "] 100%"
	for _, b := range img.Blobs {
		short := b[:len("sha256:")+12]
		n := 0
		for _, line := range strings.Split(screen, "\n") {
			if strings.Contains(line, short) {
				n++
				if !strings.Contains(line, full) || !strings.Contains(line, "done, from upstream") {
					t.Errorf("blob %s's line is not a full bar done from upstream: %q", short, line)
				}
			}
		}
		if n != 1 {
			t.Errorf("blob %s appears on %d lines, want 1 (redrawn in place)", short, n)
		}
	}
	if !strings.Contains(screen, "pulled 1 image(s): 4 blobs") {
		t.Errorf("no summary line on screen:\n%s", screen)
	}

	// A terminal too short for the block: finished lines scroll out above it, each blob still
	// shows exactly once (in the scrollback or on screen).
	script = fmt.Sprintf("%s --admin %s pull %s; echo EXIT=$?; sleep 600", shoalBin, d.Admin, img.Ref())
	if out, err := tm("new-session", "-d", "-s", "short", "-x", "200", "-y", "4", "sh", "-c", script); err != nil {
		t.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	eventually(t, 60*time.Second, nil, "pull in a 4-line terminal", func() error {
		out, err := tm("capture-pane", "-p", "-S", "-100", "-t", "short")
		if err != nil {
			return err
		}
		screen = out
		if !strings.Contains(screen, "EXIT=") {
			return fmt.Errorf("not finished:\n%s", screen)
		}
		return nil
	})
	for _, b := range img.Blobs {
		short := b[:len("sha256:")+12]
		if n := strings.Count(screen, short); n != 1 || !strings.Contains(screen, "EXIT=0") {
			t.Errorf("4-line terminal: blob %s shows %d times, want 1:\n%s", short, n, screen)
		}
	}
}
