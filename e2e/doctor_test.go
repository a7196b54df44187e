package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// doctorOut is the part of `shoal doctor --json` the tests read.
type doctorOut struct {
	Mirror   string `json:"mirror"`
	InPath   bool   `json:"in_path"`
	Runtimes []struct {
		Runtime   string  `json:"runtime"`
		Version   string  `json:"version"`
		Canary    string  `json:"canary"`
		Verdict   string  `json:"verdict"`
		InPath    bool    `json:"in_path"`
		PullError string  `json:"pull_error"`
		Removed   bool    `json:"canary_removed"`
		Seconds   float64 `json:"seconds"`
		Served    []struct {
			Method, Path, Registry, NS string
			UserAgent                  string `json:"user_agent"`
		} `json:"served"`
		Reasons []struct{ Severity, Message, Fix string } `json:"reasons"`
	} `json:"runtimes"`
}

// doctorBudget is the bound for one runtime's check.
const doctorBudget = 5 * time.Second

// runDoctor runs `shoal doctor --json` against d and checks the exit code.
func runDoctor(t *testing.T, d *opsDaemon, wantCode int, args ...string) doctorOut {
	t.Helper()
	start := time.Now()
	r := shoalCLI(t, nil, append([]string{"--admin", d.Admin, "doctor", "--json"}, args...)...)
	t.Logf("shoal doctor %s: exit %d in %s\n%s%s", strings.Join(args, " "), r.Code, time.Since(start).Round(time.Millisecond), r.Stdout, r.Stderr)
	var out doctorOut
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		t.Fatalf("shoal doctor --json: %v\n%s\n%s", err, r.Stdout, r.Stderr)
	}
	if r.Code != wantCode {
		t.Errorf("shoal doctor exited %d, want %d", r.Code, wantCode)
	}
	for _, rt := range out.Runtimes {
		if rt.Seconds <= 0 || rt.Seconds >= doctorBudget.Seconds() {
			t.Errorf("%s: the check took %.2fs, want < %s", rt.Runtime, rt.Seconds, doctorBudget)
		}
	}
	return out
}

// assertVerdict checks one runtime's verdict and, for a bypass, a problem whose message has
// every part of why and that comes with a fix.
func assertVerdict(t *testing.T, out doctorOut, runtime, verdict string, why ...string) {
	t.Helper()
	for _, rt := range out.Runtimes {
		if rt.Runtime != runtime {
			continue
		}
		t.Logf("%s: %s in %.2fs (%s)", runtime, rt.Verdict, rt.Seconds, rt.Version)
		if rt.Verdict != verdict {
			t.Errorf("%s: verdict %q, want %q (pull error %q, reasons %+v)", runtime, rt.Verdict, verdict, rt.PullError, rt.Reasons)
		}
		switch verdict {
		case "in-path":
			if !rt.InPath || len(rt.Served) == 0 {
				t.Errorf("%s: in path but shoal recorded nothing: %+v", runtime, rt)
			}
			if !rt.Removed {
				t.Errorf("%s: the canary %s was not removed from the runtime", runtime, rt.Canary)
			}
		case "bypassed":
			if rt.InPath || len(rt.Served) > 0 {
				t.Errorf("%s: bypassed, yet shoal served %+v", runtime, rt.Served)
			}
		}
		if len(why) == 0 {
			return
		}
		for _, x := range rt.Reasons {
			ok := x.Severity == "problem" && x.Fix != ""
			for _, w := range why {
				ok = ok && strings.Contains(x.Message, w)
			}
			if ok {
				return
			}
		}
		t.Errorf("%s: no problem with a fix that says %q among %+v", runtime, why, rt.Reasons)
		return
	}
	t.Errorf("doctor did not check %s: %+v", runtime, out.Runtimes)
}

// upstreamTrap stands for every registry shoal knows: the canary must never reach it.
type upstreamTrap struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []string
}

func newUpstreamTrap(t *testing.T) *upstreamTrap {
	u := &upstreamTrap{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.reqs = append(u.reqs, r.Method+" "+r.URL.String())
		u.mu.Unlock()
		http.Error(w, "trap", http.StatusNotFound)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstreamTrap) assertUntouched(t *testing.T) {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) > 0 {
		t.Errorf("the canary went upstream: %v", u.reqs)
	}
}

// defaultHostsDir writes DIR/_default/hosts.toml sending every registry to mirror, with a closed
// port as the fallback server, and returns DIR.
func defaultHostsDir(t *testing.T, dir, mirror string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "_default"), 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", unreachableURL, mirror)
	if err := os.WriteFile(filepath.Join(dir, "_default", "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestDoctorContainerd2: `shoal doctor` against containerd 2.4.2 (CRI and the ctr-style pull
// through the transfer service) says in path when config_path names the directory with shoal's
// _default/hosts.toml, and bypassed, with the reason and the fix, when config_path is the stock
// empty one, a list, or another directory, and when hosts.toml points where shoal does not listen.
// The canary never reaches an upstream and is gone from containerd afterwards.
func TestDoctorContainerd2(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	trap := newUpstreamTrap(t)
	s := startOpsShoal(t, shoalOpts{registries: []string{"docker.io=" + trap.URL, "shoal-doctor.invalid=" + trap.URL}})

	cases := []struct {
		name       string
		configPath func(dir string) string // the CRI config_path; "" keeps the stock empty one
		args       func(dir string) []string
		runtimes   string
		want       map[string]string   // runtime → verdict
		why        map[string][]string // runtime → parts of the problem's message
		code       int
	}{
		{name: "in-path-single-config-path", configPath: func(dir string) string { return dir + "/certs.d" }, runtimes: "cri,containerd",
			want: map[string]string{"cri": "in-path", "containerd": "in-path"}},
		{name: "config-path-empty", runtimes: "cri", code: 6,
			args: func(dir string) []string { return []string{"--hosts-dir", dir + "/certs.d"} },
			want: map[string]string{"cri": "bypassed"}, why: map[string][]string{"cri": {"does not set config_path", "transfer service"}}},
		{name: "config-path-list", configPath: func(dir string) string { return dir + "/certs.d:" + dir + "/y" }, runtimes: "cri", code: 6,
			want: map[string]string{"cri": "bypassed"}, why: map[string][]string{"cri": {"a list", "transfer service"}}},
		{name: "config-path-elsewhere", configPath: func(dir string) string { return dir + "/other" }, runtimes: "cri", code: 6,
			args: func(dir string) []string { return []string{"--hosts-dir", dir + "/certs.d"} },
			want: map[string]string{"cri": "bypassed"}, why: map[string][]string{"cri": {"/other", "shoal wrote its hosts.toml files under"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			cfg, sock := stockContainerd2Config(t, dir)
			if tc.configPath != nil {
				cfg = strings.Replace(cfg, "      config_path = ''\n", fmt.Sprintf("      config_path = '%s'\n", tc.configPath(dir)), 1)
			}
			cfgPath := filepath.Join(dir, "config.toml")
			if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			hosts := defaultHostsDir(t, filepath.Join(dir, "certs.d"), s.URL)
			if err := os.MkdirAll(filepath.Join(dir, "other"), 0o755); err != nil {
				t.Fatal(err)
			}
			c := startContainerd2(t, dir, cfgPath, sock)
			args := []string{"--runtime", tc.runtimes, "--cri-endpoint", "unix://" + sock, "--containerd-address", sock, "--containerd-config", cfgPath}
			if tc.args != nil {
				args = append(args, tc.args(dir)...)
			}
			out := runDoctor(t, s, tc.code, args...)
			for rt, v := range tc.want {
				assertVerdict(t, out, rt, v, tc.why[rt]...)
			}
			if tc.code == 0 {
				for _, rt := range out.Runtimes {
					for _, h := range rt.Served {
						if h.NS != "shoal-doctor.invalid" || !strings.HasPrefix(h.UserAgent, "containerd/") {
							t.Errorf("%s: shoal recorded %+v, want containerd asking with ?ns=shoal-doctor.invalid", rt.Runtime, h)
						}
					}
				}
				// Gone from containerd: CRI's images and the ctr-style pull's namespace.
				if o, err := c.crictl(t, 10*time.Second, "images"); err != nil || strings.Contains(o, "canary") {
					t.Errorf("crictl images after doctor (%v):\n%s", err, o)
				}
				ctr := builtTool(t, containerd2Dir, "ctr")
				if o, err := runCmd(t.Context(), 10*time.Second, nil, ctr, "--address", sock, "--namespace", "default", "images", "ls", "-q"); err != nil || strings.Contains(o, "canary") {
					t.Errorf("ctr images ls after doctor (%v):\n%s", err, o)
				}

				// The same node with hosts.toml pointing at a port where shoal does not listen
				// (hosts.toml is read on every pull: no restart).
				closed := "http://" + freeAddr(t)
				defaultHostsDir(t, hosts, closed)
				out = runDoctor(t, s, 6, args...)
				for _, rt := range []string{"cri", "containerd"} {
					assertVerdict(t, out, rt, "bypassed", closed[len("http://"):], "where nothing listens")
				}
			}
			trap.assertUntouched(t)
		})
	}
}

// TestDoctorDockerAndContainerd16: `shoal doctor` against dockerd (registry-mirrors = shoal) says
// in path for the docker.io canary, and bypassed for a canary named on another registry, saying
// that Docker mirrors only docker.io; the ctr-style check against Debian's containerd 1.6 (no
// transfer service: the client-side pull) says in path with the hosts directory.
func TestDoctorDockerAndContainerd16(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	trap := newUpstreamTrap(t)
	s := startOpsShoal(t, shoalOpts{registries: []string{"docker.io=" + trap.URL, "shoal-doctor.invalid=" + trap.URL}})
	c := startContainerd(t)
	d := startDockerd(t, c, s.URL)
	hosts := defaultHostsDir(t, t.TempDir(), s.URL)

	t.Run("in-path", func(t *testing.T) {
		out := runDoctor(t, s, 0, "--runtime", "docker,containerd", "--docker-host", d.Host, "--containerd-address", c.Sock,
			"--containerd-config", "-", "--hosts-dir", hosts)
		assertVerdict(t, out, "docker", "in-path")
		assertVerdict(t, out, "containerd", "in-path")
		if o, err := d.docker(t.Context(), t, "images", "-q", "shoaldoctor/canary"); err != nil || strings.TrimSpace(o) != "" {
			t.Errorf("docker still has the canary (%v): %q", err, o)
		}
	})
	t.Run("non-docker.io-name", func(t *testing.T) {
		out := runDoctor(t, s, 6, "--runtime", "docker", "--docker-host", d.Host, "--docker-registry", "ghcr.io")
		assertVerdict(t, out, "docker", "bypassed", "Docker sends only docker.io pulls to registry-mirrors", "ghcr.io")
		// The same as text: the verdict, why, and the fix naming shoal in the reference.
		r := shoalCLI(t, nil, "--admin", s.Admin, "doctor", "--runtime", "docker", "--docker-host", d.Host, "--docker-registry", "ghcr.io")
		t.Logf("shoal doctor (text): exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
		for _, want := range []string{"docker: BYPASSED", "shoal was never asked for it", "problem: Docker sends only docker.io pulls",
			"fix: pull docker.io images through the mirror; for ghcr.io, name shoal in the reference: docker pull " + s.Addr + "/ghcr.io/IMAGE"} {
			if !strings.Contains(r.Stdout, want) {
				t.Errorf("shoal doctor's text has no %q", want)
			}
		}
		if r.Code != 6 {
			t.Errorf("shoal doctor (text) exited %d, want 6", r.Code)
		}
	})
	t.Run("hanging-mirror-bounded-by-timeout", func(t *testing.T) {
		// hosts.toml sends pulls to a port that accepts connections and never answers: the
		// check still ends within --timeout (+0.9 s) and says where the pulls went.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var conns []net.Conn
		t.Cleanup(func() {
			ln.Close()
			mu.Lock()
			defer mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
		})
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
		hang := defaultHostsDir(t, t.TempDir(), "http://"+ln.Addr().String())
		out := runDoctor(t, s, 6, "--runtime", "containerd", "--containerd-address", c.Sock, "--containerd-config", "-", "--hosts-dir", hang, "--timeout", "2s")
		assertVerdict(t, out, "containerd", "bypassed", "sends pulls first to http://"+ln.Addr().String()+", not to shoal")
		if sec := out.Runtimes[0].Seconds; sec < 2 || sec > 2.9 {
			t.Errorf("the check took %.2fs, want the 2s timeout plus at most 0.9s", sec)
		}
	})
	t.Run("admin-api-down", func(t *testing.T) {
		r := shoalCLI(t, nil, "--admin", "unix:"+filepath.Join(t.TempDir(), "admin.sock"), "doctor", "--runtime", "docker", "--docker-host", d.Host)
		if r.Code != 3 {
			t.Errorf("shoal doctor without a daemon exited %d, want 3:\n%s%s", r.Code, r.Stdout, r.Stderr)
		}
	})
	trap.assertUntouched(t)
}

// TestDaemonDoctorMetric: given containerd's CRI socket (opt-in), the daemon repeats the CRI
// canary pull and exports shoal_doctor_in_path{runtime="cri"}: 1 while containerd 2.4.2 pulls
// through shoal, 0 (and a warning in the log saying why) once hosts.toml points elsewhere.
func TestDaemonDoctorMetric(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	dir := t.TempDir()
	cfg, sock := stockContainerd2Config(t, dir)
	cfg = strings.Replace(cfg, "      config_path = ''\n", fmt.Sprintf("      config_path = '%s/certs.d'\n", dir), 1)
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	trap := newUpstreamTrap(t)
	// The config file's doctor section (containerd_config has no flag), the interval as a flag.
	shoalCfg := filepath.Join(dir, "shoal.yaml")
	if err := os.WriteFile(shoalCfg, fmt.Appendf(nil, "doctor:\n  cri_endpoint: unix://%s\n  interval: 1m\n  containerd_config: %s\n", sock, cfgPath), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startOpsShoal(t, shoalOpts{registries: []string{"docker.io=" + trap.URL}, args: []string{"--config", shoalCfg, "--doctor-interval", "1s"}})
	hosts := defaultHostsDir(t, filepath.Join(dir, "certs.d"), s.URL)
	startContainerd2(t, dir, cfgPath, sock)

	metric := func(want string) func() error {
		return func() error {
			resp, err := http.Get("http://" + s.Metrics + "/metrics")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, `shoal_doctor_in_path{runtime="cri"} `) {
					if got := strings.TrimPrefix(l, `shoal_doctor_in_path{runtime="cri"} `); got != want {
						return fmt.Errorf("shoal_doctor_in_path = %s, want %s", got, want)
					}
					return nil
				}
			}
			return fmt.Errorf("no shoal_doctor_in_path{runtime=\"cri\"} yet")
		}
	}
	start := time.Now()
	eventually(t, 30*time.Second, s.proc, "the daemon's doctor check says in path", metric("1"))
	t.Logf("in path after %s", time.Since(start).Round(time.Millisecond))
	closed := "http://" + freeAddr(t)
	defaultHostsDir(t, hosts, closed)
	start = time.Now()
	eventually(t, 30*time.Second, s.proc, "the daemon's doctor check says bypassed", metric("0"))
	t.Logf("bypassed after %s", time.Since(start).Round(time.Millisecond))
	eventually(t, 10*time.Second, s.proc, "a warning in the log", func() error {
		if l := s.proc.log(); !strings.Contains(l, "CRI pulls do not go through shoal") || !strings.Contains(l, "where nothing listens") {
			return fmt.Errorf("no warning naming the closed port yet")
		}
		return nil
	})
	trap.assertUntouched(t)
}
