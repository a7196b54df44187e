package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/shoal-mirror/shoal/adminapi"
)

// opsDaemon is a shoal daemon with its admin socket and metrics address known to the test.
type opsDaemon struct {
	*shoalDaemon
	Admin   string // unix:<data dir>/admin.sock, as --admin takes it
	Metrics string // 127.0.0.1:PORT
}

func startOpsShoal(t *testing.T, o shoalOpts) *opsDaemon {
	t.Helper()
	metrics := freeAddr(t)
	o.args = append(o.args, "--metrics-listen", metrics)
	s := startShoal(t, o)
	return &opsDaemon{shoalDaemon: s, Admin: "unix:" + filepath.Join(s.DataDir, "admin.sock"), Metrics: metrics}
}

// cliResult is what a user sees from one shoal command.
type cliResult struct {
	Stdout, Stderr string
	Code           int
}

// shoalCLI runs the built binary as a user would, with output going to pipes (not a terminal).
func shoalCLI(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	if shoalBuildErr != nil {
		t.Fatal(shoalBuildErr)
	}
	cmd := exec.CommandContext(t.Context(), shoalBin, args...)
	for _, kv := range os.Environ() { // the machine's own settings must not leak in
		if !strings.HasPrefix(kv, "SHOAL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := cliResult{Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.Code = ee.ExitCode()
	case err != nil:
		t.Fatalf("shoal %v: %v", args, err)
	}
	return res
}

// run is shoalCLI against d that must exit with code want.
func (d *opsDaemon) run(t *testing.T, want int, args ...string) cliResult {
	t.Helper()
	r := shoalCLI(t, nil, append([]string{"--admin", d.Admin}, args...)...)
	if r.Code != want {
		t.Fatalf("shoal %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.Code, want, r.Stdout, r.Stderr)
	}
	return r
}

func (d *opsDaemon) runJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	r := d.run(t, 0, append(args, "--json")...)
	if err := json.Unmarshal([]byte(r.Stdout), v); err != nil {
		t.Fatalf("shoal %s --json: %v\n%s", strings.Join(args, " "), err, r.Stdout)
	}
}

var ansiEscape = regexp.MustCompile("\x1b\\[")

// TestOperatorCLI drives the operator commands against a running daemon, as a user would: the
// output they read and the exit codes scripts rely on.
func TestOperatorCLI(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	hub := startUpstreamProxy(t, up.Open.URL) // plays docker.io, the default registry
	d := startOpsShoal(t, shoalOpts{registries: []string{"docker.io=" + hub.URL}})
	small, multi := up.Img.Small, up.Img.Multi

	t.Run("status", func(t *testing.T) {
		r := d.run(t, 0, "status")
		for _, want := range []string{"shoal", "dev", "ready", d.Addr, d.Admin, d.Metrics, "P2P disabled", "store"} {
			if !strings.Contains(r.Stdout, want) {
				t.Errorf("status does not show %q:\n%s", want, r.Stdout)
			}
		}
		var s adminapi.Status
		r = shoalCLI(t, []string{"SHOAL_ADMIN=" + d.Admin}, "status", "--json")
		if err := json.Unmarshal([]byte(r.Stdout), &s); r.Code != 0 || err != nil {
			t.Fatalf("SHOAL_ADMIN status --json: exit %d, %v\n%s%s", r.Code, err, r.Stdout, r.Stderr)
		}
		if s.DataDir != d.DataDir || s.Listen != d.Addr || s.P2P != nil || !s.Ready {
			t.Errorf("status --json: %+v", s)
		}
	})

	t.Run("pull-plain-output", func(t *testing.T) {
		mark := len(hub.requests())
		r := d.run(t, 0, "pull", small.Ref())
		if ansiEscape.MatchString(r.Stdout) {
			t.Errorf("pull to a pipe printed terminal escapes:\n%q", r.Stdout)
		}
		if !strings.Contains(r.Stdout, "resolved to "+small.Digest) {
			t.Errorf("pull does not say what the tag resolved to:\n%s", r.Stdout)
		}
		for _, b := range small.Blobs {
			if !regexp.MustCompile(regexp.QuoteMeta(b) + `.* from upstream`).MatchString(r.Stdout) {
				t.Errorf("pull output has no line for %s from upstream:\n%s", b, r.Stdout)
			}
		}
		if !strings.Contains(r.Stdout, "pulled 1 image(s): 4 blobs") {
			t.Errorf("pull summary missing:\n%s", r.Stdout)
		}
		assertOneGETPerBlob(t, hub.since(mark), small.Blobs)

		mark = len(hub.requests())
		r = d.run(t, 0, "pull", small.Ref())
		if strings.Contains(r.Stdout, "from upstream") || !strings.Contains(r.Stdout, "from store") {
			t.Errorf("second pull did not come from the store:\n%s", r.Stdout)
		}
		assertNoUpstreamFetch(t, hub.since(mark))
	})

	t.Run("pull-one-platform", func(t *testing.T) {
		r := d.run(t, 0, "pull", "--platform", "linux/arm64", multi.Ref())
		if !strings.Contains(r.Stdout, "for linux/arm64/v8") || strings.Contains(r.Stdout, "linux/amd64") {
			t.Errorf("pull --platform linux/arm64 of an index:\n%s", r.Stdout)
		}
		var evs []adminapi.PullEvent
		for _, line := range strings.Split(strings.TrimSpace(d.run(t, 0, "pull", "--json", multi.Ref()).Stdout), "\n") {
			var ev adminapi.PullEvent
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("pull --json line %q: %v", line, err)
			}
			evs = append(evs, ev)
		}
		if last := evs[len(evs)-1]; last.Type != adminapi.EventDone || last.Blobs != len(multi.Blobs) {
			t.Errorf("pull --json of all platforms: last event %+v, want done with %d blobs", last, len(multi.Blobs))
		}
	})

	t.Run("cache-and-explain", func(t *testing.T) {
		var l adminapi.CacheList
		d.runJSON(t, &l, "cache", "ls")
		have := map[string]adminapi.CacheEntry{}
		for _, e := range l.Entries {
			have[e.Digest] = e
		}
		for _, b := range append([]string{small.Digest}, small.Blobs...) {
			if _, ok := have[b]; !ok {
				t.Errorf("cache ls --json lacks %s", b)
			}
		}
		r := d.run(t, 0, "cache", "ls", "--sort", "atime")
		if !strings.Contains(r.Stdout, "DIGEST") || !strings.Contains(r.Stdout, small.Blobs[1]) || !strings.Contains(r.Stdout, "items") {
			t.Errorf("cache ls table:\n%s", r.Stdout)
		}
		d.run(t, exitUsage, "cache", "ls", "--sort", "name")

		r = d.run(t, 0, "explain", small.Ref())
		if !strings.Contains(r.Stdout, small.Digest) || !strings.Contains(r.Stdout, "P2P disabled") || !strings.Contains(r.Stdout, "recent decisions") {
			t.Errorf("explain output:\n%s", r.Stdout)
		}
		var e adminapi.Explain
		d.runJSON(t, &e, "explain", small.Ref())
		for _, b := range e.Blobs {
			if !b.InStore || b.Next != "store" {
				t.Errorf("explain after pull: %+v, want in the store", b)
			}
			if b.Kind == "layer" && (b.Last == nil || b.Last.Source != "upstream") {
				t.Errorf("explain: layer %s last decision %+v, want upstream", b.Digest, b.Last)
			}
		}

		r = d.run(t, 0, "cache", "pin", small.Ref())
		if !strings.Contains(r.Stdout, "pinned") {
			t.Errorf("pin: %s", r.Stdout)
		}
		d.runJSON(t, &l, "cache", "ls")
		for _, x := range l.Entries {
			if x.Digest == small.Digest && !x.Pinned {
				t.Errorf("%s not pinned after cache pin", small.Digest)
			}
		}
		d.run(t, 0, "cache", "unpin", small.Ref())
		d.run(t, exitNotFound, "cache", "pin", "test/never-pulled:v9")

		r = d.run(t, 0, "cache", "rm", small.Ref())
		if !strings.Contains(r.Stdout, "removed "+small.Ref()+": 5 items") {
			t.Errorf("cache rm IMAGE: %s", r.Stdout)
		}
		r = d.run(t, exitNotFound, "cache", "rm", small.Blobs[1])
		if lines := strings.Split(strings.TrimSpace(r.Stderr), "\n"); len(lines) != 1 || !strings.Contains(r.Stderr, "not in the cache") {
			t.Errorf("cache rm of a removed digest: want one line saying so, got:\n%s", r.Stderr)
		}
		d.run(t, 0, "cache", "gc")
		r = d.run(t, 0, "cache", "verify")
		if !strings.Contains(r.Stdout, "0 corrupt, 0 missing") {
			t.Errorf("cache verify: %s", r.Stdout)
		}
	})

	t.Run("errors-and-exit-codes", func(t *testing.T) {
		r := d.run(t, exitFailure, "pull", "test/does-not-exist:v1")
		if !strings.Contains(r.Stdout+r.Stderr, "error") {
			t.Errorf("pull of a missing image says nothing:\n%s%s", r.Stdout, r.Stderr)
		}
		d.run(t, exitUsage, "explain", "Bad//Name")
		d.run(t, exitUsage, "pull")
		d.run(t, exitUsage, "cache", "ls", "--no-such-flag")
		if r := shoalCLI(t, nil, "no-such-command"); r.Code != exitUsage {
			t.Errorf("unknown command: exit %d, want %d", r.Code, exitUsage)
		}
		r = d.run(t, 0, "peers")
		if strings.TrimSpace(r.Stdout) != "P2P disabled" {
			t.Errorf("peers without P2P: %q", r.Stdout)
		}
		r = d.run(t, exitFailure, "peers", "ping", "12D3KooWxxxx")
		if !strings.Contains(r.Stderr, "P2P disabled") {
			t.Errorf("ping without P2P: %s", r.Stderr)
		}
		r = d.run(t, 0, "version")
		if !strings.Contains(r.Stdout, "shoal dev") || !strings.Contains(r.Stdout, "daemon dev") {
			t.Errorf("version: %s", r.Stdout)
		}
		r = d.run(t, 0, "completion", "bash")
		if !strings.Contains(r.Stdout, "complete -o bashdefault") {
			t.Errorf("completion bash: %s", r.Stdout)
		}
	})

	t.Run("access-log-and-metrics", func(t *testing.T) {
		// One JSON access-log line per request, with source, bytes, duration and the upstream's status.
		var seen bool
		for _, line := range strings.Split(d.proc.log(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != "request" {
				continue
			}
			for _, k := range []string{"source", "bytes", "duration", "upstream_status", "status", "path"} {
				if _, ok := rec[k]; !ok {
					t.Fatalf("access log line lacks %q: %s", k, line)
				}
			}
			if rec["source"] == "upstream" && rec["upstream_status"] == float64(200) && strings.Contains(rec["path"].(string), "/blobs/") {
				seen = true
			}
		}
		if !seen {
			t.Errorf("no access-log line for a blob from the upstream with upstream_status 200")
		}
		resp, err := http.Get("http://" + d.Metrics + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		p := expfmt.NewTextParser(model.UTF8Validation)
		mfs, err := p.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatalf("parsing /metrics: %v", err)
		}
		var upstreamBlobs float64
		for _, m := range mfs["shoal_http_requests_total"].GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["route"] == "blob" && l["source"] == "upstream" && l["status"] == "200" {
				upstreamBlobs += m.GetCounter().GetValue()
			}
		}
		if want := float64(len(small.Blobs) + len(multi.Blobs)); upstreamBlobs != want {
			t.Errorf("shoal_http_requests_total{route=blob,source=upstream,status=200} = %v, want %v", upstreamBlobs, want)
		}
	})

	t.Run("daemon-not-running", func(t *testing.T) {
		r := shoalCLI(t, nil, "--admin", "unix:"+filepath.Join(t.TempDir(), "admin.sock"), "status")
		lines := strings.Split(strings.TrimSpace(r.Stderr), "\n")
		if r.Code != exitUnreachable || len(lines) != 1 || !strings.Contains(r.Stderr, "cannot reach the shoal daemon") {
			t.Errorf("status with no daemon: exit %d, stderr:\n%s", r.Code, r.Stderr)
		}
		d.stop()
		if _, err := os.Stat(filepath.Join(d.DataDir, "admin.sock")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("admin socket left behind after the daemon stopped: %v", err)
		}
		for _, args := range [][]string{{"status"}, {"cache", "ls"}, {"pull", small.Ref()}, {"explain", small.Ref()}} {
			r := shoalCLI(t, nil, append([]string{"--admin", d.Admin}, args...)...)
			if r.Code != exitUnreachable || strings.Count(strings.TrimSpace(r.Stderr), "\n") != 0 {
				t.Errorf("shoal %v on a stopped daemon: exit %d, want %d with one line:\n%s", args, r.Code, exitUnreachable, r.Stderr)
			}
		}
		// version still works, without the daemon's line.
		if r := shoalCLI(t, nil, "--admin", d.Admin, "version"); r.Code != 0 || strings.Contains(r.Stdout, "daemon") {
			t.Errorf("version with the daemon down: exit %d\n%s", r.Code, r.Stdout)
		}
	})
}

// The exit codes documented in docs/operations.md.
const (
	exitFailure     = 1
	exitUsage       = 2
	exitUnreachable = 3
	exitNotFound    = 4
)

// TestShellCompletion: the bash script completes shoal's commands and subcommands when sourced
// in a real bash.
func TestShellCompletion(t *testing.T) {
	t.Parallel()
	if shoalBuildErr != nil {
		t.Fatal(shoalBuildErr)
	}
	bin := t.TempDir()
	if err := os.Symlink(shoalBin, filepath.Join(bin, "shoal")); err != nil {
		t.Fatal(err)
	}
	script := `source <(shoal completion bash)
COMP_WORDS=(shoal ca); COMP_CWORD=1; _shoal_complete; echo "top: ${COMPREPLY[*]}"
COMP_WORDS=(shoal cache ""); COMP_CWORD=2; _shoal_complete; echo "cache: ${COMPREPLY[*]}"
`
	out, err := runCmd(t.Context(), 30*time.Second, []string{"PATH=" + bin + ":" + os.Getenv("PATH")}, "bash", "-c", script)
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	if !strings.Contains(out, "top: cache") {
		t.Errorf("completing `shoal ca`: %s", out)
	}
	for _, sub := range []string{"ls", "rm", "gc", "verify", "pin", "unpin"} {
		if !regexp.MustCompile(`cache: .*\b` + sub + `\b`).MatchString(out) {
			t.Errorf("completing `shoal cache `: no %s in %s", sub, out)
		}
	}
}

// TestStatusShowsUpstreamTokensWithoutSecrets: after a credentialed pull from a token-auth
// upstream, `shoal status` counts the tokens fetched and the upstream's answers, the metrics say
// the same, and neither they nor the daemon's log carry the password or a token.
func TestStatusShowsUpstreamTokensWithoutSecrets(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	reg := up.Token.Addr
	d := startOpsShoal(t, shoalOpts{defaultRegistry: reg, config: &shoalConfig{Registries: map[string]shoalRegistry{
		reg: {URL: up.Token.URL, Username: tokenUser, PasswordFile: writeSecret(t, tokenPass)},
	}}})
	d.run(t, 0, "pull", up.Img.Private.Ref())
	var s adminapi.Status
	d.runJSON(t, &s, "status")
	var u *adminapi.UpstreamStatus
	for i := range s.Upstreams {
		if s.Upstreams[i].Registry == reg {
			u = &s.Upstreams[i]
		}
	}
	if u == nil || u.TokensFetched < 1 || u.Responses["200"] < 3 || !u.Healthy {
		t.Fatalf("status: upstream %s: %+v, want tokens fetched and 200s, healthy", reg, u)
	}
	human := d.run(t, 0, "status").Stdout
	if !strings.Contains(human, reg+"  healthy") || !strings.Contains(human, "tokens fetched") {
		t.Errorf("status does not show the upstream's health and tokens:\n%s", human)
	}
	resp, err := http.Get("http://" + d.Metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var tokens float64
	for _, m := range mfs["shoal_upstream_tokens_fetched_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "registry" && l.GetValue() == reg {
				tokens = m.GetCounter().GetValue()
			}
		}
	}
	if tokens < 1 {
		t.Errorf("shoal_upstream_tokens_fetched_total{registry=%q} = %v, want ≥ 1", reg, tokens)
	}
	d.stop()
	for what, text := range map[string]string{"daemon log": d.proc.log(), "status": human} {
		for _, secret := range []string{tokenPass, "Bearer ", "Authorization"} {
			if strings.Contains(text, secret) {
				t.Errorf("%s contains %q", what, secret)
			}
		}
	}
}

// TestOperatorCLIOverTCP: with --admin-listen on a loopback port the CLI keeps working
// (status, pull, cache rm), while curl playing a web page (a foreign Origin, a rebound Host,
// a form POST without the admin header) is refused and changes nothing.
func TestOperatorCLIOverTCP(t *testing.T) {
	t.Parallel()
	up := upstreams(t)
	admin := freeAddr(t)
	_, port, _ := strings.Cut(admin, ":")
	d := startOpsShoal(t, shoalOpts{registries: []string{up.Open.Addr + "=" + up.Open.URL}, defaultRegistry: up.Open.Addr,
		args: []string{"--admin-listen", admin}})
	d.Admin = admin
	small := up.Img.Small

	r := d.run(t, 0, "status")
	if !strings.Contains(r.Stdout, "ready") || !strings.Contains(r.Stdout, admin) {
		t.Errorf("status over TCP:\n%s", r.Stdout)
	}
	r = d.run(t, 0, "pull", small.Ref())
	if !strings.Contains(r.Stdout, "pulled 1 image(s)") {
		t.Errorf("pull over TCP:\n%s", r.Stdout)
	}

	curl := tool(t, "curl")
	target := "http://" + admin + "/v1/cache/rm?target=" + small.Ref()
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"rm from a foreign origin", []string{"-X", "POST", "-H", "Origin: http://evil.example", "-H", "X-Shoal-Admin: 1", target}, "403"},
		{"rm as a form post", []string{"-X", "POST", "-H", "Content-Type: application/x-www-form-urlencoded", target}, "403"},
		{"status through a rebound name", []string{"--resolve", "rebind.evil.example:" + port + ":127.0.0.1", "http://rebind.evil.example:" + port + "/v1/status"}, "421"},
		{"status", []string{"http://" + admin + "/v1/status"}, "200"},
	} {
		out, err := runCmd(t.Context(), 30*time.Second, nil, append([]string{curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}"}, c.args...)...)
		if err != nil || out != c.want {
			t.Errorf("curl %s: %q %v, want %s", c.name, out, err, c.want)
		}
	}

	var l adminapi.CacheList
	d.runJSON(t, &l, "cache", "ls")
	if len(l.Entries) != len(small.Blobs)+1 {
		t.Errorf("after refused removals the cache holds %d items, want %d", len(l.Entries), len(small.Blobs)+1)
	}
	r = d.run(t, 0, "cache", "rm", small.Ref())
	if !strings.Contains(r.Stdout, "removed "+small.Ref()) {
		t.Errorf("cache rm over TCP: %s", r.Stdout)
	}
}
