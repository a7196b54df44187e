package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// registry is distribution's registry (Debian's docker-registry) running as a child process.
type registry struct {
	Addr string // 127.0.0.1:PORT
	URL  string // http://127.0.0.1:PORT
	proc *proc
}

// registryAuth selects the registry's auth: none, htpasswd, or token.
type registryAuth struct {
	htpasswdFile string       // bcrypt htpasswd file
	token        *tokenIssuer // token auth against this issuer
	service      string       // token service name (aud)
}

// startRegistry starts `docker-registry serve` on a free loopback port over rootDir (shared by
// several registries so that the auth ones serve what was seeded through the open one).
func startRegistry(s scope, name, rootDir string, auth registryAuth) *registry {
	s.Helper()
	bin := tool(s, "docker-registry")
	cfgFor := func(addr string) string {
		var b strings.Builder
		fmt.Fprintf(&b, `version: 0.1
log:
  level: info
  accesslog:
    disabled: false
  fields:
    service: %s
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: e2e-not-secret
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
`, name, rootDir, addr)
		switch {
		case auth.htpasswdFile != "":
			fmt.Fprintf(&b, "auth:\n  htpasswd:\n    realm: %s-realm\n    path: %s\n", name, auth.htpasswdFile)
		case auth.token != nil:
			fmt.Fprintf(&b, "auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n",
				auth.token.Realm, auth.service, tokenIssuerName, auth.token.CertFile)
		}
		cfg := filepath.Join(s.TempDir(), name+".yml")
		if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
			s.Fatalf("%s: %v", name, err)
		}
		return cfg
	}
	start := func(addr string) *proc { return startProc(s, name, nil, bin, "serve", cfgFor(addr)) }
	ready := func(addr string) error {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	}
	addr, p := startOnFreePort(s, name+" ready", start, ready)
	return &registry{Addr: addr, URL: "http://" + addr, proc: p}
}
