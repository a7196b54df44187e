package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// shoalDaemon is a `shoal daemon` child process.
type shoalDaemon struct {
	Addr    string // 127.0.0.1:PORT
	URL     string // http://127.0.0.1:PORT
	DataDir string
	proc    *proc
}

// shoalOpts are the daemon's command-line options that tests vary.
type shoalOpts struct {
	registries      []string     // HOST=URL, one --registry each
	defaultRegistry string       // --default-registry
	tagTTL          string       // --tag-ttl
	config          *shoalConfig // written to a YAML file and passed as --config
	dataDir         string       // reuse a data dir (restart); default: a new temp dir
	args            []string     // anything else
}

// shoalConfig is the part of shoal's YAML configuration the tests use. Key names live here
// only, so that a change in the daemon's schema is a change in one place.
type shoalConfig struct {
	Registries map[string]shoalRegistry `yaml:"registries,omitempty"`
	Upstream   *shoalUpstream           `yaml:"upstream,omitempty"`
}

type shoalRegistry struct {
	URL          string `yaml:"url"`
	Username     string `yaml:"username,omitempty"`
	Password     string `yaml:"password,omitempty"`
	PasswordFile string `yaml:"password_file,omitempty"`
	WriteThrough bool   `yaml:"write_through,omitempty"`
}

type shoalUpstream struct {
	OnlyConfigured bool `yaml:"only_configured"`
}

// writeShoalConfig writes cfg as YAML into a temp file and returns its path.
func writeShoalConfig(t scope, cfg *shoalConfig) string {
	t.Helper()
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatalf("shoal config: %v", err)
	}
	p := filepath.Join(t.TempDir(), "shoal.yaml")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatalf("shoal config: %v", err)
	}
	return p
}

// writeSecret writes a password file (no trailing newline handling is left to the daemon: we
// write one, as `echo pass > file` would).
func writeSecret(t *testing.T, secret string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// shoalArgs builds the `shoal daemon` command line for o on addr.
func shoalArgs(t scope, addr string, o *shoalOpts) []string {
	if o.dataDir == "" {
		o.dataDir = filepath.Join(t.TempDir(), "data")
	}
	// P2P off unless a test turns it on with "--p2p=true" in o.args (the last flag wins).
	argv := []string{shoalBin, "daemon", "--listen", addr, "--data-dir", o.dataDir, "--log-format", "json", "--p2p=false"}
	for _, r := range o.registries {
		argv = append(argv, "--registry", r)
	}
	if o.defaultRegistry != "" {
		argv = append(argv, "--default-registry", o.defaultRegistry)
	}
	if o.tagTTL != "" {
		argv = append(argv, "--tag-ttl", o.tagTTL)
	}
	if o.config != nil {
		argv = append(argv, "--config", writeShoalConfig(t, o.config))
	}
	return append(argv, o.args...)
}

// startShoal starts a daemon and waits until GET /v2/ answers like a registry.
func startShoal(t *testing.T, o shoalOpts) *shoalDaemon {
	t.Helper()
	if shoalBuildErr != nil {
		t.Fatal(shoalBuildErr)
	}
	var argv []string
	start := func(addr string) *proc {
		argv = shoalArgs(t, addr, &o)
		return startProc(t, "shoal", nil, argv...)
	}
	addr, p := startOnFreePort(t, "shoal ready", start, func(addr string) error {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		if v := resp.Header.Get("Docker-Distribution-Api-Version"); v != "registry/2.0" {
			return fmt.Errorf("GET /v2/: Docker-Distribution-Api-Version %q", v)
		}
		return nil
	})
	return &shoalDaemon{Addr: addr, URL: "http://" + addr, DataDir: o.dataDir, proc: p}
}

// stop stops the daemon (SIGTERM) and waits for it.
func (d *shoalDaemon) stop() { d.proc.stop() }

// httpClient never follows redirects: the tests look at what shoal itself answers.
var httpClient = &http.Client{
	Timeout:       2 * time.Minute,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// response is a fully read HTTP response.
type response struct {
	Status int
	Header http.Header
	Body   []byte
	Err    error // error while reading the body (headers were received)
}

// do sends a request; rawPath is sent as is (no cleaning), so "/v2/../x" reaches the server.
func do(t *testing.T, method, base, rawPath string, hdr map[string]string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, base+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	path, query, _ := strings.Cut(rawPath, "?")
	req.URL.Opaque, req.URL.RawQuery = path, query // sent byte for byte, never cleaned
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, base, rawPath, err)
	}
	defer resp.Body.Close()
	body, rerr := io.ReadAll(resp.Body)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: body, Err: rerr}
}

// acceptAll is the Accept list containerd sends when it resolves a tag.
var acceptAll = map[string]string{"Accept": strings.Join([]string{
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.oci.image.index.v1+json",
	"*/*",
}, ", ")}

// ociErrorCodes parses an OCI error body {"errors":[{"code":...}]}.
func ociErrorCodes(body []byte) ([]string, error) {
	var e struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&e); err != nil {
		return nil, fmt.Errorf("not OCI error JSON: %v: %q", err, truncateForLog(body))
	}
	if len(e.Errors) == 0 {
		return nil, fmt.Errorf("OCI error JSON without errors: %q", truncateForLog(body))
	}
	var codes []string
	for _, x := range e.Errors {
		codes = append(codes, x.Code)
	}
	return codes, nil
}

func truncateForLog(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

// ctxTimeout is a test context with a deadline, for client commands.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}
