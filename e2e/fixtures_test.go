package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fixtures are the upstream registries shared by all tests, seeded once. Tests never change
// them; each test puts its own counting proxy and its own shoal in front.
type fixtures struct {
	once  sync.Once
	err   string
	scope sharedScope

	Open   *registry // no auth; seeded
	Basic  *registry // htpasswd (BasicUser/BasicPass), same storage as Open
	Token  *registry // token auth via Tokens, same storage as Open; anonymous pull outside private/
	Tokens *tokenIssuer
	Img    seededImages
}

const (
	basicUser = "e2euser"
	basicPass = "e2e-secret-pass-7f3a"
	tokenUser = "tokenuser"
	tokenPass = "token-secret-pass-91cc"
)

var shared = &fixtures{}

// upstreams returns the shared, seeded upstream registries, starting them on first use.
func upstreams(t *testing.T) *fixtures {
	t.Helper()
	shared.once.Do(func() {
		defer func() {
			if r := recover(); r != nil {
				sf, ok := r.(sharedFailure)
				if !ok {
					panic(r)
				}
				shared.err = string(sf)
			}
		}()
		start := time.Now()
		shared.setup()
		shared.scope.Logf("upstreams started and seeded in %s", time.Since(start).Round(time.Millisecond))
	})
	if shared.err != "" {
		t.Fatalf("shared upstream fixtures: %s", shared.err)
	}
	return shared
}

func (f *fixtures) setup() {
	s := &f.scope
	root := filepath.Join(s.TempDir(), "storage")
	f.Open = startRegistry(s, "upstream", root, registryAuth{})
	img, err := seedAll(f.Open.Addr)
	if err != nil {
		s.Fatalf("seeding %s: %v", f.Open.Addr, err)
	}
	f.Img = img

	out, err := exec.Command(tool(s, "htpasswd"), "-Bbn", basicUser, basicPass).Output()
	if err != nil {
		s.Fatalf("htpasswd: %v", err)
	}
	hp := filepath.Join(s.TempDir(), "htpasswd")
	if err := os.WriteFile(hp, out, 0o644); err != nil {
		s.Fatalf("htpasswd: %v", err)
	}
	f.Basic = startRegistry(s, "upstream-basic", root, registryAuth{htpasswdFile: hp})

	f.Tokens = startTokenIssuer(s, map[string]string{tokenUser: tokenPass})
	f.Token = startRegistry(s, "upstream-token", root, registryAuth{token: f.Tokens, service: "upstream-token"})
}

func (f *fixtures) close() {
	if f.scope.Failed() {
		fmt.Fprintln(os.Stderr, "e2e: shared fixtures failed")
	}
	f.scope.closeAll()
}
