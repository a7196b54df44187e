package adminapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultSocketName is the admin socket's file name inside the daemon's data directory.
const DefaultSocketName = "admin.sock"

// Addr is a parsed admin address: a unix socket path or a TCP host:port.
type Addr struct {
	Network string // "unix" or "tcp"
	Address string // socket path, or host:port
}

func (a Addr) String() string {
	if a.Network == "unix" {
		return "unix:" + a.Address
	}
	return a.Address
}

// ParseAddr reads "unix:/path", "unix:///path", "/path" (a unix socket), "http://host:port"
// or "host:port" (TCP).
func ParseAddr(s string) (Addr, error) {
	switch {
	case s == "":
		return Addr{}, errors.New("empty admin address")
	case strings.HasPrefix(s, "unix://"):
		return unixAddr(strings.TrimPrefix(s, "unix://"))
	case strings.HasPrefix(s, "unix:"):
		return unixAddr(strings.TrimPrefix(s, "unix:"))
	case strings.HasPrefix(s, "/"), strings.HasPrefix(s, "./"):
		return unixAddr(s)
	}
	hp := strings.TrimSuffix(strings.TrimPrefix(s, "http://"), "/")
	if _, _, err := net.SplitHostPort(hp); err != nil {
		return Addr{}, fmt.Errorf("admin address %q: want a socket path (unix:/path) or HOST:PORT: %w", s, err)
	}
	return Addr{Network: "tcp", Address: hp}, nil
}

func unixAddr(p string) (Addr, error) {
	if p == "" {
		return Addr{}, errors.New("admin address: empty socket path")
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return Addr{}, err
	}
	return Addr{Network: "unix", Address: abs}, nil
}

// maxSunPath is the longest path bind/connect take (sockaddr_un.sun_path is 108 bytes with
// its terminating NUL).
const maxSunPath = 107

// withShortPath calls fn with a path to the socket that fits sun_path. Data directories can be
// deep (test temp dirs, Kubernetes volume paths): a longer path is reached through the
// directory's file descriptor in /proc/self/fd, which bind and connect both follow.
func withShortPath(path string, fn func(string) error) error {
	if len(path) <= maxSunPath {
		return fn(path)
	}
	fd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	defer unix.Close(fd)
	return fn(fmt.Sprintf("/proc/self/fd/%d/%s", fd, filepath.Base(path)))
}

// Listen opens the admin listener. A unix socket gets mode 0660 (owner and group; the data
// directory's owner is the daemon's user) and replaces a stale socket file left by a daemon
// that died: the caller must already hold the data directory (the store's lock), so no live
// daemon can own it.
func Listen(a Addr) (net.Listener, error) {
	if a.Network != "unix" {
		return net.Listen("tcp", a.Address)
	}
	if fi, err := os.Lstat(a.Address); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", a.Address)
		}
		if err := os.Remove(a.Address); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	var ln net.Listener
	err := withShortPath(a.Address, func(p string) error {
		l, err := net.Listen("unix", p)
		if err != nil {
			return err
		}
		// net removes the socket file on Close by the name it was bound with, which may be
		// the /proc path; the daemon removes it by its real name instead.
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		ln = l
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(a.Address, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// dial connects to the admin address.
func dial(ctx context.Context, a Addr) (net.Conn, error) {
	var d net.Dialer
	if a.Network != "unix" {
		return d.DialContext(ctx, "tcp", a.Address)
	}
	var c net.Conn
	err := withShortPath(a.Address, func(p string) error {
		var err error
		c, err = d.DialContext(ctx, "unix", p)
		return err
	})
	return c, err
}

// UnreachableError means nothing answers on the admin address: the daemon is not running,
// or listens elsewhere.
type UnreachableError struct {
	Addr Addr
	Err  error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach the shoal daemon at %s: %v", e.Addr, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// unreachable reports whether a dial error means "nobody there" rather than a fault of a
// running daemon.
func unreachable(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) ||
		errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.ENOTSOCK)
}
