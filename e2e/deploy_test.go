package e2e

import (
	"bufio"
	"debug/elf"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Deployment tests (issue 7): the binary built exactly as the Dockerfile builds it, run in an
// empty root; the image built by a real Docker engine; the systemd unit verified and its
// ExecStart line run; the DaemonSet's init container played against a containerd hosts dir, then
// a real ctr pull. The files under test are read from the repository, so the tests follow them.

// dockerfileBuild is the static binary built with the Dockerfile's own `go build` line, once per
// test binary.
var dockerfileBuild struct {
	once    sync.Once
	bin     string
	cmdline string
	err     error
}

// readDockerfile returns the Dockerfile's instructions, continuation lines joined and comments
// dropped.
func readDockerfile(t *testing.T) []string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		out = append(out, cur.String())
		cur.Reset()
	}
	return out
}

// staticShoal builds cmd/shoal with the Dockerfile's RUN line that holds `go build` (its --mount
// options dropped, /out/shoal replaced by a temp path), run by sh in the module root.
func staticShoal(t *testing.T) string {
	t.Helper()
	dockerfileBuild.once.Do(func() {
		var run string
		for _, ins := range readDockerfile(t) {
			if strings.HasPrefix(ins, "RUN ") && strings.Contains(ins, "go build") {
				run = ins
			}
		}
		if run == "" {
			dockerfileBuild.err = fmt.Errorf("Dockerfile: no RUN line with `go build`")
			return
		}
		fields := strings.Fields(strings.TrimPrefix(run, "RUN "))
		for len(fields) > 0 && strings.HasPrefix(fields[0], "--mount=") {
			fields = fields[1:]
		}
		cmdline := strings.Join(fields, " ")
		if !strings.Contains(cmdline, "-o /out/shoal ") {
			dockerfileBuild.err = fmt.Errorf("Dockerfile: the go build line does not write /out/shoal: %s", cmdline)
			return
		}
		dir := shared.scope.TempDir()
		bin := filepath.Join(dir, "shoal")
		cmdline = strings.Replace(cmdline, "-o /out/shoal ", "-o "+bin+" ", 1)
		root, err := moduleRoot()
		if err != nil {
			dockerfileBuild.err = err
			return
		}
		cmd := exec.Command("sh", "-c", cmdline)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "VERSION=e2e-dockerfile")
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			dockerfileBuild.err = fmt.Errorf("%s: %v\n%s", cmdline, err, out)
			return
		}
		t.Logf("built %s in %s: %s", bin, time.Since(start).Round(time.Second), cmdline)
		dockerfileBuild.bin, dockerfileBuild.cmdline = bin, cmdline
	})
	if dockerfileBuild.err != nil {
		t.Fatal(dockerfileBuild.err)
	}
	return dockerfileBuild.bin
}

// copyExecutable copies a file, keeping it executable.
func copyInto(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// startIsolated starts argv like startProc (own process group, log file, killed with the test),
// but with exactly the environment env, and, when root is not "", chrooted there as uid:gid.
func startIsolated(t *testing.T, name, root string, uid, gid uint32, env []string, argv ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if root != "" {
		cmd.Dir = "/"
		cmd.SysProcAttr.Chroot = root
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: gid}
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatalf("start %s: %v", argv[0], err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("---- last lines of %s log ----\n%s", name, p.tail(60))
		}
	})
	return p
}

// registryPing checks that GET /v2/ answers like a registry.
func registryPing(addr string) error {
	resp, err := http.Get("http://" + addr + "/v2/")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Distribution-Api-Version") != "registry/2.0" {
		return fmt.Errorf("GET /v2/: %s, Docker-Distribution-Api-Version %q", resp.Status, resp.Header.Get("Docker-Distribution-Api-Version"))
	}
	return nil
}

// TestDeployStaticBinary: the Dockerfile's build gives a static executable (no interpreter, no
// shared libraries) with the version stamped, and it runs as the image's user in a root that holds
// nothing but itself and a CA bundle: the mirror answers /v2/ and `shoal healthcheck` (the image's
// HEALTHCHECK) succeeds from inside that root.
func TestDeployStaticBinary(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	bin := staticShoal(t)

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a program interpreter: not a static binary", bin)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", bin, libs)
	}
	if f.Section(".symtab") != nil {
		t.Errorf("%s has a symbol table: -ldflags -s did not apply", bin)
	}
	f.Close()
	st, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("static binary: %.1f MiB", float64(st.Size())/(1<<20))

	// An HTTPS upstream whose certificate the empty root's CA bundle trusts: shoal must find the
	// bundle at the path the image puts it (Go's default list, no libc, no system tools).
	up := httptest.NewTLSServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(up.Close)
	upHost := strings.TrimPrefix(up.URL, "https://")
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(upHost + "/deploy/static:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(up.Client().Transport)); err != nil {
		t.Fatal(err)
	}
	imgDigest, _ := img.Digest()

	root := t.TempDir()
	copyInto(t, bin, filepath.Join(root, "usr/local/bin/shoal"), 0o755)
	bundle, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Fatal(err)
	}
	bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw})...)
	if err := os.MkdirAll(filepath.Join(root, "etc/ssl/certs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt"), bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(root, "var/lib/shoal")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(data, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o755); err != nil { // t.TempDir is 0700: the image's user must enter it
		t.Fatal(err)
	}
	out, err := exec.Command("chroot", "--userspec=65532:65532", root, "/usr/local/bin/shoal", "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "e2e-dockerfile") {
		t.Errorf("shoal version in the empty root: %q %v, want the stamped e2e-dockerfile", out, err)
	}

	metrics := freeAddr(t)
	env := []string{"SHOAL_METRICS_LISTEN=" + metrics, "SHOAL_DATA_DIR=/var/lib/shoal"}
	addr, p := startOnFreePort(t, "shoal in an empty root", func(addr string) *proc {
		return startIsolated(t, "shoal-chroot", root, 65532, 65532, append(env, "SHOAL_LISTEN="+addr),
			"/usr/local/bin/shoal", "daemon", "--p2p=false", "--admin-listen=off", "--registry", upHost+"="+up.URL)
	}, registryPing)
	r := do(t, http.MethodGet, "http://"+addr, "/v2/"+upHost+"/deploy/static/manifests/v1", acceptAll)
	if r.Status != http.StatusOK || r.Header.Get("Docker-Content-Digest") != imgDigest.String() {
		t.Errorf("manifest from the HTTPS upstream through shoal in the empty root: %d %q, want 200 %s: %s",
			r.Status, r.Header.Get("Docker-Content-Digest"), imgDigest, truncateForLog(r.Body))
	}
	eventually(t, 30*time.Second, p, "healthcheck in the empty root", func() error {
		cmd := exec.Command("chroot", "--userspec=65532:65532", root, "/usr/local/bin/shoal", "healthcheck")
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
}

// systemdUnit is the parts of contrib/systemd/shoal.service the tests run.
type systemdUnit struct {
	text        string
	execStart   string
	envFile     string
	stateDir    string
	execReload  string
	dynamicUser bool
}

func readUnit(t *testing.T) systemdUnit {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "contrib/systemd/shoal.service"))
	if err != nil {
		t.Fatal(err)
	}
	u := systemdUnit{text: string(b)}
	sc := bufio.NewScanner(strings.NewReader(u.text))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		switch k {
		case "ExecStart":
			u.execStart = v
		case "ExecReload":
			u.execReload = v
		case "EnvironmentFile":
			u.envFile = strings.TrimPrefix(v, "-")
		case "StateDirectory":
			u.stateDir = v
		case "DynamicUser":
			u.dynamicUser = v == "yes"
		}
	}
	return u
}

// parseEnvFile reads a systemd EnvironmentFile: KEY=VALUE lines, # comments, optional quotes.
func parseEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not KEY=VALUE: %q", path, line)
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		env[strings.TrimSpace(k)] = v
	}
	return env
}

// expandExecStart splits an ExecStart line the way systemd does for the forms the unit uses:
// "$VAR" alone becomes the variable's whitespace-separated words (none when empty), "${VAR}" is
// replaced in place.
func expandExecStart(line string, env map[string]string) []string {
	var argv []string
	braced := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
	for _, w := range strings.Fields(line) {
		if name, ok := strings.CutPrefix(w, "$"); ok && regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`).MatchString(name) {
			argv = append(argv, strings.Fields(env[name])...)
			continue
		}
		argv = append(argv, braced.ReplaceAllStringFunc(w, func(m string) string { return env[m[2:len(m)-1]] }))
	}
	return argv
}

// TestDeploySystemdUnit: `systemd-analyze verify` accepts the unit (and the swarm-key drop-in)
// without a word, `systemd-analyze security` rates its exposure low, and the ExecStart line as
// written, with the example environment file, starts a daemon that answers /v2/ and survives the
// unit's ExecReload (SIGHUP).
func TestDeploySystemdUnit(t *testing.T) {
	t.Parallel()
	bin := staticShoal(t)
	u := readUnit(t)
	if u.execStart == "" || u.envFile != "/etc/default/shoal" || u.stateDir != "shoal" || !u.dynamicUser {
		t.Fatalf("unit: ExecStart %q, EnvironmentFile %q, StateDirectory %q, DynamicUser %v", u.execStart, u.envFile, u.stateDir, u.dynamicUser)
	}
	for _, want := range []string{"ProtectSystem=strict", "NoNewPrivileges=yes", "RuntimeDirectory=shoal", "CapabilityBoundingSet=\n"} {
		if !strings.Contains(u.text, want) {
			t.Errorf("unit lacks %q", strings.TrimSpace(want))
		}
	}

	// systemd-analyze checks that ExecStart's binary exists: a copy of the unit points at the
	// binary built above.
	analyze := tool(t, "systemd-analyze")
	dir := t.TempDir()
	unitPath := filepath.Join(dir, "shoal.service")
	text := strings.ReplaceAll(u.text, "/usr/local/bin/shoal", bin)
	root, _ := moduleRoot()
	dropIn, err := os.ReadFile(filepath.Join(root, "contrib/systemd/shoal.service.d/swarm-key.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"shoal.service": text, "shoal-swarm.service": text + "\n" + string(dropIn)} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := runCmd(t.Context(), time.Minute, nil, analyze, "verify", p)
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
	out, err := runCmd(t.Context(), time.Minute, nil, analyze, "security", "--offline=true", unitPath)
	m := regexp.MustCompile(`Overall exposure level for shoal.service: ([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Errorf("systemd-analyze security: %v\n%s", err, out)
	} else {
		exposure, _ := strconv.ParseFloat(m[1], 64)
		t.Logf("systemd-analyze security: exposure %.1f (0 = locked down, 10 = unprotected)", exposure)
		if exposure > 2.5 {
			t.Errorf("exposure %.1f: the hardening options went missing\n%s", exposure, out)
		}
	}

	// ExecStart as written, with the example /etc/default/shoal. The test changes only what
	// differs on this machine: the addresses (free loopback ports), the state directory
	// (systemd's StateDirectory=shoal is /var/lib/shoal, here a temp dir) and the P2P listener
	// (loopback, any port).
	env := parseEnvFile(t, filepath.Join(root, "contrib/systemd/shoal.env"))
	if env["SHOAL_LISTEN"] != "127.0.0.1:5000" {
		t.Errorf("example env file: SHOAL_LISTEN=%q, want 127.0.0.1:5000", env["SHOAL_LISTEN"])
	}
	env["SHOAL_METRICS_LISTEN"] = freeAddr(t)
	env["SHOAL_DATA_DIR"] = filepath.Join(t.TempDir(), "var/lib/shoal")
	env["SHOAL_P2P_LISTEN"] = "/ip4/127.0.0.1/tcp/0"
	env["SHOAL_OPTS"] = "--admin-listen=off"
	addr, p := startOnFreePort(t, "shoal from the unit's ExecStart", func(addr string) *proc {
		env["SHOAL_LISTEN"] = addr
		argv := expandExecStart(u.execStart, env)
		if argv[0] != "/usr/local/bin/shoal" {
			t.Fatalf("ExecStart runs %s, README installs /usr/local/bin/shoal", argv[0])
		}
		argv[0] = bin
		// systemd gives a service the variables of its EnvironmentFile and little else.
		envList := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		for k, v := range env {
			envList = append(envList, k+"="+v)
		}
		return startIsolated(t, "shoal-unit", "", 0, 0, envList, argv...)
	}, registryPing)

	// ExecReload as written, with $MAINPID: the daemon reloads and keeps serving.
	reload := strings.Fields(strings.ReplaceAll(u.execReload, "$MAINPID", strconv.Itoa(p.cmd.Process.Pid)))
	if out, err := runCmd(t.Context(), 30*time.Second, nil, reload...); err != nil {
		t.Fatalf("ExecReload %v: %v\n%s", reload, err, out)
	}
	eventually(t, 10*time.Second, p, "daemon after ExecReload (SIGHUP)", func() error {
		if !strings.Contains(p.log(), "configuration reloaded") {
			return fmt.Errorf("no reload in the log yet")
		}
		return registryPing(addr)
	})
}
