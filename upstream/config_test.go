package upstream

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	writeFile(t, pw, "topsecret\n")
	empty := filepath.Join(dir, "empty")
	writeFile(t, empty, "")
	badJSON := filepath.Join(dir, "bad.json")
	writeFile(t, badJSON, `{"auths": {"ghcr.io": {"auth": "c2VjcmV0OnZhbHVl"`)
	badAuth := filepath.Join(dir, "badauth.json")
	writeFile(t, badAuth, `{"auths": {"ghcr.io": {"auth": "!!!notbase64-hunter2"}}}`)
	missing := filepath.Join(dir, "missing")

	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the message; "" means valid
	}{
		{"default", DefaultConfig(), ""},
		{"zero", Config{}, ""},
		{"credentials by file", Config{Registries: map[string]RegistryConfig{"ghcr.io": {Username: "u", PasswordFile: pw}}}, ""},
		{"plain http named", Config{Registries: map[string]RegistryConfig{"127.0.0.1:5001": {URL: "http://127.0.0.1:5001"}}}, ""},
		{"bad scheme", Config{Registries: map[string]RegistryConfig{"docker.io": {URL: "ftp://registry-1.docker.io"}}},
			`registries."docker.io".url: scheme must be http or https, got "ftp"`},
		{"no scheme", Config{Registries: map[string]RegistryConfig{"docker.io": {URL: "registry-1.docker.io"}}},
			`registries."docker.io".url: scheme must be http or https`},
		{"credentials in url", Config{Registries: map[string]RegistryConfig{"ghcr.io": {URL: "https://u:p@ghcr.io"}}},
			`registries."ghcr.io".url: must not contain credentials`},
		{"query in url", Config{Registries: map[string]RegistryConfig{"ghcr.io": {URL: "https://ghcr.io/?x=1"}}},
			`registries."ghcr.io".url: must not have a query`},
		{"bad key", Config{Registries: map[string]RegistryConfig{"https://ghcr.io": {}}},
			`registries."https://ghcr.io": not a registry host`},
		{"bad port", Config{Registries: map[string]RegistryConfig{"ghcr.io:http": {}}}, `registries."ghcr.io:http": not a registry host`},
		{"duplicate", Config{Registries: map[string]RegistryConfig{"docker.io": {}, "index.docker.io": {}}},
			`names the same registry`},
		{"both passwords", Config{Registries: map[string]RegistryConfig{"ghcr.io": {Username: "u", Password: "p", PasswordFile: pw}}},
			`registries."ghcr.io": set password or password_file, not both`},
		{"password without user", Config{Registries: map[string]RegistryConfig{"ghcr.io": {Password: "p"}}},
			`registries."ghcr.io".username: required with a password`},
		{"user without password", Config{Registries: map[string]RegistryConfig{"ghcr.io": {Username: "u"}}},
			`registries."ghcr.io": username "u" has no password or password_file`},
		{"missing password file", Config{Registries: map[string]RegistryConfig{"ghcr.io": {Username: "u", PasswordFile: missing}}},
			`registries."ghcr.io".password_file: cannot read "` + missing + `": no such file or directory`},
		{"empty password file", Config{Registries: map[string]RegistryConfig{"ghcr.io": {Username: "u", PasswordFile: empty}}},
			`registries."ghcr.io".password_file: "` + empty + `" is empty`},
		{"bad realm host", Config{Registries: map[string]RegistryConfig{"nvcr.io": {RealmHosts: []string{"https://authn.nvidia.com"}}}},
			`registries."nvcr.io".realm_hosts[0]`},
		{"missing docker config", Config{DockerConfig: missing}, `docker_config: cannot read "` + missing + `"`},
		{"invalid docker config", Config{DockerConfig: badJSON}, `docker_config: "` + badJSON + `" is not a Docker config.json`},
		{"bad auth in docker config", Config{DockerConfig: badAuth}, `auths."ghcr.io".auth is not base64`},
		{"negative timeout", Config{Timeout: -time.Second}, `timeout: must not be negative`},
		{"negative retries", Config{Retries: -1}, `retries: must be between 0 and 100, got -1`},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: Validate() = %v, want nil", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: Validate() = %v, want %q", tc.name, err, tc.want)
		case err != nil && (strings.Contains(err.Error(), "topsecret") || strings.Contains(err.Error(), "hunter2") ||
			strings.Contains(err.Error(), "c2VjcmV0")):
			t.Errorf("%s: Validate() leaks a secret: %v", tc.name, err)
		case err != nil && strings.Contains(err.Error(), "\n"):
			t.Errorf("%s: Validate() message spans lines: %q", tc.name, err)
		}
	}
}

func TestDockerConfigCredentials(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "config.json")
	writeFile(t, p, `{"auths":{
		"https://index.docker.io/v1/": {"auth": "`+base64Std("hubuser:hubpass")+`"},
		"ghcr.io": {"username": "gh", "password": "ghp"},
		"https://quay.io/v2/": {"identitytoken": "idtok"},
		"http://127.0.0.1:5001": {"auth": "`+base64Std("local:pw:with:colons")+`"},
		"gcr.io": {}
	}, "credsStore": "desktop"}`)
	got, helpers, err := readDockerConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]credentials{
		"docker.io":      {"hubuser", "hubpass"},
		"ghcr.io":        {"gh", "ghp"},
		"quay.io":        {"", "idtok"},
		"127.0.0.1:5001": {"local", "pw:with:colons"},
	}
	if !helpers {
		t.Error("credsStore not reported")
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	for h, w := range want {
		if got[h] != w {
			t.Errorf("%s: got %+v, want %+v", h, got[h], w)
		}
	}
	// Configured credentials win over the Docker config's.
	c, err := New(Config{DockerConfig: p, Registries: map[string]RegistryConfig{"ghcr.io": {Username: "cfg", Password: "cfgpw"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := c.registry("ghcr.io"); r.creds != (credentials{"cfg", "cfgpw"}) {
		t.Errorf("ghcr.io creds = %+v, want the configured ones", r.creds)
	}
	if r, _ := c.registry("docker.io"); r.creds != (credentials{"hubuser", "hubpass"}) {
		t.Errorf("docker.io creds = %+v, want the Docker config's", r.creds)
	}
}

func TestWorldReadablePasswordFileWarns(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "pw")
	writeFile(t, p, "supersecret")
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	_, err := New(Config{Registries: map[string]RegistryConfig{"ghcr.io": {Username: "u", PasswordFile: p}}},
		slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.Contains(out, "world-readable") || !strings.Contains(out, `registries.\"ghcr.io\".password_file`) {
		t.Errorf("no warning naming the key: %s", out)
	}
	if strings.Contains(out, "supersecret") {
		t.Errorf("log leaks the password: %s", out)
	}
}
