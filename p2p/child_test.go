package p2p

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// A child node runs in a separate process (this test binary, re-executed) so that a test can
// really freeze it with SIGSTOP: its kernel keeps accepting connections and data, and nothing
// ever answers.
const (
	childEnv          = "SHOAL_P2P_TEST_CHILD"
	childIPEnv        = "SHOAL_P2P_CHILD_IP"
	childBootstrapEnv = "SHOAL_P2P_CHILD_BOOTSTRAP"
	childSeedEnv      = "SHOAL_P2P_CHILD_SEED"
	childSizeEnv      = "SHOAL_P2P_CHILD_SIZE"
)

// runChild starts a node holding one blob, provides it, prints "READY <id> <digest>" and
// runs until its stdin closes.
func runChild() int {
	seed, _ := strconv.ParseUint(os.Getenv(childSeedEnv), 10, 64)
	size, _ := strconv.Atoi(os.Getenv(childSizeEnv))
	dir, err := os.MkdirTemp("", "shoal-p2p-child")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	cfg := testConfig(os.Getenv(childIPEnv))
	cfg.Bootstrap = []string{os.Getenv(childBootstrapEnv)}
	blob := randomBlob(seed, size)
	ctx := context.Background()
	n, err := New(ctx, cfg, dir, newMemContent(blob), slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer n.Close()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	ok := n.waitRoutingTable(wctx)
	cancel()
	if !ok {
		fmt.Fprintln(os.Stderr, "child: routing table stayed empty")
		return 1
	}
	d := digest.FromBytes(blob)
	if err := n.Provide(ctx, d); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("READY %s %s %s\n", n.ID(), d, n.Addrs()[0])
	io.Copy(io.Discard, os.Stdin)
	return 0
}

type childNode struct {
	id     string
	addr   string
	digest digest.Digest
	cmd    *exec.Cmd
}

// startChild starts a child node on ip that joins through bootstrap and provides
// randomBlob(seed, size). It is killed at the end of the test.
func startChild(t *testing.T, ip, bootstrap string, seed uint64, size int) *childNode {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		childEnv+"=1", childIPEnv+"="+ip, childBootstrapEnv+"="+bootstrap,
		childSeedEnv+"="+strconv.FormatUint(seed, 10), childSizeEnv+"="+strconv.Itoa(size))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Signal(syscall.SIGKILL) // works on a stopped process too
		cmd.Wait()
		if t.Failed() {
			t.Logf("child stderr:\n%s", stderr.String())
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY ") {
				lines <- sc.Text()
				break
			}
		}
		io.Copy(io.Discard, stdout)
		close(lines)
	}()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatalf("child exited before READY; stderr:\n%s", stderr.String())
		}
		f := strings.Fields(l)
		return &childNode{id: f[1], digest: digest.Digest(f[2]), addr: f[3], cmd: cmd}
	case <-time.After(20 * time.Second):
		t.Fatalf("child not READY within 20s; stderr:\n%s", stderr.String())
	}
	return nil
}
