package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-mirror/shoal/internal/testutil"
)

// scope is what fixtures need from their owner: a *testing.T for per-test fixtures, or the
// package-wide sharedScope for fixtures that live as long as the test binary.
type scope interface {
	Helper()
	Cleanup(func())
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
	Failed() bool
	TempDir() string
}

// proc is a child process whose output goes to a log file and which is killed, with its whole
// process group, when its scope ends.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	waitErr error
}

// startProc starts argv with the extra environment env; stdout and stderr go to a log file in
// the scope's temp dir, which is printed (tail) if the scope failed.
func startProc(s scope, name string, env []string, argv ...string) *proc {
	s.Helper()
	logPath := filepath.Join(s.TempDir(), name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		s.Fatalf("%s: %v", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Own process group so that stop reaches grandchildren; Pdeathsig so that a killed test
	// binary does not leave daemons behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		s.Fatalf("start %s (%s): %v", name, argv[0], err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	s.Cleanup(func() {
		p.stop()
		if s.Failed() {
			s.Logf("---- last lines of %s log (%s) ----\n%s", name, logPath, p.tail(80))
		}
	})
	return p
}

// exited reports whether the process has already ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, and SIGKILL if it has not exited within 15 s.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// Anything left in the group (a stuck grandchild) goes too.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// tail returns the last n lines of the process log.
func (p *proc) tail(n int) string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// log returns the whole process log.
func (p *proc) log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(s scope) string {
	s.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.Fatalf("free port: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// eventually calls f until it returns nil or the timeout passes; then it fails with f's last error.
// If p is non-nil and exits meanwhile, it fails at once with the process log.
func eventually(s scope, timeout time.Duration, p *proc, what string, f func() error) {
	s.Helper()
	if err := poll(timeout, p, f); err != nil {
		s.Fatalf("%s: %v", what, err)
	}
}

// errExitedEarly is returned by poll when the watched process ended before f succeeded.
var errExitedEarly = errors.New("exited early")

// poll calls f until it returns nil (nil), the timeout passes, or p exits (errExitedEarly, with
// the process log).
func poll(timeout time.Duration, p *proc, f func() error) error {
	var exited func(error) error
	if p != nil {
		exited = func(last error) error {
			if !p.exited() {
				return nil
			}
			return fmt.Errorf("%s %w (%v): %v\n%s", p.name, errExitedEarly, p.waitErr, last, p.tail(60))
		}
	}
	return testutil.Poll(timeout, f, exited)
}

// startOnFreePort starts a server process on a fresh loopback port and waits until ready says it
// serves. A port picked by freeAddr can be taken by someone else before the child binds it; then
// it tries another port (three times at most).
func startOnFreePort(s scope, what string, start func(addr string) *proc, ready func(addr string) error) (string, *proc) {
	s.Helper()
	var err error
	for range 3 {
		addr := freeAddr(s)
		p := start(addr)
		err = poll(60*time.Second, p, func() error { return ready(addr) })
		if err == nil {
			return addr, p
		}
		if !errors.Is(err, errExitedEarly) || !strings.Contains(p.log(), "address already in use") {
			break
		}
	}
	s.Fatalf("%s: %v", what, err)
	return "", nil
}

// tool finds an external program; a missing one fails the test with how to install it.
func tool(s scope, name string) string {
	s.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	// go install puts crane in GOPATH/bin, which may not be on PATH when tests run by hand.
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	pkg := map[string]string{
		"docker-registry": "apt-get install docker-registry",
		"skopeo":          "apt-get install skopeo",
		"containerd":      "apt-get install containerd",
		"ctr":             "apt-get install containerd",
		"dockerd":         "apt-get install docker.io",
		"docker":          "apt-get install docker.io",
		"htpasswd":        "apt-get install apache2-utils",
		"crane":           "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1",
	}[name]
	s.Fatalf("%s not found on PATH: run `bash .ci/run` once, or `%s`", name, pkg)
	return ""
}

// requireRoot fails tests that start containerd or dockerd when not run as root.
func requireRoot(s scope) {
	s.Helper()
	if os.Geteuid() != 0 {
		s.Fatalf("this test starts containerd/dockerd and must run as root (CI runs `bash .ci/run` as root)")
	}
}

// runCmd runs a client command with a timeout and returns its combined output.
func runCmd(ctx context.Context, timeout time.Duration, env []string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %s: %w", filepath.Base(argv[0]), timeout, errors.Join(err, ctx.Err()))
	} else if err != nil {
		err = fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return string(out), err
}

// unmountUnder detaches every mount below dir (snapshots left by containerd or dockerd), deepest
// first, so that removing the temp dir works.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mps = append(mps, f[4])
		}
	}
	slices.SortFunc(mps, func(a, b string) int { return len(b) - len(a) })
	for _, mp := range mps {
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
	}
}

// sharedScope owns fixtures shared by all tests (the seeded upstream registries). Its cleanups
// run at the end of TestMain.
type sharedScope struct {
	mu       sync.Mutex
	dir      string
	cleanups []func()
	failed   bool
}

func (s *sharedScope) Helper() {}

func (s *sharedScope) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}

func (s *sharedScope) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "e2e shared: "+format+"\n", args...)
}

// Fatalf panics: shared fixtures are set up inside a sync.Once called from a test, which
// recovers and fails that test (and every later one asking for the fixture).
func (s *sharedScope) Fatalf(format string, args ...any) {
	s.mu.Lock()
	s.failed = true
	s.mu.Unlock()
	panic(sharedFailure(fmt.Sprintf(format, args...)))
}

func (s *sharedScope) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

func (s *sharedScope) TempDir() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir == "" {
		d, err := os.MkdirTemp("", "shoal-e2e-shared-")
		if err != nil {
			panic(sharedFailure(err.Error()))
		}
		s.dir = d
	}
	d, err := os.MkdirTemp(s.dir, "")
	if err != nil {
		panic(sharedFailure(err.Error()))
	}
	return d
}

// close runs the cleanups in reverse order and removes the shared temp dir.
func (s *sharedScope) closeAll() {
	s.mu.Lock()
	cs := s.cleanups
	s.cleanups = nil
	dir := s.dir
	s.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
	if dir != "" {
		os.RemoveAll(dir)
	}
}

type sharedFailure string
