package upstream

import (
	"errors"
	"net/http"
	"testing"
)

// TestReloadRotatedPassword: the registry's password changes, the password file is
// rewritten, Reload picks it up without a restart (Basic and Bearer alike).
func TestReloadRotatedPassword(t *testing.T) {
	t.Parallel()
	for _, bearer := range []bool{false, true} {
		var iss *issuer
		if bearer {
			iss = newIssuer(t, map[string]string{"bob": "old-secret"}, false)
		}
		up := newUpstream(t, iss)
		if !bearer {
			up.basic = [2]string{"bob", "old-secret"}
		}
		up.image("private/db", "1")
		pf := t.TempDir() + "/pw"
		writeFile(t, pf, "old-secret\n")
		cfg := cfgFor(up, RegistryConfig{Username: "bob", PasswordFile: pf})
		c := newTestClient(t, cfg, nil)
		if _, err := c.HeadManifest(t.Context(), up.host, "private/db", "1"); err != nil {
			t.Fatalf("bearer=%v: before rotation: %v", bearer, err)
		}

		if bearer {
			iss.users["bob"] = "new-secret"
			iss.generation.Add(1) // revoke tokens issued for the old password
		} else {
			up.basic[1] = "new-secret"
		}
		_, err := c.HeadManifest(t.Context(), up.host, "private/db", "1")
		var ue *Error
		if !errors.As(err, &ue) || ue.Status != http.StatusUnauthorized {
			t.Fatalf("bearer=%v: with the old password: err = %v, want 401", bearer, err)
		}
		writeFile(t, pf, "new-secret\n")
		if err := c.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		if _, err := c.HeadManifest(t.Context(), up.host, "private/db", "1"); err != nil {
			t.Fatalf("bearer=%v: after Reload: %v", bearer, err)
		}
	}
}
