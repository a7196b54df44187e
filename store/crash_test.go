package store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Environment of the crash child: the store directory, a random seed and, optionally, a hook
// point and hit count at which the child kills itself.
const (
	crashEnvDir   = "SHOAL_STORE_CRASH_DIR"
	crashEnvSeed  = "SHOAL_STORE_CRASH_SEED"
	crashEnvPoint = "SHOAL_STORE_CRASH_POINT"
	crashEnvHits  = "SHOAL_STORE_CRASH_HITS"
)

var crashPoints = []string{
	"commit-before-sync", "commit-before-rename", "commit-after-rename", "commit-after-record",
	"evict-after-rename", "evict-after-delete",
}

func crashConfig(dir string) Config {
	cfg := testConfig(dir)
	cfg.MaxSize = 3 << 20 // tight: most commits evict
	return cfg
}

// TestCrashRecovery kills a child process with SIGKILL at random moments and at exact points of
// commit and eviction, many times over the same store, and after each kill reopens the store
// and checks that every listed piece of content reads back and hashes to its digest and that
// no orphan (temporary file, file without record) remains.
func TestCrashRecovery(t *testing.T) {
	if os.Getenv(crashEnvDir) != "" {
		return // running as the child: see TestCrashChild
	}
	t.Parallel()
	iterations := 40
	if testing.Short() {
		iterations = 12
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	killed := map[string]int{}
	for i := range iterations {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnvDir+"="+dir, crashEnvSeed+"="+strconv.FormatUint(rng.Uint64(), 10))
		mode := "timed"
		if i%2 == 1 {
			mode = crashPoints[rng.IntN(len(crashPoints))]
			cmd.Env = append(cmd.Env, crashEnvPoint+"="+mode, crashEnvHits+"="+strconv.Itoa(1+rng.IntN(15)))
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr limitedBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if sc.Text() == "READY" || len(sc.Text()) > 5 && sc.Text()[:5] == "FAIL:" {
					ready <- sc.Text()
				}
			}
			close(ready)
		}()
		select {
		case line, ok := <-ready:
			if !ok || line != "READY" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("iteration %d: child did not start: %q\n%s", i, line, stderr.String())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("iteration %d: child did not open the store within 30s\n%s", i, stderr.String())
		}
		// Timed mode kills after a random delay, somewhere in the middle of the workload; hook
		// mode waits for the child to kill itself at the chosen point (or kills it after a while
		// if the point was not reached).
		delay := time.Duration(5+rng.IntN(200)) * time.Millisecond
		if mode != "timed" {
			delay = 20 * time.Second
		}
		timer := time.AfterFunc(delay, func() { cmd.Process.Signal(syscall.SIGKILL) })
		err = cmd.Wait()
		timer.Stop()
		for line := range ready {
			if line != "READY" {
				t.Fatalf("iteration %d (%s): child reported %s", i, mode, line)
			}
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("iteration %d (%s): child ended with %v, want SIGKILL\n%s", i, mode, err, stderr.String())
		}
		killed[mode]++

		s, err := Open(context.Background(), crashConfig(dir), testLogger(t))
		if err != nil {
			t.Fatalf("iteration %d (%s): reopen after kill -9: %v", i, mode, err)
		}
		assertConsistent(t, s)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("kill -9 by mode: %v", killed)
}

// TestCrashChild is the workload TestCrashRecovery runs in a child process and kills. Run on
// its own it skips (it used to pass, having tested nothing).
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnvDir)
	if dir == "" {
		t.Skip("the workload of TestCrashRecovery's child process; run TestCrashRecovery")
	}
	seed, _ := strconv.ParseUint(os.Getenv(crashEnvSeed), 10, 64)
	rng := rand.New(rand.NewPCG(seed, 2))
	fail := func(format string, a ...any) {
		fmt.Printf("FAIL: "+format+"\n", a...)
		os.Exit(3)
	}
	ctx := context.Background()
	s, err := Open(ctx, crashConfig(dir), nil)
	if err != nil {
		fail("open: %v", err)
	}
	if point := os.Getenv(crashEnvPoint); point != "" {
		hits, _ := strconv.Atoi(os.Getenv(crashEnvHits))
		s.hook = func(p string) {
			if p == point {
				if hits--; hits <= 0 {
					syscall.Kill(os.Getpid(), syscall.SIGKILL)
				}
			}
		}
	}
	var known []digest.Digest
	s.Walk(ctx, func(i Info) error { known = append(known, i.Digest); return nil })
	fmt.Println("READY")
	pick := func() digest.Digest {
		if len(known) == 0 {
			return digest.FromString("none")
		}
		return known[rng.IntN(len(known))]
	}
	for {
		switch op := rng.IntN(100); {
		case op < 50: // stream a blob, sometimes corrupt, sometimes abandoned
			size := 1 + rng.IntN(256<<10)
			if rng.IntN(10) == 0 {
				size = 1<<20 + rng.IntN(1<<20)
			}
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			d := digest.FromBytes(data)
			w, err := s.Writer(ctx, d, "application/octet-stream")
			if err != nil {
				fail("writer: %v", err)
			}
			bad := rng.IntN(10) == 0
			if bad {
				data[rng.IntN(size)] ^= 1
			}
			for off := 0; off < size; off += 32 << 10 {
				if _, err := w.Write(data[off:min(size, off+32<<10)]); err != nil {
					fail("write: %v", err)
				}
			}
			switch {
			case rng.IntN(20) == 0:
				w.Abort()
			case bad:
				if err := w.Commit(ctx, int64(size)); !errors.Is(err, ErrDigestMismatch) {
					fail("corrupt commit: %v", err)
				}
			default:
				if err := w.Commit(ctx, int64(size)); err != nil && !errors.Is(err, ErrNoSpace) {
					fail("commit: %v", err)
				}
				known = append(known, d)
			}
			w.Close()
		case op < 65: // a manifest, a tag, refs
			m := []byte(fmt.Sprintf(`{"schemaVersion":2,"layers":[%q],"n":%d}`, pick(), rng.Uint64()))
			md := digest.FromBytes(m)
			if err := s.PutSmall(ctx, md, "application/vnd.oci.image.manifest.v1+json", m); err != nil && !errors.Is(err, ErrNoSpace) {
				fail("put small: %v", err)
			}
			s.PutTag(ctx, fmt.Sprintf("r.io/x:%d", rng.IntN(20)), Tag{Digest: md, Checked: time.Now()})
			s.SetRefs(ctx, md, []digest.Digest{pick()})
			known = append(known, md)
		case op < 80: // read back
			d := pick()
			rc, _, err := s.Reader(ctx, d)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				fail("reader: %v", err)
			}
			h := d.Algorithm().Digester()
			b := make([]byte, 64<<10)
			for {
				n, err := rc.Read(b)
				h.Hash().Write(b[:n])
				if err != nil {
					break
				}
			}
			rc.Close()
			if h.Digest() != d {
				fail("read %s got %s", d, h.Digest())
			}
		case op < 85:
			s.Delete(ctx, pick())
		case op < 92:
			if rng.IntN(2) == 0 {
				s.Pin(ctx, pick())
			} else {
				s.Unpin(ctx, pick())
			}
		case op < 99:
			if _, err := s.GC(ctx); err != nil {
				fail("gc: %v", err)
			}
		default:
			if res, err := s.Verify(ctx); err != nil || len(res.Corrupt) > 0 {
				fail("verify: %+v %v", res, err)
			}
		}
		if len(known) > 2000 {
			known = known[1000:]
		}
	}
}

// limitedBuffer keeps the last 64 KiB written to it (the child's stderr).
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.b = append(l.b, p...)
	if len(l.b) > 64<<10 {
		l.b = l.b[len(l.b)-64<<10:]
	}
	return len(p), nil
}
func (l *limitedBuffer) String() string { return string(l.b) }
