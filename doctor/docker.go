package doctor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// dockerRef is the Docker canary: Docker sends only docker.io names to registry-mirrors, so
// the canary is a docker.io name (shoal answers the repository CanaryRepo itself, never Docker
// Hub). Another registry shows what Docker does with non-docker.io names: goes there directly.
func dockerRef(registry, nonce string) (repo, tag string) {
	return registry + "/" + CanaryRepo, nonce
}

type dockerClient struct {
	hc   *http.Client
	base string
}

func newDockerClient(host string) (*dockerClient, error) {
	u, err := url.Parse(host)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		return &dockerClient{base: "http://docker", hc: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", path)
			}}}}, nil
	case "tcp", "http":
		return &dockerClient{base: "http://" + u.Host, hc: &http.Client{}}, nil
	}
	return nil, fmt.Errorf("docker host %q: want unix:///path or tcp://host:port", host)
}

func (d *dockerClient) do(ctx context.Context, method, path string, q url.Values) (*http.Response, error) {
	u := d.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	return d.hc.Do(req)
}

type dockerInfo struct {
	ServerVersion  string
	RegistryConfig struct {
		Mirrors               []string
		InsecureRegistryCIDRs []string
		IndexConfigs          map[string]struct {
			Name   string
			Secure bool
		}
	}
}

// pull is POST /images/create: the progress stream's last error, if any.
func (d *dockerClient) pull(ctx context.Context, repo, tag string) error {
	resp, err := d.do(ctx, http.MethodPost, "/images/create", url.Values{"fromImage": {repo}, "tag": {tag}})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var e struct{ Message string }
		if json.Unmarshal(b, &e) == nil && e.Message != "" {
			return errors.New(e.Message)
		}
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var last error
	for sc.Scan() {
		var m struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if json.Unmarshal(sc.Bytes(), &m) == nil && (m.Error != "" || m.ErrorDetail.Message != "") {
			last = errors.New(orDefault(m.ErrorDetail.Message, m.Error))
		}
	}
	if err := sc.Err(); err != nil && last == nil {
		return err
	}
	return last
}

// checkDocker pulls the canary through dockerd's Engine API, as `docker pull` does.
func checkDocker(ctx context.Context, o Options) Result {
	nonce := NewNonce()
	repo, tag := dockerRef(o.DockerRegistry, nonce)
	r := Result{Runtime: Docker, Endpoint: o.DockerHost, Canary: repo + ":" + tag, Details: map[string]any{}}
	dc, err := newDockerClient(o.DockerHost)
	if err != nil {
		r.Verdict, r.PullError = CheckFailed, short(err)
		return r
	}
	ictx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var info dockerInfo
	resp, err := dc.do(ictx, http.MethodGet, "/info", nil)
	if err == nil {
		err = json.NewDecoder(resp.Body).Decode(&info)
		resp.Body.Close()
	}
	if err != nil {
		r.Verdict, r.PullError = RuntimeMissing, short(err)
		return r
	}
	r.Version = "docker " + info.ServerVersion
	r.Details["registry_mirrors"] = info.RegistryConfig.Mirrors

	pctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	pullErr := timeoutErr(pctx, dc.pull(pctx, repo, tag))
	if err := r.judge(ctx, o, nonce, pullErr); err != nil {
		r.PullError = short(err)
		return r
	}
	if pullErr == nil {
		dctx, cancel := context.WithTimeout(ctx, o.Timeout)
		defer cancel()
		if resp, err := dc.do(dctx, http.MethodDelete, "/images/"+repo+":"+tag, url.Values{"force": {"1"}}); err == nil {
			r.Removed = resp.StatusCode == http.StatusOK
			resp.Body.Close()
		}
	}
	mirrors := info.RegistryConfig.Mirrors
	idx := -1
	for i, m := range mirrors {
		if sameURL(m, o.Mirror) {
			idx = i
			break
		}
	}
	if o.DockerRegistry != "docker.io" && o.DockerRegistry != "index.docker.io" && o.DockerRegistry != "registry-1.docker.io" {
		sev := "note"
		if !r.InPath {
			sev = "problem"
		}
		host := hostOf(o.Mirror)
		r.add(sev, fmt.Sprintf("Docker sends only docker.io pulls to registry-mirrors: %s/… pulls go to %s directly, never to shoal, whatever daemon.json says",
			o.DockerRegistry, o.DockerRegistry),
			fmt.Sprintf("pull docker.io images through the mirror; for %s, name shoal in the reference: docker pull %s/%s/IMAGE "+
				"(shoal routes by the first path element; with a plain-HTTP shoal, add %q to insecure-registries in daemon.json)", o.DockerRegistry, host, o.DockerRegistry, host))
	}
	if r.InPath {
		return r
	}
	fix := fmt.Sprintf("shoal setup docker --mirror %s, then reload dockerd (SIGHUP or `systemctl reload docker`: registry-mirrors is reloadable)", o.Mirror)
	switch {
	case len(mirrors) == 0:
		r.add("problem", "dockerd has no registry-mirrors: docker.io pulls go to Docker Hub directly", fix)
	case idx < 0:
		msg := fmt.Sprintf("dockerd's registry-mirrors is %v, which does not name shoal (%s)", mirrors, o.Mirror)
		for _, m := range mirrors {
			if err := listening(ctx, m); err != nil {
				msg += fmt.Sprintf("; nothing listens at %s (%v), so Docker falls back to Docker Hub", m, short(err))
			}
		}
		r.add("problem", msg, fix)
	case idx > 0:
		r.add("problem", fmt.Sprintf("dockerd's registry-mirrors is %v: shoal is not first, Docker tries %s before it", mirrors, mirrors[0]), fix)
	default:
		if !r.hasProblem() {
			r.add("problem", fmt.Sprintf("dockerd names shoal (%s) in registry-mirrors but did not ask it for the canary (pull: %s)", o.Mirror, orDefault(r.PullError, "succeeded")),
				fmt.Sprintf("check that dockerd reaches %s (plain HTTP needs insecure-registries), and that shoal's access controls allow the canary", o.Mirror))
		}
	}
	return r
}

func sameURL(a, b string) bool {
	pa, err1 := url.Parse(strings.TrimSuffix(a, "/"))
	pb, err2 := url.Parse(strings.TrimSuffix(b, "/"))
	return err1 == nil && err2 == nil && pa.Scheme == pb.Scheme && strings.EqualFold(pa.Host, pb.Host)
}
