package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"gopkg.in/yaml.v3"

	"github.com/shoal-mirror/shoal/daemon"
)

var shoalBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "shoal-cli-")
	if err != nil {
		panic(err)
	}
	shoalBin = filepath.Join(dir, "shoal")
	if out, err := exec.Command("go", "build", "-o", shoalBin, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		// A goroutine that outlives the tests (a pipe drained after its process is gone, a
		// request not cancelled) fails them, as in every package that starts goroutines.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func run(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(shoalBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), 0
}

// A bad configuration must stop the daemon at once with exit code 2 and one line naming the key.
func TestBadConfigExitsTwoWithOneLine(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("listen: 127.0.0.1:0\nstore:\n  maxsize: 1GiB\n"), 0o600)
	pwMissing := filepath.Join(dir, "pw.yaml")
	os.WriteFile(pwMissing, []byte("registries:\n  ghcr.io:\n    username: u\n    password_file: /nonexistent/pw\n"), 0o600)
	cases := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"unknown yaml key", nil, []string{"daemon", "--config", bad}, `unknown key "maxsize"`},
		{"missing config file", nil, []string{"daemon", "--config", filepath.Join(dir, "none.yaml")}, "--config"},
		{"bad registry flag", nil, []string{"daemon", "--registry", "docker.io"}, "--registry"},
		{"bad size flag", nil, []string{"daemon", "--store-max-size", "huge"}, "--store-max-size"},
		{"bad blob size flag", nil, []string{"daemon", "--store-max-blob-size", "huge"}, "--store-max-blob-size"},
		{"bad env", []string{"SHOAL_LOG_FORMAT=xml"}, []string{"daemon"}, "log_format"},
		{"blank list entry", []string{"SHOAL_ALLOW_REPO=docker.io/library/*,"}, []string{"daemon"}, "security.allow_repo"},
		{"unknown flag", nil, []string{"daemon", "--no-such-flag"}, "no-such-flag"},
		{"unreadable password file", nil, []string{"daemon", "--config", pwMissing, "--data-dir", dir}, "password_file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, code := run(t, c.env, c.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; output:\n%s", code, out)
			}
			if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.Contains(out, c.want) {
				t.Fatalf("want one line naming %q, got:\n%s", c.want, out)
			}
		})
	}
}

func TestConfigDefaultPrintsEmbeddedConfig(t *testing.T) {
	out, code := run(t, nil, "config", "default")
	if code != 0 || !strings.Contains(out, "listen: 127.0.0.1:5000") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

// `shoal daemon --help` shows each setting's default once, and it is the default that
// `shoal config default` prints (today's bug was "(default 30s) (default: 0s)").
func TestDaemonHelpDefaultsAreConfigDefault(t *testing.T) {
	help, code := run(t, nil, "daemon", "--help")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, help)
	}
	def, code := run(t, nil, "config", "default")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, def)
	}
	var defaults map[string]any
	if err := yaml.Unmarshal([]byte(def), &defaults); err != nil {
		t.Fatal(err)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(help, "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "--") {
			lines[strings.TrimPrefix(f[0], "--")] = l
		}
	}
	shownRe := regexp.MustCompile(`\(default: (.*)\) \[\$`)
	for _, s := range daemon.Settings() {
		line, ok := lines[s.Flag]
		if !ok {
			t.Errorf("--%s (%s) missing from shoal daemon --help", s.Flag, s.Key)
			continue
		}
		if n := strings.Count(line, "(default"); n > 1 {
			t.Errorf("--%s shows %d defaults: %s", s.Flag, n, line)
		}
		if !strings.Contains(line, "[$"+s.Env()+"]") {
			t.Errorf("--%s does not name %s: %s", s.Flag, s.Env(), line)
		}
		var want any = defaults
		for _, k := range strings.Split(s.Key, ".") {
			want = want.(map[string]any)[k]
		}
		m := shownRe.FindStringSubmatch(line)
		switch {
		case s.Key == "registries":
			if m == nil || m[1] != "docker.io=https://registry-1.docker.io" || !reflect.DeepEqual(want, map[string]any{"docker.io": map[string]any{"url": "https://registry-1.docker.io"}}) {
				t.Errorf("--%s: help %q, config default %v", s.Flag, m, want)
			}
		case want == "" || reflect.DeepEqual(want, []any{}) || reflect.DeepEqual(want, map[string]any{}):
			if m != nil {
				t.Errorf("--%s: empty default shown as %q", s.Flag, m[1])
			}
		case m == nil:
			t.Errorf("--%s: no default shown, config default is %v: %s", s.Flag, want, line)
		default:
			var shown any
			if err := yaml.Unmarshal([]byte(m[1]), &shown); err != nil || !reflect.DeepEqual(shown, want) {
				t.Errorf("--%s: help shows %q, shoal config default says %v", s.Flag, m[1], want)
			}
		}
	}
}

// Flags over variables over the file, through the flags made from the table: the refused
// value in the one-line error is the one that won.
func TestTableFlagAndEnvPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("doctor:\n  cri_endpoint: unix:///nonexistent.sock\n  interval: 100ms\n"), 0o600)
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"file", nil, nil, "100ms"},
		{"env over file", []string{"SHOAL_DOCTOR_INTERVAL=200ms"}, nil, "200ms"},
		{"flag over env", []string{"SHOAL_DOCTOR_INTERVAL=200ms"}, []string{"--doctor-interval", "300ms"}, "300ms"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, code := run(t, c.env, append([]string{"daemon", "--config", cfg, "--data-dir", dir}, c.args...)...)
			if code != 2 || !strings.Contains(out, "doctor.interval: "+c.want+": want at least 1s") {
				t.Fatalf("exit %d, want 2 naming doctor.interval %s: %s", code, c.want, out)
			}
		})
	}
}

// When the P2P port is taken the daemon stops with one line saying so; everything else it
// wrote is in shoal's own format (libp2p's loggers go through it; fx's three "start failed"
// lines at error are gone), and the store's start-up line names its component once.
func TestStartupLogsInShoalsFormat(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := taken.Addr().(*net.TCPAddr).Port
	out, code := run(t, nil, "daemon", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--metrics-listen", "off",
		"--p2p-listen", fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port))
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "shoal: ") || !strings.Contains(last, "address already in use") {
		t.Errorf("last line %q does not say the P2P address is in use", last)
	}
	if strings.Contains(out, "p2p: p2p:") {
		t.Errorf("the error names its component twice:\n%s", out)
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, "time=") || strings.Contains(l, "system=fx") || strings.Contains(l, "level=ERROR") {
			t.Errorf("not a shoal log line, or an error logged before the one that stops it: %s", l)
		}
		if strings.Contains(l, `msg="store opened"`) && strings.Count(l, "component=store") != 1 {
			t.Errorf("store's start-up line: %s", l)
		}
	}
	if !strings.Contains(out, `msg="store opened"`) {
		t.Errorf("no store start-up line:\n%s", out)
	}
}
