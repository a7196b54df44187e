package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTokenAuthUpstream: an upstream with registry token auth (anonymous pull allowed outside
// private/): shoal gets anonymous tokens for public images and credentialed ones (from its YAML,
// password_file) for private images; without credentials a private pull fails cleanly.
func TestTokenAuthUpstream(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	reg := up.Token.Addr

	t.Run("anonymous", func(t *testing.T) {
		s := startShoal(t, shoalOpts{registries: []string{reg + "=" + up.Token.URL}, defaultRegistry: reg})
		dst := t.TempDir()
		if out, err := skopeoCopy(t.Context(), t, s.Addr, up.Img.Small.Ref(), "oci:"+dst+":v1", false, "--preserve-digests"); err != nil {
			t.Fatalf("skopeo copy through shoal from the token upstream: %v\n%s", err, out)
		}
		if got := ociLayoutDigest(t, dst); got != up.Img.Small.Digest {
			t.Errorf("digest %s, want %s", got, up.Img.Small.Digest)
		}
		// Private image, no credentials: an error, not a hang.
		start := time.Now()
		if out, err := skopeoCopy(ctxTimeout(t, 90*time.Second), t, s.Addr, up.Img.Private.Ref(), "oci:"+t.TempDir()+":v1", false); err == nil {
			t.Errorf("pull of a private image without credentials succeeded:\n%s", out)
		}
		if d := time.Since(start); d > 60*time.Second {
			t.Errorf("failing pull took %s", d)
		}
		r := do(t, http.MethodGet, s.URL, "/v2/"+up.Img.Private.Repo+"/manifests/"+up.Img.Private.Tag, acceptAll)
		if r.Status < 400 {
			t.Errorf("private manifest without credentials: status %d", r.Status)
		} else if _, err := ociErrorCodes(r.Body); err != nil {
			t.Errorf("private manifest without credentials: %v", err)
		}
	})

	t.Run("credentials-from-config", func(t *testing.T) {
		before := len(up.Tokens.requests())
		s := startShoal(t, shoalOpts{defaultRegistry: reg, config: &shoalConfig{Registries: map[string]shoalRegistry{
			reg: {URL: up.Token.URL, Username: tokenUser, PasswordFile: writeSecret(t, tokenPass)},
		}}})
		dst := t.TempDir()
		if out, err := skopeoCopy(t.Context(), t, s.Addr, up.Img.Private.Ref(), "oci:"+dst+":v1", false, "--preserve-digests"); err != nil {
			t.Fatalf("private pull with credentials in shoal's config: %v\n%s", err, out)
		}
		if got := ociLayoutDigest(t, dst); got != up.Img.Private.Digest {
			t.Errorf("digest %s, want %s", got, up.Img.Private.Digest)
		}
		authed := false
		for _, r := range up.Tokens.requests()[before:] {
			authed = authed || (r.Authed && r.User == tokenUser)
		}
		if !authed {
			t.Errorf("token issuer saw no request authenticated as %s: %+v", tokenUser, up.Tokens.requests()[before:])
		}
		assertSecretNotLogged(t, s, tokenPass)
	})
}

// TestBasicAuthUpstream: an htpasswd upstream with credentials from shoal's YAML (password_file):
// pulls succeed through shoal, with skopeo (default registry) and ctr (?ns=); a wrong password
// gives the client a clear error quickly.
func TestBasicAuthUpstream(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	reg := up.Basic.Addr

	t.Run("good-password", func(t *testing.T) {
		s := startShoal(t, shoalOpts{defaultRegistry: reg, config: &shoalConfig{Registries: map[string]shoalRegistry{
			reg: {URL: up.Basic.URL, Username: basicUser, PasswordFile: writeSecret(t, basicPass)},
		}}})
		dst := t.TempDir()
		if out, err := skopeoCopy(t.Context(), t, s.Addr, up.Img.Multi.Ref(), "oci:"+dst+":v1", true, "--preserve-digests"); err != nil {
			t.Fatalf("skopeo copy through shoal from the htpasswd upstream: %v\n%s", err, out)
		}
		if got := ociLayoutDigest(t, dst); got != up.Img.Multi.Digest {
			t.Errorf("digest %s, want %s", got, up.Img.Multi.Digest)
		}
		c := startContainerd(t)
		hosts := hostsDir(t, s.URL, reg)
		ref := reg + "/" + up.Img.Small.Ref()
		if out, err := c.ctr(t.Context(), t, "image", "pull", "--hosts-dir", hosts, ref); err != nil {
			t.Fatalf("ctr pull through shoal from the htpasswd upstream: %v\n%s", err, out)
		}
		if got := c.imageDigest(t, ref); got != up.Img.Small.Digest {
			t.Errorf("containerd recorded %s, want %s", got, up.Img.Small.Digest)
		}
		assertSecretNotLogged(t, s, basicPass)
	})

	t.Run("wrong-password", func(t *testing.T) {
		s := startShoal(t, shoalOpts{defaultRegistry: reg, config: &shoalConfig{Registries: map[string]shoalRegistry{
			reg: {URL: up.Basic.URL, Username: basicUser, PasswordFile: writeSecret(t, "wrong-password-d00d")},
		}}})
		start := time.Now()
		out, err := skopeoCopy(ctxTimeout(t, 90*time.Second), t, s.Addr, up.Img.Small.Ref(), "oci:"+t.TempDir()+":v1", false)
		if err == nil {
			t.Fatalf("pull with a wrong upstream password succeeded:\n%s", out)
		}
		if d := time.Since(start); d > 60*time.Second {
			t.Errorf("failing pull took %s", d)
		}
		t.Logf("skopeo's error with a wrong upstream password: %s", lastLine(out))
		r := do(t, http.MethodGet, s.URL, "/v2/"+up.Img.Small.Repo+"/manifests/"+up.Img.Small.Tag, acceptAll)
		if r.Status < 400 {
			t.Errorf("manifest with a wrong upstream password: status %d", r.Status)
		}
		codes, err := ociErrorCodes(r.Body)
		if err != nil {
			t.Errorf("manifest with a wrong upstream password: %v", err)
		}
		t.Logf("shoal answers %d %v", r.Status, codes)
		if r.Header.Get("WWW-Authenticate") != "" && r.Status == http.StatusUnauthorized {
			t.Errorf("shoal relayed the upstream's challenge to the client: %q", r.Header.Get("WWW-Authenticate"))
		}
		assertSecretNotLogged(t, s, "wrong-password-d00d")
	})
}

// assertSecretNotLogged checks that shoal's log never contains a password.
func assertSecretNotLogged(t *testing.T, s *shoalDaemon, secret string) {
	t.Helper()
	if strings.Contains(s.proc.log(), secret) {
		t.Errorf("shoal's log contains the upstream password")
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
