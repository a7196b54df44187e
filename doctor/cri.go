package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// checkCRI pulls the canary as the kubelet does: ImageService.PullImage over the CRI socket.
func checkCRI(ctx context.Context, o Options) Result {
	nonce := NewNonce()
	ref := containerdRef(nonce)
	r := Result{Runtime: CRI, Endpoint: o.CRIEndpoint, Canary: ref, Details: map[string]any{}}
	target := o.CRIEndpoint
	if !strings.Contains(target, "://") {
		target = "unix://" + target
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		r.Verdict, r.PullError = CheckFailed, short(err)
		return r
	}
	defer conn.Close()
	rt, img := runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
	vctx, cancel := context.WithTimeout(ctx, o.Timeout)
	v, err := rt.Version(vctx, &runtimeapi.VersionRequest{})
	cancel()
	if err != nil {
		r.Verdict, r.PullError = RuntimeMissing, short(err)
		return r
	}
	r.Version = v.RuntimeName + " " + v.RuntimeVersion
	// What the running containerd uses (its config as loaded, which may predate the file).
	live, liveOK := "", false
	sctx, cancel := context.WithTimeout(ctx, o.Timeout)
	if st, err := rt.Status(sctx, &runtimeapi.StatusRequest{Verbose: true}); err == nil {
		live, liveOK = findConfigPath(st.Info["config"])
	}
	cancel()
	if liveOK {
		r.Details["running_config_path"] = live
	}
	diag, hostsDir := diagnoseFile(&r, o, v.RuntimeVersion)

	pctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	_, err = img.PullImage(pctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	pullErr := timeoutErr(pctx, err)
	if err := r.judge(ctx, o, nonce, pullErr); err != nil {
		r.PullError = short(err)
		return r
	}
	if pullErr == nil {
		rctx, cancel2 := context.WithTimeout(ctx, o.Timeout)
		defer cancel2()
		_, err := img.RemoveImage(rctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		r.Removed = err == nil
	}
	if !r.InPath {
		if diag != nil {
			for _, f := range diag.Findings {
				if f.Severity.String() != "note" || !strings.Contains(f.Message, "ctr image pull") {
					r.Reasons = append(r.Reasons, fromFinding(f))
				}
			}
		}
		if liveOK && diag != nil && filepath.Clean(live) != filepath.Clean(diag.ConfigPath) && diag.ConfigPath != "" {
			r.add("problem", fmt.Sprintf("the running containerd uses config_path = %q, but %s says %q: containerd reads config.toml only when it starts",
				live, diag.File, diag.ConfigPath), "restart containerd (hosts.toml changes need no restart, config.toml changes do)")
		}
		// The directory CRI reads, when it reads exactly one.
		dirs := []string{}
		if diag != nil {
			dirs = diag.HostsDirs
		} else if liveOK && live != "" {
			dirs = filepath.SplitList(live)
		}
		if len(dirs) == 1 && !r.hasProblem() {
			explainHosts(ctx, &r, o, dirs[0], "config_path directory")
		}
		if !r.hasProblem() {
			r.add("problem", fmt.Sprintf("containerd's CRI did not ask shoal for %s (pull: %s), and the configuration doctor can read does not say why", ref, orDefault(r.PullError, "succeeded")),
				"pass --containerd-config with the file this containerd runs on, and --hosts-dir with where shoal's hosts.toml files are")
		}
		_ = hostsDir
	}
	lazyWarning(&r, diag)
	return r
}

// findConfigPath looks for the registry's configPath in the CRI plugin's config as containerd
// reports it in Status (verbose): {"registry":{"configPath":...}} at some depth.
func findConfigPath(s string) (string, bool) {
	var v any
	if s == "" || json.Unmarshal([]byte(s), &v) != nil {
		return "", false
	}
	var walk func(any) (string, bool)
	walk = func(x any) (string, bool) {
		m, ok := x.(map[string]any)
		if !ok {
			return "", false
		}
		if reg, ok := m["registry"].(map[string]any); ok {
			if p, ok := reg["configPath"].(string); ok {
				return p, true
			}
		}
		for _, sub := range m {
			if p, ok := walk(sub); ok {
				return p, true
			}
		}
		return "", false
	}
	return walk(v)
}
