package daemon

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/shoal-mirror/shoal/internal/testutil"
	"github.com/shoal-mirror/shoal/upstream"
)

// TestSecretsNeverShown runs a daemon that holds an upstream password (from a file) and an
// htpasswd, drives it through successes and failures (wrong client passwords, an upstream
// that echoes the credentials it was sent back in its error), and then searches everything
// it said for the secrets: its log at debug level, every answer to clients, the metrics and
// the admin API.
func TestSecretsNeverShown(t *testing.T) {
	t.Parallel()
	const (
		upstreamSecret = "up-s3cret-Zq9"
		clientSecret   = "cl-s3cret-Wx7"
		wrongSecret    = "wr-s3cret-Kp4"
	)
	up := newUpstream(t)
	pushRandom(t, up, "private/app", 4096, 1)
	echoImg := pushRandom(t, up, "echo/app", 4096, 1)
	echoLayers, _ := echoImg.Layers()
	echoBlob, _ := echoLayers[0].Digest()
	up.basicAuth("private/", "bob", upstreamSecret)
	up.basicAuth("echo/", "bob", upstreamSecret)
	inner := up.srv.Config.Handler
	up.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v2/echo/") {
			if _, pass, ok := r.BasicAuth(); ok {
				// A careless registry that quotes what it was sent.
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusForbidden)
				fmt.Fprintf(w, `{"errors":[{"code":"DENIED","message":"refused %s (password %s)"}]}`, r.Header.Get("Authorization"), pass)
				return
			}
		}
		inner.ServeHTTP(w, r)
	})
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "upstream.pw")
	if err := os.WriteFile(pwFile, []byte(upstreamSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hp := testutil.WriteHtpasswd(t, map[string]string{"alice": clientSecret})
	d, logs := startDaemonLogged(t, up, func(c *Config) {
		c.SetRegistry(up.host(), upstream.RegistryConfig{Username: "bob", PasswordFile: pwFile})
		c.Guard.Htpasswd = hp
		c.Guard.AuthExemptCIDR = []string{"127.0.0.1/32"}
		c.AdminListen = "127.0.0.1:0"
		c.MetricsListen = "127.0.0.1:0"
	})

	var seen strings.Builder // everything the daemon said to anyone
	remoteC := clientFrom("127.0.0.2", nil)
	get := func(c *http.Client, url, user, pass string) int {
		req, _ := http.NewRequest("GET", url, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		fmt.Fprintf(&seen, "%s %d %v\n%s\n", url, resp.StatusCode, resp.Header, b)
		return resp.StatusCode
	}
	base := "http://" + d.Addr()
	if s := get(remoteC, base+"/v2/private/app/manifests/latest", "alice", wrongSecret); s != 401 {
		t.Errorf("wrong client password: %d", s)
	}
	if s := get(remoteC, base+"/v2/private/app/manifests/latest", "alice", clientSecret); s != 200 {
		t.Errorf("private manifest with the right client password: %d", s)
	}
	// A GET (not the HEAD of a tag) brings the upstream's error body, echo and all.
	if s := get(remoteC, base+"/v2/echo/app/blobs/"+echoBlob.String(), "alice", clientSecret); s != 403 {
		t.Errorf("echoing upstream: %d, want 403", s)
	}
	ref, _ := name.ParseReference(d.Addr()+"/private/app:latest", name.Insecure)
	if _, err := remote.Image(ref, remote.WithTransport(remoteC.Transport), remote.WithAuth(&authn.Basic{Username: "alice", Password: clientSecret})); err != nil {
		t.Fatalf("private pull: %v", err)
	}
	if addr := d.MetricsAddr(); addr != "" {
		get(http.DefaultClient, "http://"+addr+"/metrics", "", "")
	} else {
		t.Error("metrics endpoint not running")
	}
	if addr := d.AdminAddr(); addr != "" {
		for _, p := range []string{"/v1/status", "/v1/history", "/v1/cache", "/v1/peers"} {
			get(http.DefaultClient, "http://"+strings.TrimPrefix(addr, "http://")+p, "", "")
		}
	} else {
		t.Error("admin API not running")
	}

	b64 := func(u, p string) string { return base64.StdEncoding.EncodeToString([]byte(u + ":" + p)) }
	for _, secret := range []string{upstreamSecret, clientSecret, wrongSecret, b64("bob", upstreamSecret), b64("alice", clientSecret), b64("alice", wrongSecret)} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the daemon's log contains a secret (%.6s…)", secret)
		}
		if strings.Contains(seen.String(), secret) {
			t.Errorf("an answer of the daemon contains a secret (%.6s…)", secret)
		}
	}
	if !strings.Contains(seen.String(), "[redacted]") {
		t.Error("the echoing upstream's message did not reach the client redacted")
	}
	if testing.Verbose() {
		t.Logf("answers:\n%s", seen.String())
	}
}
