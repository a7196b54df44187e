package doctor

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	transferimage "github.com/containerd/containerd/v2/core/transfer/image"
	"github.com/containerd/containerd/v2/core/transfer/registry"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"

	"github.com/shoal-mirror/shoal/hostsetup"
)

// containerdRef is the canary as containerd pulls it: a reserved registry that only a hosts.toml
// sending it to shoal (_default, with ?ns=) can resolve.
func containerdRef(nonce string) string { return CanaryRegistry + "/canary:" + nonce }

// checkContainerd pulls the canary as `ctr image pull --hosts-dir DIR` does: through the transfer
// service on containerd ≥ 2 (the client-side pull on 1.x), with the hosts directory shoal's
// hosts.toml files are in.
func checkContainerd(ctx context.Context, o Options) Result {
	nonce := NewNonce()
	ref := containerdRef(nonce)
	r := Result{Runtime: Containerd, Endpoint: o.ContainerdAddress, Canary: ref, Details: map[string]any{}}
	diag, hostsDir := diagnoseFile(&r, o, "")
	r.Details["hosts_dir"] = hostsDir

	cl, err := containerd.New(o.ContainerdAddress, containerd.WithDefaultNamespace(o.Namespace), containerd.WithTimeout(o.Timeout))
	if err != nil {
		r.Verdict, r.PullError = RuntimeMissing, short(err)
		return r
	}
	defer cl.Close()
	ctx = namespaces.WithNamespace(ctx, o.Namespace)
	if v, err := cl.Version(ctx); err == nil {
		r.Version = v.Version
	} else {
		r.Verdict, r.PullError = RuntimeMissing, short(err)
		return r
	}
	pctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	how := "transfer service"
	reg, err := registry.NewOCIRegistry(pctx, ref, registry.WithHostDir(hostsDir))
	if err == nil {
		p := platforms.DefaultSpec()
		is := transferimage.NewStore(ref, transferimage.WithPlatforms(p), transferimage.WithUnpack(p, ""))
		err = cl.Transfer(pctx, reg, is)
		if errdefs.IsNotImplemented(err) || (err != nil && strings.Contains(err.Error(), "unknown service")) {
			// containerd 1.x: no transfer service; ctr pulls on the client side.
			how = "client-side pull (no transfer service)"
			hosts := config.ConfigureHosts(pctx, config.HostOptions{HostDir: config.HostDirFromRoot(hostsDir)})
			_, err = cl.Pull(pctx, ref, containerd.WithResolver(docker.NewResolver(docker.ResolverOptions{Hosts: hosts})), containerd.WithPullUnpack)
		}
	}
	r.Details["pull"] = how
	pullErr := timeoutErr(pctx, err)
	if err := r.judge(ctx, o, nonce, pullErr); err != nil {
		r.PullError = short(err)
		return r
	}
	if pullErr == nil {
		r.Removed = cl.ImageService().Delete(ctx, ref, images.SynchronousDelete()) == nil
	}
	if !r.InPath {
		explainHosts(ctx, &r, o, hostsDir, "hosts directory given to the pull")
	}
	lazyWarning(&r, diag)
	r.add("note", fmt.Sprintf("`ctr image pull` reads hosts.toml only when given --hosts-dir; without it (containerd 2.x, transfer service) it goes "+
		"straight to the registry and bypasses shoal. This check passed --hosts-dir %s, as Kubernetes-style pulls through CRI use config_path", hostsDir),
		fmt.Sprintf("ctr image pull --hosts-dir %s IMAGE", hostsDir))
	return r
}

// diagnoseFile reads containerd's config.toml (when given) and returns the hosts directory the
// checks use: --hosts-dir, else config_path's first entry, else the default.
func diagnoseFile(r *Result, o Options, version string) (*hostsetup.ContainerdDiagnosis, string) {
	hostsDir := o.HostsDir
	if o.ContainerdConfig == "" || o.ContainerdConfig == "-" {
		if hostsDir == "" {
			hostsDir = hostsetup.DefaultHostsDir
		}
		return nil, hostsDir
	}
	d, err := hostsetup.DiagnoseContainerd(o.ContainerdConfig, orDefault(hostsDir, hostsetup.DefaultHostsDir), version)
	if err != nil {
		r.add("warning", fmt.Sprintf("cannot read %s: %v", o.ContainerdConfig, err), "pass --containerd-config FILE")
		return nil, orDefault(hostsDir, hostsetup.DefaultHostsDir)
	}
	if hostsDir == "" {
		hostsDir = hostsetup.DefaultHostsDir
		if len(d.HostsDirs) > 0 {
			hostsDir = d.HostsDirs[0]
		}
		// The checks again, now against the directory config_path names.
		d, _ = hostsetup.DiagnoseContainerd(o.ContainerdConfig, hostsDir, version)
	}
	r.Details["containerd_config"] = d
	return &d, hostsDir
}

// explainHosts says where containerd sends the canary's registry with the hosts directory dir.
func explainHosts(ctx context.Context, r *Result, o Options, dir, what string) {
	hosts, err := hostsetup.ContainerdHosts(dir, CanaryRegistry)
	if err != nil {
		r.add("problem", fmt.Sprintf("containerd cannot use the hosts.toml for %s in %s: %v", CanaryRegistry, dir, err),
			fmt.Sprintf("shoal setup containerd --hosts-dir %s --mirror %s", dir, o.Mirror))
		return
	}
	fix := fmt.Sprintf("shoal setup containerd --hosts-dir %s --mirror %s (hosts.toml is read on every pull: no restart)", dir, o.Mirror)
	def := filepath.Join(dir, "_default", "hosts.toml")
	switch {
	case len(hosts) == 0 || (len(hosts) == 1 && strings.Contains(hosts[0], CanaryRegistry)):
		r.add("problem", fmt.Sprintf("the %s %s has no %s: registries without a hosts.toml of their own go straight to the registry, not to shoal",
			what, dir, def), fix)
	case !hostsetup.SameMirror(hosts[0], o.Mirror):
		msg := fmt.Sprintf("%s sends pulls first to %s, not to shoal (%s)", def, hosts[0], o.Mirror)
		if err := listening(ctx, hosts[0]); err != nil {
			msg = fmt.Sprintf("%s sends pulls first to %s, where nothing listens (%v); shoal's mirror listens at %s", def, hosts[0], short(err), o.Mirror)
		}
		r.add("problem", msg, fix)
	default:
		if err := listening(ctx, hosts[0]); err != nil {
			r.add("problem", fmt.Sprintf("%s sends pulls to shoal at %s, where nothing listens: %v", def, hosts[0], short(err)),
				"start shoal there, or point hosts.toml at where it listens: "+fix)
		}
	}
}

func lazyWarning(r *Result, d *hostsetup.ContainerdDiagnosis) {
	if d == nil || len(d.LazySnapshotters) == 0 {
		return
	}
	r.add("warning", fmt.Sprintf("%s names the remote snapshotter(s) %s, which fetch layers on their own with their own registry configuration: "+
		"manifests go through shoal (this check), layers may not", d.File, joinQuoted(d.LazySnapshotters)),
		"configure the snapshotter's own mirror for shoal too (SOCI/stargz: their config.toml's registry mirrors), or use the default overlayfs snapshotter")
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
