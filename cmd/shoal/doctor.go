package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/shoal-mirror/shoal/adminapi"
	"github.com/shoal-mirror/shoal/doctor"
	"github.com/shoal-mirror/shoal/hostsetup"
)

// exitBypassed is `shoal doctor`'s exit code when a runtime pulls without shoal (the same code
// as `setup --strict` finding a problem).
const exitBypassed = exitFindings

const (
	defaultCRIEndpoint = "unix:///run/containerd/containerd.sock"
	defaultContainerd  = "/run/containerd/containerd.sock"
	defaultDockerHost  = "unix:///var/run/docker.sock"
)

// doctorReport is `shoal doctor --json`.
type doctorReport struct {
	Mirror   string          `json:"mirror"`
	InPath   bool            `json:"in_path"` // every runtime checked pulls through shoal
	Runtimes []doctor.Result `json:"runtimes"`
}

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "prove that this node's runtimes pull through this shoal: a canary pull per runtime (CRI, containerd, Docker) that only shoal can answer",
		Description: "Pulls a tiny canary image, which only shoal serves (from an image built into the daemon: nothing is asked of a\n" +
			"registry), through each runtime's own path: CRI over its socket as the kubelet does, containerd's client as\n" +
			"`ctr image pull --hosts-dir` does, dockerd's Engine API as `docker pull` does. The daemon's admin API says\n" +
			"whether it served that pull's nonce. The canary is removed from the runtime afterwards. A runtime that\n" +
			"bypassed shoal is explained from its configuration, with the fix.\n\n" +
			fmt.Sprintf("Exit codes: 0 every runtime checked pulls through shoal, %d one bypasses it, 1 a check failed or found\n", exitBypassed) +
			"no runtime, 2 usage, 3 the daemon's admin API does not answer.",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "runtime", Usage: "runtimes to check, `LIST` of cri, containerd, docker (default: those whose sockets exist)"},
			&cli.StringFlag{Name: "mirror", Usage: "shoal's `URL` as the runtimes reach it (default: the daemon's listen address, wildcard as loopback)"},
			&cli.StringFlag{Name: "cri-endpoint", Value: defaultCRIEndpoint, Usage: "CRI `SOCKET` (the kubelet's --container-runtime-endpoint)"},
			&cli.StringFlag{Name: "containerd-address", Value: defaultContainerd, Usage: "containerd's `SOCKET`"},
			&cli.StringFlag{Name: "namespace", Value: "default", Usage: "containerd `NAMESPACE` for the ctr-style pull"},
			&cli.StringFlag{Name: "containerd-config", Value: hostsetup.DefaultContainerdConfig, Usage: "containerd's config `FILE`, to explain a bypass (- = do not read)"},
			&cli.StringFlag{Name: "hosts-dir", Usage: "where shoal's hosts.toml files are (`DIR`; default: config_path's first entry, else " + hostsetup.DefaultHostsDir + ")"},
			&cli.StringFlag{Name: "docker-host", Value: defaultDockerHost, EnvVars: []string{"DOCKER_HOST"}, Usage: "dockerd's `ADDR`"},
			&cli.StringFlag{Name: "docker-registry", Value: "docker.io", Usage: "the registry the Docker canary names (`HOST`): Docker mirrors only docker.io"},
			&cli.DurationFlag{Name: "timeout", Value: 4 * time.Second, Usage: "give a runtime's canary pull this long"},
		},
		Action: adminAction(runDoctor),
	}
}

func runDoctor(c *cli.Context, ctx context.Context, cl *adminapi.Client) error {
	if c.NArg() > 0 && firstArg(c) != "" {
		return cli.Exit("doctor: unexpected argument "+firstArg(c), exitUsage)
	}
	runtimes := splitList(c.StringSlice("runtime"))
	for _, r := range runtimes {
		if r != doctor.CRI && r != doctor.Containerd && r != doctor.Docker {
			return cli.Exit(fmt.Sprintf("doctor: --runtime %q: want cri, containerd or docker", r), exitUsage)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	st, err := cl.Status(sctx)
	cancel()
	if err != nil {
		return err
	}
	mirror := c.String("mirror")
	if mirror == "" {
		mirror = doctor.MirrorURL(st.Listen, false)
	}
	if err := hostsetup.ValidateMirror(mirror); err != nil {
		return cli.Exit("doctor: --mirror: "+err.Error(), exitUsage)
	}
	o := doctor.Options{
		Admin: cl, Mirror: mirror, Timeout: c.Duration("timeout"),
		CRIEndpoint: c.String("cri-endpoint"), ContainerdAddress: c.String("containerd-address"), Namespace: c.String("namespace"),
		ContainerdConfig: c.String("containerd-config"), HostsDir: c.String("hosts-dir"),
		DockerHost: c.String("docker-host"), DockerRegistry: c.String("docker-registry"),
	}
	if len(runtimes) == 0 {
		if exists(strings.TrimPrefix(o.CRIEndpoint, "unix://")) {
			runtimes = append(runtimes, doctor.CRI)
		}
		if exists(o.ContainerdAddress) {
			runtimes = append(runtimes, doctor.Containerd)
		}
		if exists(strings.TrimPrefix(o.DockerHost, "unix://")) {
			runtimes = append(runtimes, doctor.Docker)
		}
		if len(runtimes) == 0 {
			return cli.Exit(fmt.Sprintf("doctor: no runtime found (no %s, %s or %s): pass --runtime and the runtime's socket", o.CRIEndpoint, o.ContainerdAddress, o.DockerHost), exitFailure)
		}
	}
	rep := doctorReport{Mirror: mirror, InPath: true}
	bypassed, failed := false, false
	for _, rt := range runtimes {
		r := doctor.Run(ctx, rt, o)
		rep.Runtimes = append(rep.Runtimes, r)
		switch r.Verdict {
		case doctor.InPath:
		case doctor.Bypassed:
			bypassed = true
		default:
			failed = true
		}
		rep.InPath = rep.InPath && r.Verdict == doctor.InPath
	}
	if jsonOut(c) {
		if err := printJSON(os.Stdout, rep); err != nil {
			return err
		}
	} else {
		printDoctor(os.Stdout, rep)
	}
	switch {
	case bypassed:
		return cli.Exit("", exitBypassed)
	case failed:
		return cli.Exit("", exitFailure)
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

var verdictText = map[string]string{
	doctor.InPath:         "IN PATH",
	doctor.InPathFailed:   "IN PATH, PULL FAILED",
	doctor.Bypassed:       "BYPASSED",
	doctor.RuntimeMissing: "NOT REACHABLE",
	doctor.CheckFailed:    "CHECK FAILED",
}

func printDoctor(out io.Writer, rep doctorReport) {
	fmt.Fprintf(out, "shoal's mirror: %s\n", rep.Mirror)
	for _, r := range rep.Runtimes {
		v := r.Version
		if v == "" {
			v = "version unknown"
		}
		fmt.Fprintf(out, "\n%s: %s (%s at %s, %.2fs)\n", r.Runtime, verdictText[r.Verdict], v, r.Endpoint, r.Seconds)
		fmt.Fprintf(out, "  canary %s\n", r.Canary)
		switch {
		case len(r.Served) > 0:
			h := r.Served[0]
			fmt.Fprintf(out, "  shoal served it: %s %s (registry %s, %s)\n", h.Method, h.Path, h.Registry, orNone(h.UserAgent))
		case r.Verdict == doctor.Bypassed:
			fmt.Fprintf(out, "  shoal was never asked for it\n")
		}
		if r.PullError != "" {
			fmt.Fprintf(out, "  pull: %s\n", r.PullError)
		}
		switch {
		case r.Removed:
			fmt.Fprintf(out, "  canary removed from the runtime\n")
		case r.PullError == "" && r.Verdict != doctor.RuntimeMissing && r.Verdict != doctor.CheckFailed:
			fmt.Fprintf(out, "  canary NOT removed: remove %s by hand\n", r.Canary)
		}
		for _, x := range r.Reasons {
			fmt.Fprintf(out, "  %s: %s\n", x.Severity, x.Message)
			if x.Fix != "" {
				fmt.Fprintf(out, "    fix: %s\n", strings.ReplaceAll(x.Fix, "\n", "\n         "))
			}
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "no user agent"
	}
	return s
}
