package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scratchDockerfile turns the Dockerfile's final stage into one that builds without pulling
// anything: FROM scratch plus the few files distroless/static would bring (CA bundle, passwd and
// group entries for nonroot), and every `COPY --from=build /out/X` taken from the build context
// at X (the test lays the context out like the build stage's /out). All other instructions (ENV,
// USER, VOLUME, EXPOSE, HEALTHCHECK, ENTRYPOINT, CMD) are copied as they are.
func scratchDockerfile(t *testing.T, ins []string) string {
	t.Helper()
	last := -1
	for i, in := range ins {
		if strings.HasPrefix(in, "FROM ") {
			last = i
		}
	}
	if last < 0 || !strings.Contains(ins[last], "distroless/static") {
		t.Fatalf("Dockerfile: the final stage is not FROM distroless/static: %q (update this test with it)", ins[last])
	}
	out := []string{"FROM scratch", "COPY etc/ /etc/"}
	for _, in := range ins[last+1:] {
		f := strings.Fields(in)
		if f[0] == "COPY" && strings.Contains(in, "--from=build") {
			var kept []string
			for _, w := range f[1:] {
				switch {
				case w == "--from=build":
				case strings.HasPrefix(w, "/out/"):
					kept = append(kept, strings.TrimPrefix(w, "/out/"))
				case strings.HasPrefix(w, "--") || strings.HasPrefix(w, "/"):
					kept = append(kept, w)
				default:
					t.Fatalf("Dockerfile: %q copies %s from the build stage, not from /out", in, w)
				}
			}
			in = "COPY " + strings.Join(kept, " ")
		}
		out = append(out, in)
	}
	return strings.Join(out, "\n") + "\n"
}

// TestDeployImage builds the image with a real Docker engine (`docker build --network none`),
// from the Dockerfile's final stage on scratch and the binary built by the Dockerfile's own build
// line, then runs it as a user would (`docker run`, the image's user, its HEALTHCHECK and its
// anonymous volume): the container turns healthy and the mirror answers /v2/.
func TestDeployImage(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	bin := staticShoal(t)
	c := startContainerd(t)
	d := startDockerd(t, c, unreachableURL)

	ctx := t.TempDir()
	df := scratchDockerfile(t, readDockerfile(t))
	files := map[string]string{
		"Dockerfile":                        df,
		"etc/passwd":                        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
		"etc/group":                         "root:x:0:\nnonroot:x:65532:\n",
		"etc/ssl/certs/ca-certificates.crt": "",
	}
	ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Fatal(err)
	}
	files["etc/ssl/certs/ca-certificates.crt"] = string(ca)
	for p, content := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(ctx, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ctx, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	copyInto(t, bin, filepath.Join(ctx, "shoal"), 0o755)
	// The build stage's `mkdir -p /out/var/lib/shoal && chown 65532:65532 …`.
	if err := os.MkdirAll(filepath.Join(ctx, "var/lib/shoal"), 0o750); err != nil {
		t.Fatal(err)
	}
	t.Logf("Dockerfile used:\n%s", df)

	tag := "shoal-e2e:" + strconv.FormatInt(time.Now().UnixNano(), 36)
	start := time.Now()
	if out, err := d.docker(t.Context(), t, "build", "--network", "none", "-t", tag, ctx); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	t.Logf("docker build --network none: %s", time.Since(start).Round(time.Millisecond))

	out, err := d.docker(t.Context(), t, "image", "inspect", tag)
	if err != nil {
		t.Fatalf("docker image inspect: %v\n%s", err, out)
	}
	var info []struct {
		Size   int64
		Config struct {
			User        string
			Entrypoint  []string
			Cmd         []string
			Env         []string
			Volumes     map[string]any
			Healthcheck struct{ Test []string }
		}
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info) != 1 {
		t.Fatalf("docker image inspect: %v\n%s", err, out)
	}
	cfg := info[0].Config
	t.Logf("image size: %.1f MiB (binary %.1f MiB); user %s; entrypoint %v %v", float64(info[0].Size)/(1<<20), fileMiB(t, bin), cfg.User, cfg.Entrypoint, cfg.Cmd)
	if cfg.User != "65532:65532" {
		t.Errorf("image user %q, want the non-root 65532:65532", cfg.User)
	}
	if strings.Join(cfg.Healthcheck.Test, " ") != "CMD /usr/local/bin/shoal healthcheck" {
		t.Errorf("HEALTHCHECK %v", cfg.Healthcheck.Test)
	}
	if _, ok := cfg.Volumes["/var/lib/shoal"]; !ok {
		t.Errorf("no volume at /var/lib/shoal: %v", cfg.Volumes)
	}

	// Run it the way README does, on the host network here (this engine has no bridge) with
	// loopback addresses; the health check runs every second instead of every 30.
	addr, metrics := freeAddr(t), freeAddr(t)
	name := strings.ReplaceAll(strings.ReplaceAll(tag, ":", "-"), ".", "-")
	out, err = d.docker(t.Context(), t, "run", "-d", "--name", name, "--network", "host",
		"-e", "SHOAL_LISTEN="+addr, "-e", "SHOAL_METRICS_LISTEN="+metrics, "-e", "SHOAL_P2P=false",
		"--health-interval", "1s", "--health-start-period", "1s", tag)
	if err != nil {
		t.Fatalf("docker run: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = d.docker(t.Context(), t, "rm", "-f", "-v", name) })
	eventually(t, 60*time.Second, nil, "container healthy and serving", func() error {
		st, err := d.docker(t.Context(), t, "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", name)
		if err != nil {
			return fmt.Errorf("%v: %s", err, st)
		}
		if strings.TrimSpace(st) != "running healthy" {
			logs, _ := d.docker(t.Context(), t, "logs", "--tail", "5", name)
			return fmt.Errorf("container state %q; logs:\n%s", strings.TrimSpace(st), logs)
		}
		return registryPing(addr)
	})
}

func fileMiB(t *testing.T, p string) float64 {
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return float64(st.Size()) / (1 << 20)
}
