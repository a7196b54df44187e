package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/shoal-mirror/shoal/hostsetup"
)

// exitFindings is the exit code of `setup --strict` when a check found a problem.
const exitFindings = 6

func setupCommand() *cli.Command {
	common := []cli.Flag{
		&cli.StringFlag{Name: "mirror", Value: hostsetup.DefaultMirror, Usage: "shoal's `URL` as the runtime reaches it"},
		&cli.StringFlag{Name: "host-root", Value: "/", Usage: "where the host's file system is mounted (`DIR`, e.g. /host in a pod)"},
		&cli.BoolFlag{Name: "dry-run", Usage: "print the changes as a unified diff and write nothing"},
		&cli.BoolFlag{Name: "uninstall", Usage: "take shoal out again: restore the backups (or remove only shoal's entries from files edited since)"},
		&cli.BoolFlag{Name: "strict", Usage: fmt.Sprintf("exit with %d when a check finds a problem", exitFindings)},
	}
	usageErr := func(_ *cli.Context, err error, _ bool) error { return cli.Exit("setup: "+err.Error(), 2) }
	return &cli.Command{
		Name:  "setup",
		Usage: "point this host's container runtime at shoal (merges with the existing configuration, keeps a backup)",
		Subcommands: []*cli.Command{
			{
				Name:      "containerd",
				Usage:     "write hosts.toml files so that containerd pulls through shoal first, then from the registry",
				ArgsUsage: " ",
				Flags: append([]cli.Flag{
					&cli.StringFlag{Name: "hosts-dir", Usage: "containerd's hosts `DIR` (default: config_path from the containerd config, else " + hostsetup.DefaultHostsDir + ")"},
					&cli.StringSliceFlag{Name: "registries", Usage: "registries to send through shoal, `LIST` such as docker.io,ghcr.io or _default (default: _default and every registry with a hosts.toml already)"},
					&cli.StringFlag{Name: "containerd-config", Usage: "containerd's config `FILE` to check (default " + hostsetup.DefaultContainerdConfig + "; - = skip the checks)"},
					&cli.BoolFlag{Name: "edit-config", Usage: "also make the config_path fix in containerd's config FILE itself (only that line; comments and order kept; backup FILE" + hostsetup.BackupSuffix + "; --uninstall reverts it); containerd must then restart"},
					&cli.StringFlag{Name: "containerd-version", Usage: "containerd's `VERSION` for the checks (default: ask `containerd --version`; either counts only when that version can load the config file, whose own `version` decides)"},
				}, common...),
				Action:       runSetupContainerd,
				OnUsageError: usageErr,
			},
			{
				Name:      "data-dir",
				Usage:     "create the state directory and hand it to the daemon's user (a Kubernetes init container, for a hostPath)",
				ArgsUsage: "DIR",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "owner", Value: "65532:65532", Usage: "`UID:GID` to own DIR and everything in it"},
				},
				Action:       runSetupDataDir,
				OnUsageError: usageErr,
			},
			{
				Name:      "docker",
				Usage:     "add shoal first to registry-mirrors in dockerd's daemon.json (Docker Hub pulls)",
				ArgsUsage: " ",
				Flags: append([]cli.Flag{
					&cli.StringFlag{Name: "daemon-json", Usage: "dockerd's configuration `FILE` (default " + hostsetup.DefaultDaemonJSON + ")"},
				}, common...),
				Action:       runSetupDocker,
				OnUsageError: usageErr,
			},
		},
	}
}

func runSetupContainerd(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit("setup containerd: unexpected argument "+c.Args().First(), 2)
	}
	o := hostsetup.ContainerdOptions{
		HostRoot:          c.String("host-root"),
		HostsDir:          c.String("hosts-dir"),
		Registries:        splitList(c.StringSlice("registries")),
		Mirror:            c.String("mirror"),
		ContainerdConfig:  c.String("containerd-config"),
		ContainerdVersion: c.String("containerd-version"),
		EditConfig:        c.Bool("edit-config"),
	}
	if o.EditConfig && o.ContainerdConfig == "-" {
		return cli.Exit("setup containerd: --edit-config needs the containerd config (--containerd-config is -)", 2)
	}
	if !c.Bool("uninstall") && o.ContainerdVersion == "" && (o.HostRoot == "/" || o.HostRoot == "") {
		o.ContainerdVersion = containerdVersion(c.Context)
	}
	plan, err := hostsetup.PlanContainerd(o)
	if c.Bool("uninstall") {
		plan, err = hostsetup.PlanContainerdUninstall(o)
	}
	if err != nil {
		return cli.Exit("setup containerd: "+err.Error(), 1)
	}
	verify := func() error { return hostsetup.VerifyContainerd(plan.HostsDir, plan.Registries, o.Mirror) }
	if c.Bool("uninstall") {
		verify = nil
	}
	note := "containerd reads hosts.toml on every pull: no restart needed for these files"
	for _, ch := range plan.Changes {
		if filepath.Base(ch.Path) != "hosts.toml" {
			note = "containerd reads hosts.toml on every pull, but config.toml only when it starts: restart containerd now (systemctl restart containerd)"
		}
	}
	return finishSetup(c, plan, verify, note)
}

func runSetupDocker(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit("setup docker: unexpected argument "+c.Args().First(), 2)
	}
	o := hostsetup.DockerOptions{HostRoot: c.String("host-root"), DaemonJSON: c.String("daemon-json"), Mirror: c.String("mirror")}
	plan, err := hostsetup.PlanDocker(o)
	if c.Bool("uninstall") {
		plan, err = hostsetup.PlanDockerUninstall(o)
	}
	if err != nil {
		return cli.Exit("setup docker: "+err.Error(), 1)
	}
	return finishSetup(c, plan, nil, "")
}

func runSetupDataDir(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("setup data-dir: want one argument, the directory", 2)
	}
	var uid, gid int
	if n, err := fmt.Sscanf(c.String("owner"), "%d:%d", &uid, &gid); err != nil || n != 2 || uid < 0 || gid < 0 {
		return cli.Exit("setup data-dir: --owner: want UID:GID, e.g. 65532:65532", 2)
	}
	if err := hostsetup.PrepareDataDir(c.Args().First(), uid, gid); err != nil {
		return cli.Exit("setup data-dir: "+err.Error(), 1)
	}
	fmt.Fprintf(c.App.Writer, "%s owned by %d:%d\n", c.Args().First(), uid, gid)
	return nil
}

// finishSetup prints the plan (a diff on --dry-run), applies it, checks the result and the
// findings, and picks the exit code.
func finishSetup(c *cli.Context, plan *hostsetup.Plan, verify func() error, okNote string) error {
	out, errOut := c.App.Writer, c.App.ErrWriter
	if errOut == nil {
		errOut = os.Stderr
	}
	if c.Bool("dry-run") {
		if d := plan.Diff(); d != "" {
			fmt.Fprint(out, d)
		} else {
			fmt.Fprintln(out, "no change")
		}
	} else {
		if err := plan.Apply(); err != nil {
			return cli.Exit("setup: "+err.Error(), 1)
		}
		for _, ch := range plan.Changes {
			line := ch.Note + " " + ch.Path
			if ch.Backup != "" && ch.Old != nil && !ch.RemoveBackup {
				line += " (backup: " + ch.Backup + ")"
			}
			fmt.Fprintln(out, line)
		}
		for _, p := range plan.Unchanged {
			fmt.Fprintln(out, "unchanged "+p)
		}
		if verify != nil {
			if err := verify(); err != nil {
				return cli.Exit("setup: after writing, containerd would still not pull through shoal:\n"+err.Error(), 1)
			}
			if okNote != "" && len(plan.Changes) > 0 {
				fmt.Fprintln(out, okNote)
			}
		}
	}
	for _, f := range plan.Findings {
		fmt.Fprintln(errOut, f.String())
	}
	if c.Bool("strict") && plan.Worst() == hostsetup.Problem {
		return cli.Exit("", exitFindings)
	}
	return nil
}

// splitList accepts both --registries a,b and --registries a --registries b.
func splitList(in []string) []string {
	var out []string
	for _, v := range in {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// containerdVersion asks the containerd first on PATH for its version; "" when there is none. It may
// not be the containerd that reads the config file: the checks use it only when it can load that file.
func containerdVersion(ctx context.Context) string {
	bin, err := exec.LookPath("containerd")
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func healthcheckCommand() *cli.Command {
	return &cli.Command{
		Name:      "healthcheck",
		Usage:     "exit 0 when the daemon answers /healthz (for container HEALTHCHECKs: the image has no curl)",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "url", Usage: "`URL` to GET (default: /readyz on $SHOAL_METRICS_LISTEN when set, else /healthz on $SHOAL_LISTEN or 127.0.0.1:5000; wildcard hosts are reached on loopback)"},
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Second, Usage: "give up after this long"},
		},
		Action: func(c *cli.Context) error {
			url := c.String("url")
			if url == "" {
				url = healthURL(os.Getenv("SHOAL_METRICS_LISTEN"), os.Getenv("SHOAL_LISTEN"))
			}
			ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return cli.Exit("healthcheck: "+err.Error(), 2)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return cli.Exit("healthcheck: "+err.Error(), 1)
			}
			defer resp.Body.Close()
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			if resp.StatusCode != http.StatusOK {
				return cli.Exit(fmt.Sprintf("healthcheck: %s: %s", url, resp.Status), 1)
			}
			return nil
		},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error { return cli.Exit("healthcheck: "+err.Error(), 2) },
	}
}

// healthURL picks what a container health check asks: the metrics listener's /readyz when it is
// configured (plain HTTP even when the mirror serves TLS, and not in the access log), else the
// mirror's /healthz. A wildcard host is reached on loopback.
func healthURL(metricsListen, listen string) string {
	loopback := func(addr string) string {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return "127.0.0.1:5000"
		}
		switch host {
		case "", "0.0.0.0":
			host = "127.0.0.1"
		case "::":
			host = "::1"
		}
		return net.JoinHostPort(host, port)
	}
	if metricsListen != "" && metricsListen != "off" {
		return "http://" + loopback(metricsListen) + "/readyz"
	}
	if listen == "" {
		listen = "127.0.0.1:5000"
	}
	return "http://" + loopback(listen) + "/healthz"
}
