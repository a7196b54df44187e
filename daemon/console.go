package daemon

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/console"
	"github.com/shoal-mirror/shoal/internal/guard"
)

// listenConsole opens the web console's listener (console/): loopback by default, off
// loopback only with an htpasswd file (Config.Validate refuses it without).
func (o *ops) listenConsole(cfg Config) error {
	addr := cfg.Console.Listen
	if addr == "off" || addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	switch {
	case err == nil:
	case addr == DefaultConsoleListen && errors.Is(err, syscall.EADDRINUSE):
		o.consoleLog.Warn("console address in use: running without the web console (set --console-listen)", "addr", addr)
		return nil
	default:
		return fmt.Errorf("console listener: %w", err)
	}
	var auth func(user, pass string) bool
	if cfg.Console.Htpasswd != "" {
		b, err := os.ReadFile(cfg.Console.Htpasswd)
		if err == nil {
			var users map[string][]byte
			if users, err = guard.ParseHtpasswd(b); err == nil {
				auth = newBasicAuth(users).check
			}
		}
		if err != nil {
			_ = ln.Close()
			return &ConfigError{Key: "console.htpasswd", Err: err}
		}
	}
	c, err := console.New(console.Options{
		// The console reads and acts through the admin API, in process, as `shoal` would.
		Admin:        adminapi.NewClientFor(inProcess{h: o.admin.routes()}),
		Loopback:     guard.ListensOnLoopback(ln.Addr().String()),
		Authenticate: auth,
		Log:          o.consoleLog,
	})
	if err != nil {
		_ = ln.Close()
		return err
	}
	o.consoleLn, o.consoleAddr = ln, ln.Addr().String()
	o.consoleSrv = &http.Server{
		Handler:           c,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(o.log.Handler(), slog.LevelDebug),
	}
	return nil
}

// ConsoleAddr is the web console's address ("" when off).
func (d *Daemon) ConsoleAddr() string {
	if d.ops == nil {
		return ""
	}
	return d.ops.consoleAddr
}

// basicAuth checks console logins against htpasswd users; a password that matched once is
// recognised by its SHA-256 without another bcrypt round (the console loads several
// resources per page, each with the credentials).
type basicAuth struct {
	users   map[string][]byte
	dummy   []byte
	ok      sync.Map
	hashing chan struct{}
}

func newBasicAuth(users map[string][]byte) *basicAuth {
	cost := bcrypt.DefaultCost
	for _, h := range users {
		if c, err := bcrypt.Cost(h); err == nil {
			cost = c
		}
		break
	}
	dummy, _ := bcrypt.GenerateFromPassword([]byte("shoal console dummy"), cost)
	return &basicAuth{users: users, dummy: dummy, hashing: make(chan struct{}, 2)}
}

func (a *basicAuth) check(user, pass string) bool {
	hash, known := a.users[user]
	if !known {
		hash = a.dummy // same time for unknown names: names cannot be probed
	}
	sum := sha256.Sum256([]byte(user + ":" + pass))
	if v, ok := a.ok.Load(user); ok && known && subtle.ConstantTimeCompare(v.([]byte), sum[:]) == 1 {
		return true
	}
	a.hashing <- struct{}{}
	err := bcrypt.CompareHashAndPassword(hash, []byte(pass))
	<-a.hashing
	if err != nil || !known {
		return false
	}
	a.ok.Store(user, sum[:])
	return true
}
